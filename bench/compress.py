"""Compression benchmarks (#12), one command: cnn-classifier on MNIST, or (--lm) a transformer-lm on tinyshakespeare.

    python bench/compress.py [--data-dir ../shared/data] [--epochs 1] [--run RUN]
    python bench/compress.py --lm train [--lm-steps 150]     # or --lm RUN: int8, int4, GPTQ and AWQ copies of a transformer-lm

1. Trains `cnn-classifier` on MNIST for --epochs (or takes --run).
2. LiteRT: exports the run as float32, dynamic-range and full-integer int8 TFLite files (`kerasllm export --format
   tflite --quantize …`) and measures each, side by side in this one process, on the run's validation split
   (MNIST t10k): accuracy, file size, and the median latency of one interpreter call on a batch (the export's fixed
   batch of 2), over 300 calls each, interleaved.
3. Pruning: `kerasllm compress RUN --method prune --sparsity S --epochs 1` for 50 % and 80 %; the run's own before →
   after table (accuracy, non-zero parameters, gzipped size).

Rows go to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import append_row, kerasllm, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def interpreter(path: Path):
    from kerasllm.export.formats import litert_interpreter

    runner = litert_interpreter(path).get_signature_runner()
    (name,) = list(runner.get_input_details())
    return lambda batch: next(iter(runner(**{name: batch}).values()))


def validation_images(run_dir: Path):
    from kerasllm import runs
    from kerasllm.data.images import load_images

    run = runs.load_run(run_dir)
    split = load_images(run.config.data.source, run.config.data.validation_fraction)
    return split.x_validation.astype("float32"), split.y_validation


def litert_rows(run_dir: Path, folder: Path, command: str) -> list[list[str]]:
    files = {}
    for quantize in ("none", "dynamic", "int8"):
        files[quantize] = folder / f"model-{quantize}.tflite"
        kerasllm("export", run_dir, "--format", "tflite", "--quantize", quantize, "--out", files[quantize])
    x, y = validation_images(run_dir)
    runners = {name: interpreter(path) for name, path in files.items()}
    batch = x[:2]
    accuracy = {}
    for name, run in runners.items():
        predicted = np.concatenate([np.argmax(run(x[i:i + 2]), -1) for i in range(0, len(x) - len(x) % 2, 2)])
        accuracy[name] = float(np.mean(predicted == y[: len(predicted)]))
    times = {name: [] for name in runners}
    for _ in range(300):  # interleaved, so that the machine's drift falls on every file alike
        for name, run in runners.items():
            started = time.perf_counter()
            run(batch)
            times[name].append((time.perf_counter() - started) * 1000)
    latency = {name: statistics.median(values) for name, values in times.items()}
    size = {name: path.stat().st_size for name, path in files.items()}
    rows = []
    for name in files:
        rows.append([dt.date.today().isoformat(), f"LiteRT {'float32' if name == 'none' else name}", f"{size[name] / 1024:,.0f} KB",
                     f"{size[name] / size['none']:.0%}", f"{accuracy[name]:.2%}",
                     f"{(accuracy['none'] - accuracy[name]) * 100:+.2f}".replace("+-", "-"), f"{latency[name]:.3f} ms",
                     f"{latency['none'] / latency[name]:.2f}×", f"{len(y):,}", machine(), f"`{command}`"])
    return rows


def prune_rows(run_dir: Path, folder: Path, command: str) -> list[list[str]]:
    rows = []
    for sparsity in (0.5, 0.8):
        out = folder / f"prune-{sparsity}"
        seconds = kerasllm("compress", run_dir, "--method", "prune", "--sparsity", sparsity, "--epochs", 1, "--out", out, "--json")
        metrics = json.loads((out / "metrics.json").read_text())
        before, after = metrics["before"], metrics["after"]
        rows.append([dt.date.today().isoformat(), f"{sparsity:.0%}", f"{metrics['sparsity']['total']:.2%}",
                     f"{before['nonzero_parameters']:,} → {after['nonzero_parameters']:,}",
                     f"{before['gzipped_bytes'] / 1024:,.0f} → {after['gzipped_bytes'] / 1024:,.0f} KB",
                     f"{before['accuracy']:.2%} → {after['accuracy']:.2%}", f"{(before['accuracy'] - after['accuracy']) * 100:+.2f}",
                     f"{seconds:.0f} s", machine(), f"`{command}`"])
    return rows


def lm_rows(run_dir: Path, folder: Path, command: str) -> list[list[str]]:
    """`kerasllm compress RUN --method M` for int8, int4, GPTQ and AWQ (4-bit) on a transformer-lm: each copy's own before →
    after table (perplexity on the run's validation split, sizes, cached tokens/s), measured in its own process."""
    rows = []
    for method in ("int8", "int4", "gptq", "awq"):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "kerasllm", "compress", str(run_dir), "--method", method, "--json",
                                 "--out", str(folder / method)], check=True, capture_output=True, text=True)
        wall = time.perf_counter() - started
        summary = json.loads(result.stdout)
        before, after = summary["before"], summary["after"]
        rows.append([dt.date.today().isoformat(), method, f"{before['size_bytes'] / 1e6:.2f} → {after['size_bytes'] / 1e6:.2f} MB",
                     f"{before['perplexity']:.4f} → {after['perplexity']:.4f}",
                     f"{(after['perplexity'] / before['perplexity'] - 1) * 100:+.2f} %",
                     f"{before['bits_per_char']:.4f} → {after['bits_per_char']:.4f}",
                     f"{before['tokens_per_second']:.0f} → {after['tokens_per_second']:.0f}",
                     f"{before['latency_ms_per_batch']:.1f} → {after['latency_ms_per_batch']:.1f} ms", f"{wall:.0f} s", machine(),
                     f"`{command}`"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--run", help="an existing cnn-classifier run on MNIST (skips training)")
    parser.add_argument("--lm", help="instead: quantize this transformer-lm run (int8, int4, gptq, awq); `train` trains one "
                                     "(--preset small on tinyshakespeare, --lm-steps steps)")
    parser.add_argument("--lm-steps", type=int, default=150)
    args = parser.parse_args()
    if args.lm:
        return lm_bench(args)
    command = "python bench/compress.py" + (f" --epochs {args.epochs}" if args.epochs != 1 else "")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        run_dir = Path(args.run) if args.run else folder / "cnn"
        if not args.run:
            kerasllm("train", "cnn-classifier", "--data", Path(args.data_dir) / "mnist", "--epochs", args.epochs, "--out", run_dir, "--quiet")
        from kerasllm.core.quiet import load_tensorflow

        load_tensorflow()
        for row in litert_rows(run_dir, folder, command):
            print(row)
            append_row("cnn-classifier on MNIST: LiteRT quantization (#12)",
                       ["date", "file", "size", "of float32", "validation accuracy", "drop (points)", "latency per batch of 2",
                        "speed-up vs float32", "images", "machine", "command"], row)
        for row in prune_rows(run_dir, folder, command):
            print(row)
            append_row("cnn-classifier on MNIST: magnitude pruning while fine-tuning 1 epoch (#12)",
                       ["date", "target", "sparsity reached (kernels)", "non-zero parameters", "gzipped model",
                        "validation accuracy", "drop (points)", "wall", "machine", "command"], row)


def lm_bench(args) -> None:
    command = f"python bench/compress.py --lm {args.lm}" + (f" --lm-steps {args.lm_steps}" if args.lm == "train" else "")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        run_dir = folder / "lm" if args.lm == "train" else Path(args.lm)
        if args.lm == "train":
            kerasllm("train", "transformer-lm", "--preset", "small", "--data", Path(args.data_dir) / "tinyshakespeare" / "input.txt",
                     "--epochs", 1, "--set", f"train.steps_per_epoch={args.lm_steps}", "--set", "train.batch_size=16",
                     "--set", "train.sample_length=0", "--out", run_dir, "--quiet")
        for row in lm_rows(run_dir, folder, command):
            print(row)
            append_row("transformer-lm small on tinyshakespeare: Keras quantization and GPTQ (#12)",
                       ["date", "method", "model file", "perplexity", "rise", "bits/char", "cached tokens/s",
                        "latency per batch of 32", "compress wall", "machine", "command"], row)


if __name__ == "__main__":
    main()
