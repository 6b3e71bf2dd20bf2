"""Benchmark: one transformer-lm train step at nanoGPT's CPU config under each runtime lever, side by side.

    python bench/step_levers.py [--steps 400] [--repeats 2] [--only NAME ...]

The model is `zoo.transformer_lm.build` at nanoGPT's CPU config (4 layers, 4 heads, 128 dims, context 64, 65
tokens, no dropout), trained with bench/nanogpt_cpu.yaml's optimizer (AdamW 1e-3, betas 0.9/0.99, weight decay
0.1, clip 1.0) on random windows of batch 12 by `fit`; each variant runs in a fresh process, the variants
alternate, and the median of steady ms/step is kept (the first call, which compiles, left out). The levers:

- the XLA CPU runtime (`--xla_cpu_use_thunk_runtime`, kerasllm's TensorFlow default is `false`) and its oneDNN
  options;
- `steps_per_execution` (1, 10, 50, 200);
- XLA off (TensorFlow's own kernels: oneDNN, which uses AVX-512-BF16 / AMX for bfloat16 where the CPU has them);
- `mixed_bfloat16`, with and without XLA;
- Keras on JAX (its XLA), float32 and bfloat16;
- attention: `keras.ops.dot_product_attention` (the model's) against the same attention written as einsums.

Prints one line per variant with its ratio to the first, and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB, CONTEXT, BATCH = 65, 64, 12
THUNK_OFF = "--xla_cpu_use_thunk_runtime=false"

XLA, SPE50 = {"jit_compile": True, "steps_per_execution": 50}, {"jit_compile": False, "steps_per_execution": 50}
ONEDNN = f"{THUNK_OFF} --xla_cpu_use_onednn=true"
# name: (environment, compile settings, precision, attention)
VARIANTS = {
    "tf-xla, thunk runtime off (kerasllm's default)": ({"XLA_FLAGS": THUNK_OFF}, XLA, "float32", "ops"),
    "tf-xla, thunk runtime off + oneDNN in XLA": ({"XLA_FLAGS": ONEDNN}, XLA, "float32", "ops"),
    "tf-xla, XLA's default thunk runtime": ({"XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true"}, XLA, "float32", "ops"),
    "tf-xla, 1 step per call": ({"XLA_FLAGS": THUNK_OFF}, dict(XLA, steps_per_execution=1), "float32", "ops"),
    "tf-xla, 10 steps per call": ({"XLA_FLAGS": THUNK_OFF}, dict(XLA, steps_per_execution=10), "float32", "ops"),
    "tf-xla, 200 steps per call": ({"XLA_FLAGS": THUNK_OFF}, dict(XLA, steps_per_execution=200), "float32", "ops"),
    "tf-xla, attention as einsums": ({"XLA_FLAGS": THUNK_OFF}, XLA, "float32", "einsum"),
    "tf-xla, mixed_bfloat16": ({"XLA_FLAGS": THUNK_OFF}, XLA, "mixed_bfloat16", "ops"),
    "tf without XLA (oneDNN)": ({}, SPE50, "float32", "ops"),
    "tf without XLA (oneDNN), mixed_bfloat16": ({}, SPE50, "mixed_bfloat16", "ops"),
    "jax": ({"KERAS_BACKEND": "jax"}, XLA, "float32", "ops"),
    "jax, mixed_bfloat16": ({"KERAS_BACKEND": "jax"}, XLA, "mixed_bfloat16", "ops"),
}


def einsum_attention(query, key, value, mask=None, **_):
    """`ops.dot_product_attention` written out: (batch, time, heads, head_dim) in and out."""
    import keras

    ops = keras.ops
    scores = ops.einsum("bqhd,bkhd->bhqk", query, key) / ops.sqrt(ops.cast(ops.shape(query)[-1], query.dtype))
    scores = ops.where(mask, scores, ops.cast(-1e9, scores.dtype))
    return ops.einsum("bhqk,bkhd->bqhd", ops.softmax(scores, axis=-1), value)


def child(name: str, steps: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    from kerasllm.core.quiet import load_tensorflow

    load_tensorflow()
    import keras
    import numpy as np
    import tensorflow as tf

    _, settings, precision, attention = VARIANTS[name]
    if attention == "einsum":
        keras.ops.dot_product_attention = einsum_attention  # zoo/layers.py calls it through keras.ops
    from kerasllm.data import DataInfo
    from kerasllm.zoo.transformer_lm import TransformerLMConfig, build

    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    model = build(TransformerLMConfig(dropout=0.0), DataInfo(vocab_size=VOCAB, sequence_length=CONTEXT))
    optimizer = keras.optimizers.AdamW(1e-3, beta_1=0.9, beta_2=0.99, weight_decay=0.1, global_clipnorm=1.0)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), **settings)
    ids = np.random.default_rng(0).integers(0, VOCAB, (BATCH * 50, CONTEXT + 1)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).batch(BATCH, drop_remainder=True).repeat()
    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # once per call into the graph
            marks.append((time.perf_counter(), batch))

    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    per_step = [(b - a) * 1000 / (j - i) for (a, i), (b, j) in zip(marks, marks[1:])]  # the first call (compilation) left out
    print(json.dumps({"median_ms": statistics.median(per_step), "first_call_s": marks[0][0] - started,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variants whose name starts with one of these")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    from common import append_row, machine

    names = [name for name in VARIANTS if not args.only or name.startswith(tuple(args.only))]
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "KERAS_BACKEND")}
            env.update(VARIANTS[name][0])
            out = subprocess.run([sys.executable, __file__, "--child", name, "--steps", str(args.steps)], capture_output=True,
                                 text=True, env=env)
            if out.returncode:
                print(f"{name}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
                continue
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  {name}: {results[name][-1]['median_ms']:.1f} ms/step", flush=True)
    base = None
    for name, runs in results.items():
        if not runs:
            continue
        ms = statistics.median(r["median_ms"] for r in runs)
        base = base or ms
        each = ", ".join(f"{r['median_ms']:.1f}" for r in runs)
        first = statistics.median(r["first_call_s"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        print(f"{name:60s} {ms:6.1f} ms/step (runs: {each}; {base / ms:.2f}× the first's speed), first call {first:.1f} s, "
              f"peak RSS {rss:,.0f} MB")
        append_row("transformer-lm train step levers (nanoGPT CPU config, batch 12, fit, random windows)",
                   ["date", "variant", "median ms/step", "runs", "speed vs the first", "first call (compiles)", "peak RSS",
                    "machine", "command"],
                   [dt.date.today().isoformat(), name, f"{ms:.1f}", each, f"{base / ms:.2f}×", f"{first:.1f} s", f"{rss:,.0f} MB",
                    machine(), f"`python bench/step_levers.py --steps {args.steps} --repeats {args.repeats}`"])


if __name__ == "__main__":
    main()
