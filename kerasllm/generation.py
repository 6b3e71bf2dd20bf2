"""Sampling loops for language models: greedy, temperature and top-k.

Any model mapping ids (batch, time) to next-token probabilities (batch, time, vocab)
works: the loop feeds the last `window` tokens and samples from the last position.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kerasllm.errors import UserError


def forward_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """`ids (1, time) -> probabilities (1, time, vocab)`, traced once for every length."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda ids: model(ids, training=False), input_signature=[tf.TensorSpec([1, None], tf.int32)])
        return lambda ids: traced(ids).numpy()
    return lambda ids: keras.ops.convert_to_numpy(model(ids, training=False))


def choose(probabilities: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """Pick the next id; id 0 ([UNK]) is never produced. Temperature 0 means greedy."""
    probabilities = np.asarray(probabilities, dtype=np.float64).copy()
    probabilities[0] = 0.0
    if temperature <= 0:
        return int(np.argmax(probabilities))
    logits = np.log(np.maximum(probabilities, 1e-30)) / temperature
    if 0 < top_k < len(logits):
        logits[logits < np.partition(logits, -top_k)[-top_k]] = -np.inf
    logits[0] = -np.inf
    weights = np.exp(logits - logits.max())
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def generate(model, tokenizer, prompt: str, length: int, *, temperature: float = 1.0, top_k: int = 0,
             seed: int | None = None, window: int = 100, on_token: Callable[[str], None] | None = None,
             forward: Callable | None = None) -> str:
    """Continue `prompt` by `length` tokens; `on_token` receives each new token's text as it comes."""
    if length < 0:
        raise UserError("--length must be 0 or more")
    if temperature < 0:
        raise UserError("--temperature must be 0 (greedy) or positive")
    forward = forward or forward_function(model)
    rng = np.random.default_rng(seed)
    ids = [int(i) for i in tokenizer.encode(prompt)] or [tokenizer.encode("\n")[0] or 1]
    pieces = []
    for _ in range(length):
        context = np.asarray([ids[-window:]], dtype=np.int32)
        next_id = choose(forward(context)[0, -1], temperature, top_k, rng)
        ids.append(next_id)
        pieces.append(tokenizer.token(next_id))
        if on_token:
            on_token(pieces[-1])
    return "".join(pieces)
