"""Decoding a seq2seq model: target ids for source rows, greedy or by beam search, and a translate graph.

`seq2seq_decoder(model, spec, target_length)` is the family's cached decoder (`spec.decoder`) or `RecomputeDecoder`,
which runs the whole model on the target prefix at every step (any seq2seq model). `decode` drives either one, in
batches; `graph_translate` is the same greedy choice as TensorFlow ops only, for a SavedModel's `translate` signature.
"""

from __future__ import annotations

import weakref

import numpy as np

from kerasllm.generation import beam_search_batch

# Lazy imports: Keras and TensorFlow are imported inside functions: `kerasllm --help` and `kerasllm list` load this
# module (through kerasllm.tasks.seq2seq) and must not load them.

_TRACED = weakref.WeakKeyDictionary()  # model -> its traced forward function (RecomputeDecoder)


class RecomputeDecoder:
    """The uncached fallback: every step runs the whole model on the target prefix (for any seq2seq model)."""

    def __init__(self, model, target_length: int):
        import keras

        self.model, self.length = model, target_length
        forward = lambda inputs: model(inputs, training=False)
        if keras.backend.backend() == "tensorflow":  # traced once per batch shape (eager LSTMs step in Python)
            import tensorflow as tf

            forward = _TRACED.setdefault(model, tf.function(forward, reduce_retracing=True))
        self.forward = forward

    def bind(self, sources: np.ndarray) -> "RecomputeDecoder":
        bound = RecomputeDecoder.__new__(RecomputeDecoder)
        bound.model, bound.length, bound.forward = self.model, self.length, self.forward
        bound.sources = np.asarray(sources, np.int32)
        return bound

    def _logits(self, sources, prefixes) -> np.ndarray:
        import keras

        width = min(max(len(p) for p in prefixes), self.length)
        target = np.zeros((len(prefixes), self.length), np.int32)  # a fixed width: one traced shape
        for row, prefix in enumerate(prefixes):
            target[row, :min(len(prefix), self.length)] = prefix[-self.length:]
        out = self.forward({"source": sources, "target_in": target})
        return np.asarray(keras.ops.convert_to_numpy(out), np.float64)[np.arange(len(prefixes)), width - 1]

    def start(self, prompts):
        state = {"sources": self.sources, "prefixes": [list(map(int, p)) for p in prompts]}
        return self._logits(state["sources"], state["prefixes"]), state

    def step(self, state, tokens):
        for prefix, token in zip(state["prefixes"], tokens):
            prefix.append(int(token))
        return self._logits(state["sources"], state["prefixes"]), state

    def select(self, state, rows):
        rows = np.asarray(rows)
        return {"sources": state["sources"][rows], "prefixes": [list(state["prefixes"][r]) for r in rows]}


def seq2seq_decoder(model, spec, target_length: int):
    """The family's cached decoder (`spec.decoder`) when it has one, else recomputation."""
    if spec.decoder is not None:
        decoder = spec.decoder(model)
        if decoder is not None:
            return decoder
    return RecomputeDecoder(model, target_length)


def decode(decoder, sources: np.ndarray, tokenizer, max_length: int, beam: int = 0, length_penalty: float = 1.0,
           batch_size: int = 64, on_progress=None) -> list[list[int]]:
    """Target ids for each source row: batched greedy decoding, or batched beam search (`batch_size` rows of beams:
    batch_size // beam sources at a time). `on_progress(done, total)` is called after each batch of sources."""
    on_progress = on_progress or (lambda done, total: None)
    bos, eos = tokenizer.special_id("bos"), tokenizer.eos_id
    banned = [i for i in tokenizer.never_generated() if i != eos]
    outputs: list[list[int]] = []
    if beam >= 1:
        step = max(1, batch_size // beam)
        for start in range(0, len(sources), step):
            chunk = sources[start:start + step]
            outputs += [list(ids) for ids in beam_search_batch(decoder.bind(chunk), [np.asarray([bos])] * len(chunk), max_length,
                                                               beam, banned=banned, eos=eos, length_penalty=length_penalty)]
            on_progress(len(outputs), len(sources))
        return outputs
    for start in range(0, len(sources), batch_size):
        chunk = sources[start:start + batch_size]
        bound = decoder.bind(chunk)
        logits, state = bound.start([[bos]] * len(chunk))
        ids = [[] for _ in chunk]
        done = np.zeros(len(chunk), bool)
        for position in range(max_length):
            logits = np.array(logits, dtype=np.float64)
            logits[:, banned] = -np.inf
            tokens = logits.argmax(axis=-1)
            for row, token in enumerate(tokens):
                if not done[row]:
                    if token == eos:
                        done[row] = True
                    else:
                        ids[row].append(int(token))
            if done.all() or position == max_length - 1:
                break
            logits, state = bound.step(state, tokens)
        outputs += ids
        on_progress(len(outputs), len(sources))
    return outputs


def graph_translate(model, source_tokenizer, target_tokenizer, source_length: int, target_length: int):
    """`translate(texts) -> texts` as TensorFlow ops only (for a SavedModel signature): tokenize and pack the sources
    as `pack_sources` does, greedy-decode by running the model on the whole target row at each position (static
    shapes; the same choices as `decode`'s greedy path), cut at [EOS] and detokenize."""
    import tensorflow as tf

    bos, eos, pad = target_tokenizer.special_id("bos"), target_tokenizer.eos_id, source_tokenizer.special_id("pad") or 0
    penalty = np.zeros(target_tokenizer.vocab_size, np.float32)
    penalty[[i for i in target_tokenizer.never_generated() if i != eos]] = -np.inf

    def translate(texts):
        batch = tf.shape(texts)[0]
        ids = source_tokenizer.tf_encode(texts)[:, : source_length - 1]
        ids = tf.concat([ids, tf.RaggedTensor.from_tensor(tf.fill([batch, 1], tf.constant(source_tokenizer.eos_id, tf.int32)))], 1)
        sources = ids.to_tensor(default_value=pad, shape=[None, source_length])
        target = tf.concat([tf.fill([batch, 1], tf.constant(bos, tf.int32)), tf.zeros([batch, target_length - 1], tf.int32)], 1)

        def step(position, target, outputs):
            logits = model({"source": sources, "target_in": target}, training=False)
            scores = tf.cast(tf.gather(logits, position, axis=1), tf.float32) + penalty
            token = tf.argmax(scores, axis=-1, output_type=tf.int32)[:, None]
            outputs += tf.one_hot(position, target_length, dtype=tf.int32)[None] * token
            target += tf.one_hot(position + 1, target_length, dtype=tf.int32)[None] * token  # nothing past the row
            return position + 1, target, outputs

        _, _, outputs = tf.while_loop(lambda position, *_: position < target_length, step,
                                      (tf.constant(0), target, tf.zeros([batch, target_length], tf.int32)))
        before_eos = tf.equal(tf.cumsum(tf.cast(tf.equal(outputs, eos), tf.int32), axis=1), 0)
        kept = tf.RaggedTensor.from_tensor(outputs, lengths=tf.reduce_sum(tf.cast(before_eos, tf.int32), axis=1))
        return target_tokenizer.tf_decode(kept)

    return translate
