"""Benchmark: the `small` transformer-lm preset (nanoGPT's shakespeare-char shape) on a 10-minute budget.

    python bench/small_budget.py [--data ../shared/data/tinyshakespeare/input.txt] [--minutes 10]

Trains `kerasllm train transformer-lm --preset small` on tinyshakespeare (character level, random
windows of 256, batch 12, AdamW lr 1e-3 betas (0.9, 0.99), 20 validation batches per epoch of 100
steps) with `train.max_seconds` as the budget, then records the validation loss reached (on the
whole validation split), the steps done and the time, in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_row, machine

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument("--minutes", type=float, default=10.0)
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp()) / "run"
    settings = ["data.windows=random", "train.batch_size=12", "train.steps_per_epoch=100", "train.epochs=12",
                "train.learning_rate=1e-3", "train.beta_2=0.99", "train.weight_decay=0.1", "train.warmup_steps=100",
                "train.validation_steps=20", "train.early_stopping_patience=0", "train.sample_length=0",
                f"train.max_seconds={args.minutes * 60:g}"]
    command = ["kerasllm", "train", "transformer-lm", "--preset", "small", "--data", args.data, "--out", str(run_dir), "--quiet",
               *[arg for item in settings for arg in ("--set", item)]]
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    loss = metrics["after_training"]["loss"]
    print(f"{metrics['steps']} steps in {metrics['train_seconds']:.0f} s; validation loss {loss:.4f} "
          f"(per epoch on 20 batches: {', '.join(f'{v:.3f}' for v in history['val_loss'])})")
    append_row(
        "transformer-lm `small` preset on a time budget (tinyshakespeare, character level)",
        ["date", "budget", "steps", "train seconds", "validation loss (whole split)", "tokens/s", "wall", "machine", "command"],
        [dt.date.today().isoformat(), f"{args.minutes:g} min", str(metrics["steps"]), f"{metrics['train_seconds']:.0f}",
         f"**{loss:.4f}**", f"{metrics['tokens_per_second']:,.0f}", f"{wall:.0f} s", machine(),
         f"`python bench/small_budget.py --minutes {args.minutes:g}`"],
    )


if __name__ == "__main__":
    sys.exit(main())
