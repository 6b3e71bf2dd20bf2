"""Benchmark: transformer-lm's own layers (zoo/layers.py) against keras-hub's, side by side on this machine.

    python bench/transformer_layers.py [--steps 550] [--repeats 2]

The issue asked for transformer-lm on `keras_hub.layers` unless hand-written layers are faster. Both
variants build nanoGPT's CPU config (4 layers, 4 heads, 128 dims, context 64, 65 tokens, no dropout) and
train it with the same recipe as bench/nanogpt_cpu.yaml (AdamW lr 1e-3, betas 0.9/0.99, weight decay 0.1,
global clip 1.0, XLA, 50 steps per execution, batch 12) on random windows (speed does not depend on the
data), each in a fresh process started through `kerasllm.core.quiet.load_tensorflow`, alternating:

- `keras-hub`: `keras_hub.layers.ReversibleEmbedding`, `PositionEmbedding`, `TransformerDecoder(normalize_first=True)`
  (what transformer-lm was built from before);
- `zoo`: `zoo.transformer_lm.build` (Keras' `ReversibleEmbedding`, zoo/layers.py's `PositionEmbedding` and
  `DecoderBlock` with a fused QKV projection and `keras.ops.dot_product_attention`).

Prints the median of steady ms/step (the first 50 steps, which compile, left out) and the peak RSS of each process,
with ratios, and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB, CONTEXT, BATCH = 65, 64, 12


def keras_hub_model():
    import keras
    import keras_hub

    init = lambda: keras.initializers.RandomNormal(stddev=0.02)
    tokens = keras.Input(shape=(None,), dtype="int32")
    embedding = keras_hub.layers.ReversibleEmbedding(VOCAB, 128, embeddings_initializer=init())
    x = embedding(tokens)
    x = x + keras_hub.layers.PositionEmbedding(CONTEXT, initializer=init())(x)
    for _ in range(4):
        x = keras_hub.layers.TransformerDecoder(512, 4, dropout=0.0, activation="gelu", layer_norm_epsilon=1e-5,
                                                kernel_initializer=init(), normalize_first=True)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return keras.Model(tokens, embedding(x, reverse=True))


def zoo_model():
    from kerasllm.data import DataInfo
    from kerasllm.zoo.transformer_lm import TransformerLMConfig, build

    return build(TransformerLMConfig(dropout=0.0), DataInfo(vocab_size=VOCAB, sequence_length=CONTEXT))


def child(variant: str, steps: int) -> None:
    sys.path.insert(0, str(HERE.parent))
    from kerasllm.core.quiet import load_tensorflow

    load_tensorflow()
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras_hub_model() if variant == "keras-hub" else zoo_model()
    optimizer = keras.optimizers.AdamW(1e-3, beta_1=0.9, beta_2=0.99, weight_decay=0.1, global_clipnorm=1.0)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                  steps_per_execution=50)
    ids = np.random.default_rng(0).integers(0, VOCAB, (BATCH * 50, CONTEXT + 1)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:])).batch(BATCH, drop_remainder=True).repeat()
    marks = []

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # every 50 steps (one execution)
            marks.append(time.perf_counter())

    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[Clock()])
    per_step = [(b - a) * 1000 / 50 for a, b in zip(marks, marks[1:])]  # the first execution (compilation) left out
    print(json.dumps({"variant": variant, "median_ms": statistics.median(per_step),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "parameters": model.count_params()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=550)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.steps)
    from common import append_row, machine

    results = {"keras-hub": [], "zoo": []}
    for _ in range(args.repeats):
        for variant in results:
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps)],
                                 capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = statistics.median(r["median_ms"] for r in results["keras-hub"])
    for variant, runs in results.items():
        ms = statistics.median(r["median_ms"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs)
        each = ", ".join(f"{r['median_ms']:.1f}" for r in runs)
        print(f"{variant:10s} {ms:6.1f} ms/step median (runs: {each}; {ms / base:.2f}× keras-hub), peak RSS {rss:,.0f} MB, "
              f"{runs[0]['parameters']:,} parameters")
        append_row("transformer-lm layers: keras-hub against zoo/layers.py (nanoGPT CPU config, XLA, fit)",
                   ["date", "layers", "median ms/step", "runs", "vs keras-hub", "peak RSS", "parameters", "machine", "command"],
                   [dt.date.today().isoformat(), variant, f"{ms:.1f}", each, f"{ms / base:.2f}×", f"{rss:,.0f} MB",
                    f"{runs[0]['parameters']:,}", machine(), f"`python bench/transformer_layers.py --repeats {args.repeats}`"])


if __name__ == "__main__":
    main()
