"""What a run writes about itself: its folder's records, the learning curves (PNG), the model card (README.md) and the
overfitting note.

`write_run_folder` claims a new run's folder and writes what it is made of (config.yaml, data.json, the tokenizer or
labels, metrics.json so far); `write_results` writes what it ends with (model.keras, the card,
metrics.json, history.json, library.log). Checkpoints are `kerasllm.train.checkpoints`'.

Overfitting (`overfitting`) is reported when, after the epoch with the lowest validation loss, validation loss rose
for `RISING_EPOCHS` epochs or more while training loss kept falling, or when the final validation loss is more than
`GAP_RATIO` above the training loss and no longer at its best.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm.core import files, quiet
from kerasllm.core.words import count
from kerasllm.export import saving

RISING_EPOCHS = 2
MIN_EPOCHS = 3  # fewer epochs than this get no overfitting report
GAP_RATIO = 0.3
GENERAL_FIXES = ("more data", "early stopping (train.early_stopping_patience) keeps the best epoch")


def overfitting(history: dict, fixes: tuple = (), kept_epoch: int | None = None, rising_epochs: int = RISING_EPOCHS,
                gap_ratio: float = GAP_RATIO) -> dict | None:
    """`{"reason", "best_epoch", "kept_epoch", "fixes"}` when the history shows overfitting, else None. `best_epoch` is
    the epoch of the lowest validation loss (what the reason reads); `kept_epoch` is the epoch whose weights the saved
    model holds, as the trainer chose it (by `train.monitor`, which may be an accuracy; default: `best_epoch`)."""
    train, val = history.get("loss", []), history.get("val_loss", [])
    if len(val) < MIN_EPOCHS or len(train) != len(val):  # two epochs say too little to call it (a smoke-test run)
        return None
    best = min(range(len(val)), key=val.__getitem__)
    after = range(best + 1, len(val))
    reason = None
    rising = sum(1 for i in after if val[i] > val[i - 1] and train[i] < train[i - 1])
    if rising >= rising_epochs:
        reason = (f"validation loss rose in {rising} of the {len(after)} epochs after epoch {best + 1} "
                  f"({val[best]:.4f} → {val[-1]:.4f}) while training loss fell ({train[best]:.4f} → {train[-1]:.4f})")
    elif best < len(val) - 1 and val[-1] > train[-1] * (1 + gap_ratio):
        reason = (f"the final validation loss {val[-1]:.4f} is {val[-1] / max(train[-1], 1e-12) - 1:.0%} above the "
                  f"training loss {train[-1]:.4f}, and its best was at epoch {best + 1}")
    if reason is None:
        return None
    return {"reason": reason, "best_epoch": best + 1, "kept_epoch": kept_epoch or best + 1, "fixes": list(fixes or GENERAL_FIXES)}


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
    lineage = f"{newline}Started from `{files.portable(parent['path'], run_dir)}` (sha256 `{str(parent.get('sha256', ''))[:16]}…`).{newline}" if parent else ""
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


def warmup_notes(train, default_warmup: int, warmup: int, schedule_steps: int) -> list[str]:
    """metrics.json's note when the warmup a user chose (`train.warmup_steps`, not the model's default) was shortened to
    `warmup` steps on a short run (`kerasllm.train.building.warmup_steps`); the model's own recipe is shortened
    without a word."""
    if train.warmup_steps == default_warmup or warmup == train.warmup_steps or train.schedule != "cosine":
        return []
    return [f"train.warmup_steps={train.warmup_steps} is more than a quarter of the run's {schedule_steps:,} steps, so "
            f"warmup took {warmup} (a tenth) and the learning rate reached its peak"]


def write_run_folder(run_dir: Path, config, data, summary: dict, *, new: bool, overwrite: bool = False) -> Path:
    """The run folder's records as they stand before the loop, once every check has passed: a new run's folder claimed
    (`files.claim_run_dir`: the marker; `overwrite` replaces only a run folder) with data.json and the data's artifacts
    (tokenizer, labels, chat template); then, new or resumed, config.yaml (the "reproduce me" file: a resumed run's new
    epoch count, say) and metrics.json so far."""
    if new:
        run_dir = files.claim_run_dir(run_dir, overwrite, config.model)
        files.write_json(run_dir / files.DATA_FILE, data.record)
        for artifact in data.artifacts:
            artifact.save(run_dir)
    files.write_text_atomic(run_dir / files.CONFIG_FILE, config.to_yaml(run_dir))
    files.write_metrics(run_dir, summary)
    return run_dir


def write_results(run_dir: Path, model, finish, card: str, summary: dict, history: dict, timings, heard_from: int) -> None:
    """A finished run's records: model.keras (written beside, then renamed; LoRA adapters merged into the kernels as
    Keras saves), `finish(model, run_dir)` (the recipe's last word: a pruned model's sparsity), the card, metrics.json
    with `timings` (a `kerasllm.train.timings.Timings`, the model file's own section in it), history.json and
    library.log: what the libraries said since `heard_from` (`quiet.heard_mark`), this run's and no other's."""
    with timings.section("model file"):
        saving.save_model(model, run_dir / files.MODEL_FILE)
        finish(model, run_dir)
    summary["timings"] = timings.as_dict()
    files.write_text_atomic(run_dir / files.CARD_FILE, card)
    files.write_metrics(run_dir, summary)
    files.write_json(run_dir / files.HISTORY_FILE, history)
    heard = quiet.heard_since(heard_from)
    if heard:
        files.write_text_atomic(run_dir / files.LIBRARY_LOG_FILE, heard)
