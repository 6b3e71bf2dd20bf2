"""Custom layers of the zoo, registered for `.keras` save → load (import this before loading)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="kerasllm")
class ResizeImages(keras.layers.Layer):
    """Resize images (batch, H, W, C) → (batch, height, width, C), bilinear.

    Used instead of `keras.layers.Resizing`: in Keras 3.15 a model that has
    `Resizing` before BatchNormalization exports (`model.export`) a graph whose
    outputs differ from `model.predict` (BatchNorm no longer in inference mode).

    Args:
        height: output height.
        width: output width.

    Example:
        >>> ResizeImages(28, 28)(np.zeros((1, 8, 8, 1))).shape
        (1, 28, 28, 1)
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = height, width

    def call(self, images):
        return keras.ops.image.resize(images, (self.height, self.width), interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def per_row(index) -> bool:
    """A cache index given per row, shape (batch,), rather than one scalar for the whole batch."""
    return len(getattr(index, "shape", ())) == 1


@keras.saving.register_keras_serializable(package="kerasllm")
class PositionEmbedding(keras.layers.Layer):
    """Learned position embeddings: (batch, time, hidden) → the embeddings of positions start_index … start_index + time.

    Positions are gathered (`ops.take`), not sliced: under XLA a slice's start must be a compile-time constant, so
    keras-hub's slicing `PositionEmbedding` made a compiled decoding step compile again for every position.

    Args:
        sequence_length: the most positions (the context).
        initializer: the embeddings' initializer.

    Example:
        >>> PositionEmbedding(8)(np.zeros((2, 3, 4), "float32"), start_index=5).shape
        (2, 3, 4)
    """

    def __init__(self, sequence_length: int, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.position_embeddings = self.add_weight(name="embeddings", shape=(self.sequence_length, input_shape[-1]),
                                                   initializer=self.initializer)
        self.built = True

    def call(self, inputs, start_index=0):
        """`start_index` is one position for every row, or one per row, shape (batch,) (continuous batching)."""
        ops = keras.ops
        shape = ops.shape(inputs)
        table = ops.cast(self.position_embeddings, self.compute_dtype)
        if per_row(start_index):
            positions = ops.expand_dims(start_index, 1) + ops.arange(shape[1])[None]  # (batch, time)
            return ops.take(table, positions, axis=0)  # (batch, time, hidden)
        positions = ops.arange(shape[1]) + start_index  # (time,)
        return ops.broadcast_to(ops.take(table, positions, axis=0)[None], shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), sequence_length=self.sequence_length,
                    initializer=keras.initializers.serialize(self.initializer))


@keras.saving.register_keras_serializable(package="kerasllm")
class RotaryPositions(keras.layers.Layer):
    """Rotary position embedding (RoFormer; the "rotate half" form): (batch, time, heads, head_dim) → the same, each
    pair of features (i, i + head_dim/2) rotated by position × max_wavelength^(-2i/head_dim).

    The computation of keras-hub's `RotaryEmbedding` with its defaults (which transformer-lm used before, so runs
    saved then generate the same; tests/zoo_models/test_layers.py compares the two), without importing keras-hub: that import
    took ~2 s and ~150 MB of every rotary run's start.

    Args:
        max_wavelength: the longest wavelength.

    Example:
        >>> RotaryPositions()(np.ones((1, 3, 2, 4), "float32"), start_index=2).shape
        (1, 3, 2, 4)
    """

    def __init__(self, max_wavelength: int = 10000, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength

    def call(self, inputs, start_index=0, positions=None):
        """`positions`: (batch, time) or (time,) positions of each row's tokens; else start_index, start_index + 1, …"""
        ops = keras.ops
        dim = ops.shape(inputs)[-1]
        inverse = ops.power(ops.cast(self.max_wavelength, "float32"), -(ops.arange(0, dim, 2, dtype="float32") / dim))
        if positions is None:
            positions = ops.arange(ops.shape(inputs)[1], dtype="float32") + ops.cast(start_index, "float32")
        positions = ops.cast(positions, "float32")
        if len(ops.shape(positions)) == 1:
            positions = ops.expand_dims(positions, 0)
        freq = ops.einsum("bi,j->bij", positions, inverse)  # (batch or 1, time, head_dim / 2)
        angles = ops.reshape(ops.stack((freq, freq), axis=-2), (*ops.shape(freq)[:-1], dim))[:, :, None, :]
        cos, sin = ops.cast(ops.cos(angles), self.compute_dtype), ops.cast(ops.sin(angles), self.compute_dtype)
        first, second = ops.split(inputs, 2, axis=-1)
        rotated = ops.reshape(ops.stack((-second, first), axis=-2), ops.shape(inputs))  # stack, not concatenate: as keras-hub
        return inputs * cos + rotated * sin

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), max_wavelength=self.max_wavelength)


@keras.saving.register_keras_serializable(package="kerasllm")
class DecoderBlock(keras.layers.Layer):
    """A pre-LayerNorm causal self-attention + GELU MLP block (GPT-2's), with learned or rotary positions.

    Queries, keys and values come from one fused Dense; attention is `keras.ops.dot_product_attention` with a causal
    mask. With `rotary=True` queries and keys are rotated by position (`RotaryPositions`). Called like
    keras-hub's `TransformerDecoder`: with `self_attention_cache` (batch, 2, max_sequence_length, heads, head_dim) and
    `self_attention_cache_update_index` it returns `(outputs, new_cache)`; the index may be a traced tensor, also
    under XLA (the cache is written with a dynamic update, not a slice).

    Args:
        intermediate_dim: width of the MLP.
        num_heads: attention heads.
        dropout: dropout on the attention and MLP outputs.
        layer_norm_epsilon: LayerNorm epsilon.
        max_sequence_length: the longest context (the cache's length).
        rotary: rotate queries and keys by position (else positions come from outside, e.g. learned embeddings).
        kernel_initializer: the Dense kernels' initializer (one instance per layer is made from it).

    Example:
        >>> block = DecoderBlock(64, 2)
        >>> block(np.zeros((1, 5, 16), "float32")).shape
        (1, 5, 16)
    """

    def __init__(self, intermediate_dim, num_heads, dropout=0.0, layer_norm_epsilon=1e-5, max_sequence_length=1024,
                 rotary=True, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.rotary_positions = rotary
        self.intermediate_dim = intermediate_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.max_sequence_length = max_sequence_length
        self.kernel_initializer = keras.initializers.get(kernel_initializer or {"class_name": "RandomNormal",
                                                                                "config": {"stddev": 0.02}})

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.head_dim = hidden // self.num_heads
        config = keras.initializers.serialize(self.kernel_initializer)
        init = lambda: keras.initializers.deserialize(config)  # one initializer instance per layer
        self.attention_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="attention_norm")
        self.qkv = keras.layers.Dense(3 * hidden, kernel_initializer=init(), name="qkv")
        self.attention_output = keras.layers.Dense(hidden, kernel_initializer=init(), name="attention_output")
        self.mlp_norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, name="mlp_norm")
        self.mlp_in = keras.layers.Dense(self.intermediate_dim, activation="gelu", kernel_initializer=init(), name="mlp_in")
        self.mlp_out = keras.layers.Dense(hidden, kernel_initializer=init(), name="mlp_out")
        if self.rotary_positions:
            self.rotary = RotaryPositions(name="rotary")
        self.attention_dropout = keras.layers.Dropout(self.dropout)
        self.mlp_dropout = keras.layers.Dropout(self.dropout)
        self.attention_norm.build(input_shape)
        self.qkv.build(input_shape)
        self.attention_output.build(input_shape)
        self.mlp_norm.build(input_shape)
        self.mlp_in.build(input_shape)
        self.mlp_out.build((*input_shape[:-1], self.intermediate_dim))
        if self.rotary_positions:  # no weights, but built: Keras' quantize refuses a model with an unbuilt layer
            self.rotary.build((*input_shape[:-1], self.num_heads, self.head_dim))
        self.built = True

    def _attend(self, query, key, value, query_start):
        """Causal attention (`keras.ops.dot_product_attention`) over keys at positions ≤ each query's position."""
        ops = keras.ops
        query_positions = ops.arange(ops.shape(query)[1]) + query_start
        allowed = ops.expand_dims(query_positions, 1) >= ops.expand_dims(ops.arange(ops.shape(key)[1]), 0)
        return ops.dot_product_attention(query, key, value, mask=allowed[None, None])  # (batch, time, heads, head_dim)

    def call(self, x, self_attention_cache=None, self_attention_cache_update_index=None, training=None):
        ops = keras.ops
        batch, length = ops.shape(x)[0], ops.shape(x)[1]
        index = 0 if self_attention_cache_update_index is None else self_attention_cache_update_index
        qkv = ops.reshape(self.qkv(self.attention_norm(x)), (batch, length, 3, self.num_heads, self.head_dim))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (batch, time, heads, head_dim)
        if per_row(index):  # one new token per row, each row at its own position (continuous batching)
            return self._call_per_row(x, query, key, value, self_attention_cache, index, training)
        if self.rotary_positions:
            query, key = self.rotary(query, start_index=index), self.rotary(key, start_index=index)
        new_cache = None
        if self_attention_cache is not None:
            # written in the cache's dtype: under mixed_bfloat16 on JAX, slice updates must match it exactly
            key, value = ops.cast(key, self_attention_cache.dtype), ops.cast(value, self_attention_cache.dtype)
            start = [0, index, 0, 0]
            key = ops.slice_update(self_attention_cache[:, 0], start, key)  # (batch, context, heads, head_dim)
            value = ops.slice_update(self_attention_cache[:, 1], start, value)
            query = ops.cast(query, key.dtype)
            new_cache = ops.stack([key, value], axis=1)
        attended = self._attend(query, key, value, index)
        attended = ops.reshape(attended, (batch, length, self.num_heads * self.head_dim))
        x = x + self.attention_dropout(self.attention_output(attended), training=training)
        x = x + self.mlp_dropout(self.mlp_out(self.mlp_in(self.mlp_norm(x))), training=training)
        return x if new_cache is None else (x, new_cache)

    def _call_per_row(self, x, query, key, value, cache, index, training):
        """One token per row (x: (batch, 1, hidden)) written at position `index[row]` of that row's cache; each row
        attends to its own positions 0 … index[row] only."""
        ops = keras.ops
        query, key = self.rotate_rows(query, key, index)
        context = ops.shape(cache)[2]
        place = ops.one_hot(index, context, dtype=cache.dtype)[:, :, None, None]  # (batch, context, 1, 1)
        key = cache[:, 0] * (1 - place) + place * ops.cast(key, cache.dtype)  # (batch, context, heads, head_dim)
        value = cache[:, 1] * (1 - place) + place * ops.cast(value, cache.dtype)
        query = ops.cast(query, cache.dtype)
        return self.finish_rows(x, query, key, value, index, training), ops.stack([key, value], axis=1)

    def project_rows(self, x, index):
        """One new token per row (x: (batch, 1, hidden)) → its query, key and value (batch, 1, heads, head_dim),
        rotated to each row's position `index[row]` when positions are rotary."""
        ops = keras.ops
        qkv = ops.reshape(self.qkv(self.attention_norm(x)), (ops.shape(x)[0], 1, 3, self.num_heads, self.head_dim))
        return self.rotate_rows(qkv[:, :, 0], qkv[:, :, 1], index) + (qkv[:, :, 2],)

    def rotate_rows(self, query, key, index):
        if not self.rotary_positions:
            return query, key
        positions = keras.ops.expand_dims(index, 1)  # (batch, 1)
        return self.rotary(query, positions=positions), self.rotary(key, positions=positions)

    def finish_rows(self, x, query, keys, values, index, training=None):
        """The rest of the block for one token per row, given every row's keys and values (batch, context, heads,
        head_dim) with the new ones in place: attention over positions 0 … index[row], then the MLP."""
        ops = keras.ops
        allowed = ops.arange(ops.shape(keys)[1])[None, :] <= ops.expand_dims(index, 1)  # (batch, context)
        attended = ops.dot_product_attention(query, keys, values, mask=allowed[:, None, None, :])
        attended = ops.reshape(attended, (ops.shape(x)[0], 1, self.num_heads * self.head_dim))
        x = x + self.attention_dropout(self.attention_output(attended), training=training)
        return x + self.mlp_dropout(self.mlp_out(self.mlp_in(self.mlp_norm(x))), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), intermediate_dim=self.intermediate_dim, num_heads=self.num_heads,
                    dropout=self.dropout, layer_norm_epsilon=self.layer_norm_epsilon,
                    max_sequence_length=self.max_sequence_length, rotary=self.rotary_positions,
                    kernel_initializer=keras.initializers.serialize(self.kernel_initializer))


@keras.saving.register_keras_serializable(package="kerasllm")
class PaddingMask(keras.layers.Layer):
    """Token ids (batch, time) → 1 where a token is real, 0 where it is padding (int32), for keras-hub backbones.

    Args:
        pad_id: the padding token's id.
    """

    def __init__(self, pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.pad_id = pad_id

    def call(self, tokens):
        return keras.ops.cast(keras.ops.not_equal(tokens, self.pad_id), "int32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), pad_id=self.pad_id)


@keras.saving.register_keras_serializable(package="kerasllm")
class SegmentIds(keras.layers.Layer):
    """Token ids (batch, time) → segment ids: 0 up to and including the first [SEP], 1 after it (sentence pairs).

    Computed from the tokens, so a model takes one input and its export needs nothing else.

    Args:
        sep_id: the [SEP] token's id (-1: every token is segment 0).
    """

    def __init__(self, sep_id: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.sep_id = sep_id

    def call(self, tokens):
        ops = keras.ops
        is_sep = ops.cast(ops.equal(tokens, self.sep_id), "int32")
        return ops.minimum(ops.cumsum(is_sep, axis=1) - is_sep, 1)  # (batch, time)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return dict(super().get_config(), sep_id=self.sep_id)


@keras.saving.register_keras_serializable(package="kerasllm")
class SequencePooling(keras.layers.Layer):
    """(batch, time, hidden) states and the token ids → (batch, hidden).

    Args:
        mode: `cls` (the first position, BERT), `mean` (over real tokens) or `last` (the last real token, for causal
            models such as GPT-2).
        pad_id: the padding token's id.
    """

    def __init__(self, mode: str = "cls", pad_id: int = 0, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("cls", "mean", "last"):
            raise ValueError(f"pooling must be cls, mean or last, not {mode!r}")
        self.mode, self.pad_id = mode, pad_id

    def call(self, states, tokens):
        ops = keras.ops
        if self.mode == "cls":
            return states[:, 0, :]
        real = ops.cast(ops.not_equal(tokens, self.pad_id), states.dtype)  # (batch, time)
        if self.mode == "mean":
            total = ops.sum(states * real[:, :, None], axis=1)
            return total / ops.maximum(ops.sum(real, axis=1, keepdims=True), 1.0)
        last = ops.maximum(ops.cast(ops.sum(real, axis=1), "int32") - 1, 0)  # (batch,)
        return ops.take_along_axis(states, last[:, None, None], axis=1)[:, 0, :]

    def compute_output_shape(self, states_shape, tokens_shape=None):
        return (states_shape[0], states_shape[-1])

    def get_config(self):
        return dict(super().get_config(), mode=self.mode, pad_id=self.pad_id)


@keras.saving.register_keras_serializable(package="kerasllm")
class GatherPositions(keras.layers.Layer):
    """(batch, time, hidden) states at (batch, k) positions → (batch, k, hidden) (the masked-LM head's input)."""

    def call(self, states, positions):
        return keras.ops.take_along_axis(states, keras.ops.expand_dims(positions, -1), axis=1)

    def compute_output_shape(self, states_shape, positions_shape=None):
        return (states_shape[0], positions_shape[1] if positions_shape else None, states_shape[-1])


def encoder_model(backbone, info, pooling: str = "cls", dropout: float = 0.1, name: str = "classifier"):
    """A keras-hub backbone (BERT-style, GPT-2, …) behind one `tokens` input, with a head for `info.objective`.

    The backbone's `padding_mask` (and `segment_ids`) inputs are computed from the token ids, so the model takes
    (batch, time) int32 ids only. Heads: classification (pooled — BERT's pooler output for `cls` when the backbone
    has one — → dropout → `classifier_head` logits) or, for
    `objective == "mlm"`, masked-LM logits at the `mask_positions` input (`mlm_transform` → `mlm_norm` → `mlm_logits`).
    """
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    expected = backbone.input if isinstance(backbone.input, dict) else {}
    inputs = {"token_ids": tokens}
    if "padding_mask" in expected:
        inputs["padding_mask"] = PaddingMask(info.pad_id, name="padding_mask")(tokens)
    if "segment_ids" in expected:
        inputs["segment_ids"] = SegmentIds(info.sep_id, name="segment_ids")(tokens)
    outputs = backbone(inputs)
    states = outputs["sequence_output"] if isinstance(outputs, dict) else outputs  # (batch, time, hidden)
    hidden = states.shape[-1]
    if info.objective == "mlm":
        if isinstance(outputs, dict) and "pooled_output" in outputs:  # BERT's [CLS] pooler is unused by masked-LM
            backbone.get_layer("pooled_dense").trainable = False
        positions = keras.Input(shape=(None,), dtype="int32", name="mask_positions")  # (batch, masked)
        x = GatherPositions(name="gather_masked")(states, positions)  # (batch, masked, hidden)
        x = keras.layers.Dense(hidden, activation="gelu", name="mlm_transform")(x)
        x = keras.layers.LayerNormalization(epsilon=1e-12, name="mlm_norm")(x)
        logits = keras.layers.Dense(info.vocab_size, name="mlm_logits")(x)  # (batch, masked, vocab)
        return keras.Model({"tokens": tokens, "mask_positions": positions}, logits, name=f"{name}_mlm")
    if pooling == "cls" and isinstance(outputs, dict) and "pooled_output" in outputs:
        pooled = outputs["pooled_output"]  # BERT's pooler: tanh(dense([CLS] state))
    else:
        pooled = SequencePooling(pooling, info.pad_id, name="pooling")(states, tokens)  # (batch, hidden)
    pooled = keras.layers.Dropout(dropout, name="head_dropout")(pooled)
    logits = keras.layers.Dense(info.num_classes, name="classifier_head")(pooled)  # (batch, classes)
    return keras.Model(tokens, logits, name=name)
