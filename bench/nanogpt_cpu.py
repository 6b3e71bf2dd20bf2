"""Benchmark: transformer-lm against PyTorch nanoGPT, nanoGPT's CPU config, side by side on this machine.

    python bench/nanogpt_cpu.py [--data ../shared/data/tinyshakespeare/input.txt] [--torch-python PYTHON] [--iters 2000]

1. `kerasllm train transformer-lm --preset tiny --data DATA --config bench/nanogpt_cpu.yaml`
   (the recipe lives in that config file, so the CLI reproduces it);
2. `bench/nanogpt_torch.py` with a Python that has PyTorch (`--torch-python`, default: this one),
   if it can import torch.

Prints validation loss at 250/500/1000/2000 iterations, ms per iteration (whole-loop mean:
compilation and validation included; and the median of steady steps), tokens/s, peak RSS
and process wall time for both, with the ratios, and appends them to bench/RESULTS.md.
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

from common import append_row, machine

HERE = Path(__file__).resolve().parent
CHECKPOINTS = (250, 500, 1000, 2000)


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) of the child, and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared/data/tinyshakespeare/input.txt"))
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--iters", type=int, default=2000)
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} not found; pass --data with tinyshakespeare's input.txt")
    run_dir = Path(tempfile.mkdtemp()) / "run"
    epochs = args.iters // 250
    command = ["kerasllm", "train", "transformer-lm", "--preset", "tiny", "--data", args.data,
               "--config", str(HERE / "nanogpt_cpu.yaml"), "--out", str(run_dir), "--quiet", "--set", f"train.epochs={epochs}"]
    print("running:", " ".join(command), flush=True)
    wall, rss, _ = timed(command)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())["val_loss"]
    keras_row = {
        "framework": "kerasllm (Keras 3 / TF, XLA)", "wall": wall, "rss": rss,
        "val": {250 * (i + 1): loss for i, loss in enumerate(history)},
        "mean_ms": 1000 * metrics["train_seconds"] / metrics["steps"],
        "median_ms": 1000 * (metrics.get("median_step_seconds") or float("nan")),
        "tokens_per_second": metrics["tokens_per_second"], "full_val": metrics["after_training"]["loss"],
    }
    rows = [keras_row]
    probe = subprocess.run([args.torch_python, "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        torch_command = [args.torch_python, str(HERE / "nanogpt_torch.py"), "--data", args.data, "--iters", str(args.iters)]
        print("running:", " ".join(torch_command), flush=True)
        wall, rss, out = timed(torch_command)
        ref = json.loads(out.strip().splitlines()[-1])
        rows.append({"framework": ref["framework"] + ", nanoGPT reference", "wall": wall, "rss": ref["peak_rss_mb"],
                     "val": {int(k): v for k, v in ref["val_loss"].items()}, "mean_ms": ref["ms_per_iter_mean"],
                     "median_ms": ref["ms_per_iter_median"], "tokens_per_second": ref["tokens_per_second"], "full_val": None})
    else:
        print(f"{args.torch_python} cannot import torch: the PyTorch reference is skipped")
    header = ["date", "framework", *[f"val@{c}" for c in CHECKPOINTS if c <= args.iters], "ms/iter mean", "ms/iter median",
              "tokens/s", "peak RSS", "wall", "machine", "command"]
    for row in rows:
        ratio = f" ({row['mean_ms'] / rows[0]['mean_ms']:.2f}× kerasllm)" if row is not rows[0] else ""
        values = [f"{row['val'].get(c, float('nan')):.4f}" for c in CHECKPOINTS if c <= args.iters]
        print(f"{row['framework']:45s} val {' '.join(values)}  {row['mean_ms']:.1f} ms/iter mean{ratio}, "
              f"{row['median_ms']:.1f} median, {row['tokens_per_second']:,.0f} tok/s, {row['rss']:.0f} MB, {row['wall']:.0f} s wall")
        append_row("transformer-lm against nanoGPT, CPU config (4L/4H/128, block 64, batch 12)", header, [
            dt.date.today().isoformat(), row["framework"], *values, f"{row['mean_ms']:.1f}{ratio}", f"{row['median_ms']:.1f}",
            f"{row['tokens_per_second']:,.0f}", f"{row['rss']:.0f} MB", f"{row['wall']:.0f} s", machine(),
            f"`python bench/nanogpt_cpu.py --iters {args.iters}`"])
    if keras_row["full_val"] is not None:
        print(f"kerasllm validation loss on the whole split after training: {keras_row['full_val']:.4f}")


if __name__ == "__main__":
    main()
