"""Benchmark: training tokens/s of transformer-lm (tiny) and lstm-textgen under each engine, side by side.

    python bench/scaleout.py [--data ../shared/data/tinyshakespeare/input.txt] [--steps 300] [--lstm-steps 40]

For each model, in one run and on the same data and global batch:
  (a) TensorFlow, the default strategy (one device);
  (b) TensorFlow, MirroredStrategy over 2 logical CPU devices (per-replica batch halved);
  (c) Keras on JAX, one device;
  (d) Keras on JAX, DataParallel over 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2).
Each setting is a fresh `kerasllm train` process (logical devices and the backend are fixed at start). Records the
median step time, tokens/s over the whole loop (compilation included), the validation loss reached (the same
recipe should reach the same loss), and the ratios against (a); appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import append_row, machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOGICAL_CPUS = ("import sys, tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
                "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2); "
                "sys.argv = ['kerasllm'] + sys.argv[1:]; from kerasllm import cli; cli.main()")
SETTINGS = {  # name: (backend, replicas, launcher)
    "tf default": ("tensorflow", 1, None),
    "tf mirrored 2 logical CPUs": ("tensorflow", 2, LOGICAL_CPUS),
    "jax 1 device": ("jax", 1, None),
    "jax DataParallel 2 devices": ("jax", 2, None),
}


def models(steps: int, lstm_steps: int) -> dict[str, tuple[list[str], int]]:
    """model: (kerasllm train arguments, global batch)."""
    return {
        "transformer-lm": (["transformer-lm", "--preset", "tiny", "--config", str(HERE / "nanogpt_cpu.yaml"),
                            "--set", "train.epochs=1", "--set", f"train.steps_per_epoch={steps}",
                            "--set", "train.warmup_steps=20"], 12),
        "lstm-textgen": (["lstm-textgen", "--set", "train.epochs=1", "--set", f"train.steps_per_epoch={lstm_steps}",
                          "--set", "data.sequence_length=100", "--set", "model_args.units=256", "--set", "train.sample_length=0",
                          "--set", "train.validation_steps=20"], 64),
    }


def run(setting: str, args: list[str], global_batch: int, data: str, out: Path) -> dict:
    backend, replicas, launcher = SETTINGS[setting]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND=backend)
    if backend == "jax" and replicas > 1:
        env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
    strategy = "mirrored" if replicas > 1 else "cpu"
    train = ["train", *args, "--data", data, "--out", str(out), "--quiet", "--strategy", strategy,
             "--set", f"train.batch_size={global_batch // replicas}"]
    command = [sys.executable, "-c", launcher, *train] if launcher else [sys.executable, "-m", "kerasllm", *train]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(ROOT))
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else "failed"}
    summary = json.loads((out / "metrics.json").read_text())
    return {"tokens_per_second": summary["tokens_per_second"], "median_ms": 1000 * (summary["median_step_seconds"] or 0),
            "mean_ms": 1000 * summary["train_seconds"] / summary["steps"], "val_loss": summary["after_training"]["loss"],
            "strategy": summary["strategy"], "replicas": summary["replicas"], "loop": summary["loop"],
            "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--steps", type=int, default=300, help="transformer-lm steps per setting")
    parser.add_argument("--lstm-steps", type=int, default=40, help="lstm-textgen steps per setting")
    parser.add_argument("--only", default="", help="comma-separated settings to run (default: all)")
    options = parser.parse_args()
    if not Path(options.data).is_file():
        sys.exit(f"no data at {options.data}; pass --data PATH (tinyshakespeare's input.txt)")
    chosen = [s for s in SETTINGS if not options.only or s in options.only.split(",")]
    command = "python bench/scaleout.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as scratch:
        for model, (args, global_batch) in models(options.steps, options.lstm_steps).items():
            results = {}
            for setting in chosen:
                results[setting] = run(setting, args, global_batch, options.data, Path(scratch) / f"{model}-{len(results)}")
                print(model, setting, results[setting], flush=True)
            base = results.get("tf default", {})
            for setting, found in results.items():
                if "error" in found:
                    row = [dt.date.today().isoformat(), model, setting, "failed: " + found["error"], "", "", "", "", "", machine(), f"`{command}`"]
                else:
                    ratio = found["tokens_per_second"] / base["tokens_per_second"] if base.get("tokens_per_second") else float("nan")
                    row = [dt.date.today().isoformat(), model, setting, f"{found['strategy']} ×{found['replicas']}, loop {found['loop']}",
                           f"{found['median_ms']:.1f}", f"{found['mean_ms']:.1f}", f"{found['tokens_per_second']:,.0f}", f"{ratio:.2f}×",
                           f"{found['val_loss']:.4f}", machine(), f"`{command}`"]
                append_row("Scale-out engines: training tokens/s (#10)",
                           ["date", "model", "setting", "engine", "median ms/step", "mean ms/step (whole loop)", "tokens/s",
                            "vs tf default", "val loss", "machine", "command"], row)


if __name__ == "__main__":
    main()
