"""Benchmark: transformer-lm generation at the `small` preset, KV cache against recomputing the context.

    python bench/generation_transformer.py [--new-tokens 255] [--prompt-tokens 1]   (together at most the context, 256)

Builds the `small` preset (6 layers, 6 heads, 384 dims, context 256) for a 69-token character
vocabulary (speed does not depend on the weights), then generates `--new-tokens` greedily from
the same prompt (a) with `TransformerCacheDecoder` (KV cache, a traced `tf.function` step), (b) with the windowed
fallback, which re-runs the whole context for every token, and (c) with keras-hub's
`GPT2CausalLM.generate` (its own cache and XLA), built locally without weights at the same
dimensions. Prints tokens/s and ratios and appends them to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
from common import append_row, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=255)
    parser.add_argument("--prompt-tokens", type=int, default=1)
    args = parser.parse_args()
    from kerasllm.core.quiet import load_tensorflow

    load_tensorflow()
    import keras
    import keras_hub

    from kerasllm import generation
    from kerasllm.data import DataInfo
    from kerasllm.zoo.transformer_lm import PRESETS, TransformerCacheDecoder, TransformerLMConfig, build

    vocab, preset = 69, {k: v for k, v in PRESETS["small"].items() if "." not in k}
    keras.utils.set_random_seed(0)
    model = build(TransformerLMConfig(**dict(preset, dropout=0.0)), DataInfo(vocab_size=vocab, sequence_length=256))
    prompt = np.random.default_rng(0).integers(4, vocab, args.prompt_tokens).astype(np.int32)
    total = args.prompt_tokens + args.new_tokens
    if total > preset["max_sequence_length"]:
        raise SystemExit(f"prompt + new tokens ({total}) must fit the context {preset['max_sequence_length']}")

    class Ids:  # ids in, ids out: no tokenizer in the way
        unk_id, eos_id = 1, 3

        def encode(self, text):
            return prompt

        def never_generated(self):
            return [0, 1, 2, 3]

        def stream(self):
            class Stream:
                push = staticmethod(lambda token: chr(200 + int(token)))
            return Stream()

    def run(decoder) -> tuple[float, str]:
        generation.generate(model, Ids(), [""], 8, temperature=0, decoder=decoder)  # compile / trace
        started = time.perf_counter()
        text = generation.generate(model, Ids(), [""], args.new_tokens, temperature=0, decoder=decoder)[0]
        return args.new_tokens / (time.perf_counter() - started), text

    speed = {}
    speed["kv cache"], cached_text = run(TransformerCacheDecoder.from_model(model))
    speed["recompute the context"], windowed_text = run(generation.WindowedDecoder(model, 256, "logits"))

    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=vocab, num_layers=preset["num_layers"], num_heads=preset["num_heads"],
                                             hidden_dim=preset["hidden_dim"], intermediate_dim=4 * preset["hidden_dim"],
                                             max_sequence_length=preset["max_sequence_length"], dropout=0.0)
    gpt2 = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    gpt2.compile(sampler="greedy")
    token_ids = np.zeros((1, total), np.int32)
    token_ids[0, : args.prompt_tokens] = prompt
    padding = np.zeros((1, total), bool)
    padding[0, : args.prompt_tokens] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding}
    gpt2.generate(inputs, stop_token_ids=None)  # compile
    started = time.perf_counter()
    gpt2.generate(inputs, stop_token_ids=None)
    speed["keras-hub GPT2CausalLM.generate"] = args.new_tokens / (time.perf_counter() - started)

    same = next((i for i, (a, b) in enumerate(zip(cached_text, windowed_text)) if a != b), len(cached_text))
    base = speed["recompute the context"]
    for name, value in speed.items():
        print(f"{name:34s} {value:10,.1f} tokens/s  ({value / base:.1f}× recompute)")
    print(f"cached and recomputed greedy tokens agree for {same} of {args.new_tokens}")
    append_row(
        "transformer-lm generation, `small` preset (6L/6H/384, context 256)",
        ["date", "new tokens", "KV cache tokens/s", "recompute tokens/s", "cache / recompute", "GPT2CausalLM tokens/s",
         "greedy tokens identical", "machine", "command"],
        [dt.date.today().isoformat(), str(args.new_tokens), f"{speed['kv cache']:,.1f}", f"{base:,.1f}",
         f"**{speed['kv cache'] / base:.1f}×**", f"{speed['keras-hub GPT2CausalLM.generate']:,.1f}",
         f"{same}/{args.new_tokens}", machine(), "`python bench/generation_transformer.py`"],
    )


if __name__ == "__main__":
    main()
