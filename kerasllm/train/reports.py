"""Reports written into a run folder: learning curves (PNG) and the model card (README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm.core.words import count


def parameter_counts(model) -> dict:
    """Trainable and total parameters of a built model, and the trainable share (metrics.json's `parameter_counts`)."""
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(sum(np.prod(v.shape) for v in model.weights))
    return {"trainable": trainable, "total": total, "trainable_share": trainable / max(total, 1)}


def plot_curves(history: dict, path: Path, title: str = "") -> Path:
    """Loss (and accuracy, if logged) per epoch for training and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [key for key in ("loss", "accuracy") if key in history]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for axis, key in zip(axes[0], panels):
        epochs = range(1, len(history[key]) + 1)
        axis.plot(epochs, history[key], marker="o", label=f"train {key}")
        if f"val_{key}" in history:
            axis.plot(epochs, history[f"val_{key}"], marker="o", label=f"validation {key}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def _best_by(config) -> str:
    """How the best epoch was picked, in words: the card names the metric `train.monitor` watched."""
    monitor = getattr(config.train, "monitor", "val_loss")
    name = monitor.removeprefix("val_").replace("_", " ")
    return f"{'lowest' if 'loss' in monitor else 'highest'} validation {name} (`{monitor}`)"


def _metrics_table(summary: dict) -> str:
    before, after = summary.get("before_training", {}), summary.get("after_training", {})
    rows = ["| metric | before training | after training |", "|---|---|---|"]
    for key in after:
        rows.append(f"| {key} | {before.get(key, float('nan')):.4f} | {after[key]:.4f} |")
    return "\n".join(rows)


def overfitting_lines(report: dict | None) -> list[str]:
    if not report:
        return []
    return [f"**Overfitting**: {report['reason']}. The saved model keeps epoch {report['kept_epoch']}. What helps:",
            *[f"- {fix}" for fix in report["fixes"]], ""]


def _pictures(task, run_dir: Path) -> str:
    """The learning curves (curves.png), and where a classifier's confusion matrix will be."""
    lines = ["![Learning curves: loss (and accuracy) per epoch, training and validation](curves.png)"]
    if task.can_predict:  # classifiers: `kerasllm evaluate` draws the confusion matrix
        lines.append(f"`kerasllm evaluate {run_dir}` draws the confusion matrix into `confusion_matrix.png` beside this card.")
    return "\n\n".join(lines)


def model_card(spec, task, config, data_record: dict, summary: dict, run_dir: Path) -> str:
    """A short README.md: what was trained on what, final metrics, how to reproduce and use it."""
    import yaml

    newline = "\n"
    parent = summary.get("parent")
    lineage = f"{newline}Started from `{parent['path']}` (sha256 `{str(parent.get('sha256', ''))[:16]}…`).{newline}" if parent else ""
    return f"""# {spec.name} — {spec.description}

Task: {spec.task}. Parameters: {summary.get('parameters', 0):,}. Backend: {summary.get('backend')}, \
strategy {summary.get('strategy')} ({count(summary.get('replicas') or 1, 'replica')}), loop `{summary.get('loop')}`.
{lineage}
## Data
{newline.join(task.data_lines(data_record))}

## Results (validation split)
{_metrics_table(summary)}

Epochs: {summary.get('epochs_completed')} (stopped early: {summary.get('stopped_early')}); steps: {summary.get('steps')};
training time {summary.get('train_seconds', 0):.1f} s. `model.keras` holds the weights of the epoch with the {_best_by(config)} \
({summary.get('best_checkpoint')}).

{_pictures(task, run_dir)}

{newline.join(overfitting_lines(summary.get('overfitting')))}
## Reproduce
```
kerasllm train --config {Path(run_dir) / 'config.yaml'}
```
(ran as: `{summary.get('command')}`)

## Use
```
{newline.join(task.usage(run_dir))}
```

## Config
```yaml
{yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True)}```
"""
