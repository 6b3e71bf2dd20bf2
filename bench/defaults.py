"""Benchmark: the offline default recipes the README and docs quote, trained as a newcomer trains them.

    python bench/defaults.py [--model cnn-classifier --model transformer-lm --model lstm-textgen]

Runs `kerasllm train MODEL --out RUN --quiet` for each model (its default data: scikit-learn's digits, the built-in
Python docs; no network), reads the run's metrics.json, and appends to bench/RESULTS.md one row per model: the process
wall time, the epochs run (and whether early stopping ended them), the headline metric before → after training on the
validation split, and the machine. The figures quoted for `kerasllm train MODEL` in docs/ name this section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

from common import append_row, kerasllm, machine

MODELS = ("cnn-classifier", "transformer-lm", "lstm-textgen")
HEADLINE = {"cnn-classifier": ("accuracy", "{:.2%}"), "transformer-lm": ("bits_per_char", "{:.4f}"),
            "lstm-textgen": ("bits_per_char", "{:.4f}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=MODELS, help="default: all three")
    args = parser.parse_args()
    for model in args.model or MODELS:
        with tempfile.TemporaryDirectory() as folder:
            run = Path(folder) / "run"
            wall = kerasllm("train", model, "--out", run, "--quiet")
            metrics = json.loads((run / "metrics.json").read_text())
        key, shape = HEADLINE[model]
        before, after = metrics["before_training"][key], metrics["after_training"][key]
        epochs = f"{metrics['epochs_completed']}" + (" (stopped early)" if metrics["stopped_early"] else "")
        row = [dt.date.today().isoformat(), model, f"`kerasllm train {model} --out RUN --quiet`", metrics["data_source"]
               if "data_source" in metrics else "default", epochs, f"{wall:.0f} s", f"{key} {shape.format(before)} → "
               f"**{shape.format(after)}**", machine()]
        append_row("Offline default recipes (`python bench/defaults.py`)",
                   ["date", "model", "command", "data", "epochs", "process wall", "validation, before → after", "machine"], row)
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
