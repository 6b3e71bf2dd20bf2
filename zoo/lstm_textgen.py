"""`lstm-textgen`: the classic character-level text generator.

Embedding → LSTM (× num_layers) → Dense softmax over the vocabulary, trained
with Adam(W) and sparse categorical cross-entropy to predict the next token
at every position. Uses `keras.layers` only, so it runs on any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo
from kerasllm.data.text import builtin_vocab_size

# Lazy imports: Keras is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and must
# not load them.


@dataclass
class LSTMTextGeneratorConfig:
    """Hyperparameters of `lstm-textgen`."""

    embedding_dim: int = field(default=64, metadata=doc("Size of each token's embedding vector."))
    units: int = field(default=256, metadata=doc("LSTM hidden units per layer."))
    num_layers: int = field(default=1, metadata=doc("Stacked LSTM layers."))
    dropout: float = field(default=0.0, metadata=doc("Dropout on each LSTM layer's inputs."))

    def validate(self) -> None:
        if min(self.embedding_dim, self.units, self.num_layers) < 1:
            raise UserError("model_args.embedding_dim, units and num_layers must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: LSTMTextGeneratorConfig, info: DataInfo):
    """A Functional model mapping token ids (batch, time) to next-token probabilities (batch, time, vocab).

    Example:
        >>> model = build(LSTMTextGeneratorConfig(units=32), DataInfo(vocab_size=40))
        >>> model(np.zeros((2, 10), "int32")).shape
        (2, 10, 40)
    """
    import keras

    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    x = keras.layers.Embedding(info.vocab_size, hparams.embedding_dim, name="embedding")(tokens)  # (batch, time, embedding_dim)
    for i in range(hparams.num_layers):
        x = keras.layers.LSTM(hparams.units, return_sequences=True, dropout=hparams.dropout, name=f"lstm_{i}")(x)  # (batch, time, units)
    probabilities = keras.layers.Dense(info.vocab_size, activation="softmax", name="next_token")(x)  # (batch, time, vocab)
    return keras.Model(tokens, probabilities, name="lstm_textgen")


class LSTMStepDecoder:
    """Generation that carries each LSTM layer's (h, c): a NumPy step per token, any backend.

    Computes Embedding → LSTM cells → the output layer's logits (before its softmax)
    with the trained weights; the cost per token does not grow with the context.
    """

    def __init__(self, embedding, cells, output_kernel, output_bias):
        self.embedding, self.cells = embedding, cells  # cells: [(kernel, recurrent_kernel, bias)]
        self.output_kernel, self.output_bias = output_kernel, output_bias
        self.model = None  # set by `from_model`: `tf_greedy` reads its variables

    @classmethod
    def from_model(cls, model):
        """The decoder for a model built by `build` (None if the layers are not that shape)."""
        import keras

        layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
        if len(layers) < 3 or not isinstance(layers[0], keras.layers.Embedding) or not isinstance(layers[-1], keras.layers.Dense):
            return None
        lstms = layers[1:-1]
        if not all(isinstance(layer, keras.layers.LSTM) for layer in lstms):
            return None
        for layer in lstms:
            if layer.cell.activation is not keras.activations.tanh or layer.cell.recurrent_activation is not keras.activations.sigmoid \
                    or not layer.cell.use_bias or layer.go_backwards:
                return None
        f32 = lambda value: np.asarray(keras.ops.convert_to_numpy(value), np.float32)
        cells = [(f32(layer.cell.kernel), f32(layer.cell.recurrent_kernel), f32(layer.cell.bias)) for layer in lstms]
        output = layers[-1]
        bias = f32(output.bias) if output.use_bias else np.zeros(output.units, np.float32)
        decoder = cls(f32(layers[0].embeddings), cells, f32(output.kernel), bias)
        decoder.model = model
        return decoder

    def tf_greedy(self, ids, lengths, steps, penalty):
        """Greedy decoding as TensorFlow ops only, for a SavedModel's `generate` signature, on the model's own
        variables: `ids` (batch, time) prompts padded on the right, `lengths` (batch,), `steps` new tokens (a scalar
        tensor), `penalty` (vocab,) added to the logits. The same cell arithmetic as `_advance`; returns (batch, steps)."""
        import keras
        import tensorflow as tf

        layers = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
        embeddings, output = layers[0].embeddings, layers[-1]
        cells = [(layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias) for layer in layers[1:-1]]
        batch = tf.shape(ids)[0]

        def advance(state, tokens, active):
            x, new_state = tf.gather(embeddings, tokens), []
            for (kernel, recurrent, bias), (h, c) in zip(cells, state):
                i, f, g, o = tf.split(tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias, 4, axis=-1)
                c_next = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
                h_next = tf.sigmoid(o) * tf.tanh(c_next)
                new_state.append((tf.where(active, h_next, h), tf.where(active, c_next, c)))
                x = new_state[-1][0]
            return x, new_state

        def logits_of(top):
            return tf.matmul(top, output.kernel) + (output.bias if output.use_bias else 0.0) + penalty

        state = [(tf.zeros([batch, kernel.shape[1] // 4]),) * 2 for kernel, _, _ in cells]
        last = tf.zeros([batch, cells[-1][0].shape[1] // 4])

        def read(t, state, last):
            active = (t < lengths)[:, None]
            top, state = advance(state, ids[:, t], active)
            return t + 1, state, tf.where(active, top, last)

        _, state, last = tf.while_loop(lambda t, *_: t < tf.reduce_max(lengths), read, (tf.constant(0), state, last))

        def write(i, logits, state, out):
            token = tf.argmax(logits, axis=-1, output_type=tf.int32)
            top, state = advance(state, token, tf.ones([batch, 1], tf.bool))
            return i + 1, logits_of(top), state, out.write(i, token)

        _, _, _, out = tf.while_loop(lambda i, *_: i < steps, write,
                                     (tf.constant(0), logits_of(last), state, tf.TensorArray(tf.int32, size=steps)))
        return tf.transpose(out.stack())

    def tf_endpoints(self) -> dict:
        """On-device generation as two TensorFlow functions (a LiteRT file's signatures, `kerasllm.export.litert`), with
        their input signatures: `prefill(tokens (1, length)) -> {logits (1, vocab) after the last token, cache}` and
        `decode(token (1,), cache) -> {logits, cache}`; the cache holds each layer's (h, c), (layers, 2, 1, units). The
        same cell arithmetic as `_advance`, on the model's own variables."""
        import keras
        import tensorflow as tf

        layers = [layer for layer in self.model.layers if not isinstance(layer, keras.layers.InputLayer)]
        embeddings, output = layers[0].embeddings, layers[-1]
        cells = [(layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias) for layer in layers[1:-1]]
        units = cells[0][0].shape[1] // 4
        shape = (len(cells), 2, 1, units)

        def advance(cache, token):
            x, states = tf.gather(embeddings, token), []
            for (kernel, recurrent, bias), state in zip(cells, tf.unstack(cache)):
                h, c = tf.unstack(state)
                i, f, g, o = tf.split(tf.matmul(x, kernel) + tf.matmul(h, recurrent) + bias, 4, axis=-1)
                c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
                h = tf.sigmoid(o) * tf.tanh(c)
                states.append(tf.stack([h, c]))
                x = h
            logits = tf.matmul(x, output.kernel) + (output.bias if output.use_bias else 0.0)
            return logits, tf.stack(states)

        def prefill(tokens):
            def read(t, cache, logits):
                logits, cache = advance(cache, tokens[:, t])
                return t + 1, cache, logits

            logits = tf.zeros([1, output.units])
            _, cache, logits = tf.while_loop(lambda t, *_: t < tf.shape(tokens)[1], read, (tf.constant(0), tf.zeros(shape), logits))
            return {"logits": logits, "cache": cache}

        def decode(token, cache):
            logits, cache = advance(cache, token)
            return {"logits": logits, "cache": cache}

        return {"prefill": (prefill, [tf.TensorSpec([1, None], tf.int32, name="tokens")]),
                "decode": (decode, [tf.TensorSpec([1], tf.int32, name="token"), tf.TensorSpec(shape, tf.float32, name="cache")])}

    def _advance(self, state, tokens, active):
        """One time step for the rows in `active`; returns the top layer's output."""
        x = self.embedding[tokens]  # (batch, embedding_dim)
        new_state = []
        for (kernel, recurrent, bias), (h, c) in zip(self.cells, state):
            z = x @ kernel + h @ recurrent + bias  # (batch, 4 * units): gates i, f, c, o
            i, f, g, o = np.split(z, 4, axis=-1)
            c_next = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h_next = _sigmoid(o) * np.tanh(c_next)
            h_next, c_next = np.where(active, h_next, h), np.where(active, c_next, c)
            new_state.append((h_next, c_next))
            x = h_next
        return x, new_state

    def start(self, prompts):
        batch, longest = len(prompts), max(len(p) for p in prompts)
        state = [(np.zeros((batch, k.shape[1] // 4), np.float32),) * 2 for k, _, _ in self.cells]
        last = np.zeros((batch, self.cells[-1][0].shape[1] // 4), np.float32)
        lengths = np.array([len(p) for p in prompts])
        for t in range(longest):
            tokens = np.array([p[t] if t < len(p) else 0 for p in prompts])
            active = (t < lengths)[:, None]
            top, state = self._advance(state, tokens, active)
            last = np.where(active, top, last)
        return last @ self.output_kernel + self.output_bias, state

    def step(self, state, tokens):
        top, state = self._advance(state, np.asarray(tokens), np.ones((len(tokens), 1), bool))
        return top @ self.output_kernel + self.output_bias, state

    def select(self, state, rows):
        rows = np.asarray(rows)
        return [(h[rows], c[rows]) for h, c in state]


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # the logistic function, without overflow for large |x|


def count_params(hparams: LSTMTextGeneratorConfig, vocab_size: int | None = None) -> int:
    """Parameter count without building the model (default: the default data's vocabulary)."""
    if vocab_size is None:
        vocab_size = builtin_vocab_size(SPEC.default_data)
    units, total, width = hparams.units, vocab_size * hparams.embedding_dim, hparams.embedding_dim
    for _ in range(hparams.num_layers):
        total += 4 * (width * units + units * units + units)
        width = units
    return total + units * vocab_size + vocab_size


SPEC = ModelSpec(
    name="lstm-textgen",
    task="text-generation",
    hparams=LSTMTextGeneratorConfig,
    build=build,
    default_data="builtin:python-docs",
    description="Character LSTM text generator (Embedding → LSTM → Dense softmax)",
    count_params=count_params,
    # Sized so the default run takes under 3 minutes on 2 CPU cores; 1e-2 beat 3e-3 there
    # (validation 2.12 vs 2.77 bits/char after 6 epochs).
    defaults={"train": {"epochs": 6, "learning_rate": 1e-2}},
    decoder=LSTMStepDecoder.from_model,
    overfitting_fixes=(
        "dropout on the LSTM inputs: --set model_args.dropout=0.2",
        "stronger weight decay: --set train.weight_decay=0.1",
        "a smaller model: --set model_args.units=128",
        "more text (--data with a larger corpus)",
        "early stopping keeps the best epoch already (train.early_stopping_patience)",
    ),
)
