"""Benchmark: matrix-multiply throughput on this CPU, TensorFlow graph (oneDNN) against XLA, float32 against bfloat16.

    python bench/cpu_matmul.py

Why transformer-lm's step has a floor here: nanoGPT's CPU config does ~4.0 GFLOP of matrix multiplies per
training step (batch 12 × 64 tokens, 0.8 M weights; forward + backward ≈ 6 × weights × tokens, plus
attention). Shapes are the model's: (768 × 128) · (128 × 512) and back, and one large square for reference.
Each case chains 50 multiplies inside one `tf.while_loop` (no common subexpressions to fold) and reports
GFLOP/s as (a) a `tf.function` (TensorFlow's oneDNN kernels; bfloat16 uses AMX where the CPU has it) and
(b) the same function with `jit_compile=True` (XLA's CPU backend). Appends the table to bench/RESULTS.md.
"""

from __future__ import annotations

import datetime as dt
import time

from common import append_row, machine

SHAPES = [(768, 128, 512), (768, 128, 384), (1024, 1024, 1024)]
REPEATS, CALLS = 50, 20


def main() -> None:
    from kerasllm.core.quiet import load_tensorflow

    load_tensorflow()
    import tensorflow as tf

    def seconds(function, *args) -> float:
        function(*args).numpy()  # trace and compile
        started = time.perf_counter()
        for _ in range(CALLS):
            result = function(*args)
        result.numpy()
        return (time.perf_counter() - started) / CALLS

    rows = []
    for dtype in (tf.float32, tf.bfloat16):
        for m, k, n in SHAPES:
            a = tf.cast(tf.random.normal((m, k)), dtype)
            b = tf.cast(tf.random.normal((k, n)) * 0.01, dtype)
            c = tf.cast(tf.random.normal((n, k)) * 0.01, dtype)

            def chain(a, b, c):
                return tf.while_loop(lambda i, x: i < REPEATS, lambda i, x: (i + 1, tf.matmul(tf.matmul(x, b), c)), (0, a))[1]

            flops = 4 * m * k * n * REPEATS
            graph = flops / seconds(tf.function(chain), a, b, c) / 1e9
            xla = flops / seconds(tf.function(chain, jit_compile=True), a, b, c) / 1e9
            rows.append((dtype.name, f"{m}×{k}·{k}×{n}", graph, xla))
            print(f"{dtype.name:9s} {m}×{k}·{k}×{n:<5d} graph (oneDNN) {graph:7.0f} GFLOP/s   XLA {xla:7.0f} GFLOP/s   "
                  f"XLA/graph {xla / graph:.2f}")
    for name, shape, graph, xla in rows:
        append_row("CPU matrix multiply throughput: TensorFlow graph (oneDNN) against XLA",
                   ["date", "dtype", "shape", "graph GFLOP/s", "XLA GFLOP/s", "XLA / graph", "machine", "command"],
                   [dt.date.today().isoformat(), name, shape, f"{graph:.0f}", f"{xla:.0f}", f"{xla / graph:.2f}", machine(),
                    "`python bench/cpu_matmul.py`"])


if __name__ == "__main__":
    main()
