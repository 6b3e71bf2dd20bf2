"""Benchmark: cnn-classifier's default recipe on the real MNIST (60k train / 10k test IDX files).

    python bench/cnn_mnist.py [--data ../shared/data/mnist] [--set key=value ...]

Runs `kerasllm train cnn-classifier --data DATA` then `kerasllm evaluate`, measures
wall time and peak RSS of each, and appends the figures, the command and the
machine to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

HERE = Path(__file__).resolve().parent


def run(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        sys.exit(f"MNIST not found at {args.data}; pass --data FOLDER with the four IDX files")
    kerasllm = str(Path(sys.executable).parent / "kerasllm")
    out = Path(tempfile.mkdtemp()) / "run"
    train = [kerasllm, "train", "cnn-classifier", "--data", args.data, "--out", str(out), "--quiet",
             *[a for item in args.overrides for a in ("--set", item)]]
    train_seconds, _ = run(train)
    train_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    evaluate = [kerasllm, "evaluate", str(out), "--json"]
    evaluate_seconds, report = run(evaluate)
    report = json.loads(report)
    summary = json.loads((out / "metrics.json").read_text())
    row = (f"| {dt.date.today()} | cnn-classifier default recipe | `{' '.join(['kerasllm'] + train[1:]).replace(str(out), 'RUN')}` | "
           f"{summary['epochs_completed']} | {train_seconds:.0f} s | {summary['samples_per_second']:.0f} | {train_rss:.0f} MB | "
           f"**{report['accuracy']:.2%}** (top-5 {report['top_5_accuracy']:.2%}, macro F1 {report['macro_f1']:.4f}) | "
           f"{evaluate_seconds:.0f} s | {machine()} |")
    results = HERE / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n\n| date | what | command | epochs | train wall | samples/s | peak RSS "
                           "| test accuracy | evaluate wall | machine |\n|---|---|---|---|---|---|---|---|---|---|\n")
    with results.open("a") as f:
        f.write(row + "\n")
    print(row)
    print(json.dumps({k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")}, indent=2))


if __name__ == "__main__":
    main()
