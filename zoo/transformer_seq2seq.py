"""`transformer-seq2seq`: an encoder–decoder Transformer ("Attention Is All You Need") for translation and summarization.

Source tokens + learned positions → `num_layers` keras-hub `TransformerEncoder` blocks (padding
masked) → LayerNorm; target tokens + learned positions → `num_layers` keras-hub
`TransformerDecoder` blocks (causal self-attention, cross-attention to the encoder) → LayerNorm
→ logits from the target embedding, transposed (tied). Pre-LayerNorm blocks, as
`transformer-lm`'s. Inputs `{"source": (batch, source_len), "target_in": (batch, target_len)}`,
output logits (batch, target_len, target_vocab).

`Seq2SeqCacheDecoder` encodes a batch once, fills each decoder block's cross-attention
key/value cache once, and then runs one position per new token with a self-attention cache.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: Keras, keras-hub and TensorFlow (and zoo.layers, which imports Keras) are imported inside functions:
# `kerasllm --help` and `kerasllm list` load this module and must not load them.

PRESETS = {
    "tiny": {"num_layers": 2, "num_heads": 4, "hidden_dim": 128, "intermediate_dim": 512},
    "small": {"num_layers": 3, "num_heads": 8, "hidden_dim": 256, "intermediate_dim": 1024},  # Multi30k size
    # the paper's base model (6 + 6 layers, 512 wide, 8 heads, 2048 feed-forward), meant for a GPU or TPU
    "base": {"num_layers": 6, "num_heads": 8, "hidden_dim": 512, "intermediate_dim": 2048, "max_sequence_length": 256},
}


@dataclass
class TransformerSeq2SeqConfig:
    """Hyperparameters of `transformer-seq2seq`."""

    num_layers: int = field(default=2, metadata=doc("Encoder blocks, and as many decoder blocks."))
    num_heads: int = field(default=4, metadata=doc("Attention heads per block."))
    hidden_dim: int = field(default=128, metadata=doc("Width of the hidden states (embedding size)."))
    intermediate_dim: int = field(default=512, metadata=doc("Width of each block's feed-forward layer."))
    max_sequence_length: int = field(default=128, metadata=doc("The most source or target tokens (position embeddings)."))
    dropout: float = field(default=0.1, metadata=doc("Dropout on embeddings, attention and feed-forward outputs."))
    layer_norm_epsilon: float = field(default=1e-5, metadata=doc("LayerNorm epsilon."))

    def validate(self) -> None:
        if min(self.num_layers, self.num_heads, self.hidden_dim, self.intermediate_dim, self.max_sequence_length) < 1:
            raise UserError("model_args.num_layers, num_heads, hidden_dim, intermediate_dim and max_sequence_length must be at least 1")
        if self.hidden_dim % self.num_heads:
            raise UserError(f"model_args.hidden_dim={self.hidden_dim} must be a multiple of num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: TransformerSeq2SeqConfig, info: DataInfo):
    """`{"source", "target_in"}` token ids → target logits (batch, target_len, target_vocab).

    `info.vocab_size` is the source vocabulary, `info.num_classes` the target's.
    """
    import keras
    import keras_hub

    from kerasllm.zoo.layers import PaddingMask  # zoo.layers imports Keras, which `kerasllm list` must not load

    if info.sequence_length > hparams.max_sequence_length:
        raise UserError(f"data.sequence_length={info.sequence_length} exceeds model_args.max_sequence_length="
                        f"{hparams.max_sequence_length}; lower one or raise the other")
    init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # one initializer per layer
    source = keras.Input(shape=(None,), dtype="int32", name="source")  # (batch, source_len)
    target = keras.Input(shape=(None,), dtype="int32", name="target_in")  # (batch, target_len)
    source_mask = PaddingMask(info.pad_id, name="source_mask")(source)
    target_mask = PaddingMask(info.pad_id, name="target_mask")(target)

    x = keras_hub.layers.TokenAndPositionEmbedding(info.vocab_size, hparams.max_sequence_length, hparams.hidden_dim,
                                                   embeddings_initializer=init(), name="source_embedding")(source)
    x = keras.layers.Dropout(hparams.dropout, name="source_dropout")(x)
    for i in range(hparams.num_layers):
        x = keras_hub.layers.TransformerEncoder(
            hparams.intermediate_dim, hparams.num_heads, dropout=hparams.dropout, activation="gelu",
            layer_norm_epsilon=hparams.layer_norm_epsilon, kernel_initializer=init(), normalize_first=True,
            name=f"encoder_block_{i}")(x, padding_mask=source_mask)
    encoded = keras.layers.LayerNormalization(epsilon=hparams.layer_norm_epsilon, name="encoder_norm")(x)  # (batch, source_len, hidden)

    embedding = keras_hub.layers.ReversibleEmbedding(info.num_classes, hparams.hidden_dim, embeddings_initializer=init(),
                                                     name="target_embedding")
    y = embedding(target)
    positions = keras_hub.layers.PositionEmbedding(hparams.max_sequence_length, initializer=init(),
                                                   name="target_position_embedding")(y)
    y = keras.layers.Add(name="target_add")([y, positions])
    y = keras.layers.Dropout(hparams.dropout, name="target_dropout")(y)
    for i in range(hparams.num_layers):
        y = keras_hub.layers.TransformerDecoder(
            hparams.intermediate_dim, hparams.num_heads, dropout=hparams.dropout, activation="gelu",
            layer_norm_epsilon=hparams.layer_norm_epsilon, kernel_initializer=init(), normalize_first=True,
            name=f"decoder_block_{i}")(y, encoded, decoder_padding_mask=target_mask, encoder_padding_mask=source_mask)
    y = keras.layers.LayerNormalization(epsilon=hparams.layer_norm_epsilon, name="decoder_norm")(y)
    logits = embedding(y, reverse=True)  # (batch, target_len, target_vocab), tied to the target embedding
    return keras.Model({"source": source, "target_in": target}, logits, name="transformer_seq2seq")


def count_params(hparams: TransformerSeq2SeqConfig, vocab_size: int = 8000, target_vocab_size: int | None = None) -> int:
    """Parameters without building the model (default: a shared vocabulary of 8,000)."""
    target_vocab_size = target_vocab_size or vocab_size
    d, m, n = hparams.hidden_dim, hparams.intermediate_dim, hparams.num_layers
    attention = 4 * (d * d + d)
    feed_forward = d * m + m + m * d + d
    encoder = n * (attention + feed_forward + 2 * 2 * d)
    decoder = n * (2 * attention + feed_forward + 3 * 2 * d)
    positions = 2 * hparams.max_sequence_length * d
    return vocab_size * d + target_vocab_size * d + positions + encoder + decoder + 2 * 2 * d


_COMPILED = weakref.WeakKeyDictionary()  # model -> its traced encode and step functions


class Seq2SeqCacheDecoder:
    """Cached decoding for `transformer-seq2seq`: `bind(sources)` gives a decoder (start/step/select) for that batch."""

    def __init__(self, model):
        self.model = model
        self.source_embedding = model.get_layer("source_embedding")
        self.encoders = [layer for layer in model.layers if layer.name.startswith("encoder_block_")]
        self.encoder_norm = model.get_layer("encoder_norm")
        self.embedding = model.get_layer("target_embedding")
        self.positions = model.get_layer("target_position_embedding")
        self.decoders = [layer for layer in model.layers if layer.name.startswith("decoder_block_")]
        self.decoder_norm = model.get_layer("decoder_norm")
        self.context = self.positions.sequence_length
        self.heads = self.decoders[0].num_heads
        self.head_dim = self.embedding.output_dim // self.heads
        self._compiled = _COMPILED.setdefault(model, {})  # shared by every decoder of this model: traced once

    @classmethod
    def from_model(cls, model):
        try:
            return cls(model)
        except (ValueError, AttributeError):
            return None

    def functions(self):
        """`encode(sources) -> (encoded, mask, cross caches)` and `step(tokens, index, encoded, mask, cache, cross)`, traced."""
        if "step" not in self._compiled:
            import keras

            def encode(sources):
                ops = keras.ops
                mask = ops.not_equal(sources, 0)
                x = self.source_embedding(sources)
                for block in self.encoders:
                    x = block(x, padding_mask=mask)
                encoded = self.encoder_norm(x)
                batch, length = ops.shape(sources)[0], ops.shape(sources)[1]
                crosses = []
                start = ops.zeros((batch, 1, self.embedding.output_dim), encoded.dtype)
                for block in self.decoders:  # fill each block's cross-attention key/value cache once
                    empty = ops.zeros((batch, 2, length, self.heads, self.head_dim), encoded.dtype)
                    self_cache = ops.zeros((batch, 2, self.context, self.heads, self.head_dim), encoded.dtype)
                    _, _, cross = block(start, encoded, encoder_padding_mask=mask, self_attention_cache=self_cache,
                                        self_attention_cache_update_index=0, cross_attention_cache=empty,
                                        cross_attention_cache_update_index=0)
                    crosses.append(cross)
                return encoded, mask, ops.stack(crosses, axis=1)

            def step(tokens, index, encoded, mask, cache, cross):
                ops = keras.ops
                y = self.embedding(tokens)  # (batch, 1, hidden)
                y = y + self.positions(y, start_index=index)
                caches = []
                for i, block in enumerate(self.decoders):
                    y, self_cache, _ = block(y, encoded, encoder_padding_mask=mask, self_attention_cache=cache[:, i],
                                             self_attention_cache_update_index=index, cross_attention_cache=cross[:, i],
                                             cross_attention_cache_update_index=None)
                    caches.append(self_cache)
                logits = self.embedding(self.decoder_norm(y), reverse=True)
                return logits[:, -1, :], ops.stack(caches, axis=1)

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                encode, step = tf.function(encode, reduce_retracing=True), tf.function(step, reduce_retracing=True)
            self._compiled.update(encode=encode, step=step)
        return self._compiled["encode"], self._compiled["step"]

    def bind(self, sources: np.ndarray) -> "BoundSeq2SeqDecoder":
        return BoundSeq2SeqDecoder(self, np.asarray(sources, np.int32))


class BoundSeq2SeqDecoder:
    """The #4 decoder interface for one batch of sources (start / step / select)."""

    def __init__(self, parent: Seq2SeqCacheDecoder, sources: np.ndarray):
        self.parent, self.sources = parent, sources

    def _run(self, state, tokens):
        import keras

        _, step = self.parent.functions()
        ops = keras.ops
        if state["position"] >= self.parent.context:
            raise UserError(f"the target reached the model's {self.parent.context} positions; lower --max-length")
        logits, state["cache"] = step(ops.convert_to_tensor(np.asarray(tokens, np.int32)[:, None]),
                                      ops.convert_to_tensor(state["position"], "int32"), state["encoded"], state["mask"],
                                      state["cache"], state["cross"])
        state["position"] += 1
        return np.asarray(ops.convert_to_numpy(logits), np.float64), state

    def start(self, prompts):
        import keras

        encode, _ = self.parent.functions()
        encoded, mask, cross = encode(keras.ops.convert_to_tensor(self.sources))
        parent = self.parent
        cache = keras.ops.zeros((len(self.sources), len(parent.decoders), 2, parent.context, parent.heads, parent.head_dim),
                                encoded.dtype)
        state = {"encoded": encoded, "mask": mask, "cross": cross, "cache": cache, "position": 0}
        logits = None
        for column in range(len(prompts[0])):  # the prompt ([BOS]) fills the cache
            logits, state = self._run(state, [prompt[column] for prompt in prompts])
        return logits, state

    def step(self, state, tokens):
        return self._run(state, tokens)

    def select(self, state, rows):
        import keras

        index = keras.ops.convert_to_tensor(np.asarray(rows, np.int32))
        return dict(state, **{key: keras.ops.take(state[key], index, axis=0) for key in ("encoded", "mask", "cross", "cache")})


SPEC = ModelSpec(
    name="transformer-seq2seq",
    task="seq2seq",
    hparams=TransformerSeq2SeqConfig,
    build=build,
    default_data="tfds:ted_hrlr_translate/pt_to_en",
    description="encoder–decoder Transformer for translation and summarization (keras-hub layers, cached beam search)",
    count_params=count_params,
    output="logits",
    defaults={
        "data": {"tokenizer": "sentencepiece", "vocab_size": 8000, "sequence_length": 64},
        "seq2seq": {"target_length": 64, "label_smoothing": 0.1},
        "train": {"epochs": 10, "batch_size": 64, "learning_rate": 1e-3, "warmup_steps": 400, "weight_decay": 0.01,
                  "sample_length": 1},
        "runtime": {"jit_compile": True},
    },
    presets=PRESETS,
    decoder=Seq2SeqCacheDecoder.from_model,
    overfitting_fixes=(
        "more dropout: --set model_args.dropout=0.2",
        "label smoothing: --set seq2seq.label_smoothing=0.1",
        "a smaller model: --preset tiny",
        "more pairs",
    ),
)
