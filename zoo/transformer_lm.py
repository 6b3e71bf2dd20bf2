"""`transformer-lm`: a decoder-only (GPT-style) Transformer language model.

Token embedding (+ learned position embedding, or rotary positions inside attention)
→ `num_layers` pre-LayerNorm blocks of causal multi-head self-attention and a GELU
MLP, with dropout → a final LayerNorm → logits from the token embedding, transposed
(tied weights). The loss is computed from the logits.

Built from `keras.layers`/`keras.ops` only, so the model runs on any Keras backend: Keras' `ReversibleEmbedding` (the
tied output), and zoo/layers.py's `PositionEmbedding` and `DecoderBlock` (fused QKV projection,
`keras.ops.dot_product_attention`; with `position=rotary`, queries and keys are rotated by `RotaryPositions`, keras-hub's
`RotaryEmbedding` computation without the keras-hub import). They replaced keras-hub's `TransformerDecoder` and
`PositionEmbedding`: on nanoGPT's CPU config `python bench/transformer_layers.py` measured 0.94× the step time and a
peak of 1,107 against 1,407 MB (keras-hub, TensorFlow Text and scikit-learn are no longer imported; bench/RESULTS.md).
Models saved with the keras-hub layers still load and generate.

Generation uses `TransformerCacheDecoder`: the prompt fills a key/value cache once, then every new token costs
one position, in a step compiled with XLA on static shapes.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np

from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo
from kerasllm.data.text import builtin_vocab_size

# Lazy imports: Keras and TensorFlow (and zoo.layers, which imports Keras) are imported inside functions: `kerasllm
# --help` and `kerasllm list` load this module and must not load them.

PRESETS = {
    # nanoGPT's CPU config (and its shakespeare-char config for `small`)
    "tiny": {"num_layers": 4, "num_heads": 4, "hidden_dim": 128, "max_sequence_length": 64, "data.sequence_length": 64},
    "small": {"num_layers": 6, "num_heads": 6, "hidden_dim": 384, "max_sequence_length": 256, "data.sequence_length": 256,
              "dropout": 0.2},
    # GPT-2 small's shape, meant for a GPU or TPU
    "base": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "max_sequence_length": 1024, "data.sequence_length": 1024},
}


@dataclass
class TransformerLMConfig:
    """Hyperparameters of `transformer-lm`."""

    num_layers: int = field(default=4, metadata=doc("Transformer blocks."))
    num_heads: int = field(default=4, metadata=doc("Attention heads per block."))
    hidden_dim: int = field(default=128, metadata=doc("Width of the residual stream (embedding size)."))
    intermediate_dim: int = field(default=0, metadata=doc("Width of each block's MLP; 0 means 4 × hidden_dim."))
    max_sequence_length: int = field(default=64, metadata=doc("Context: the most tokens the model attends over."))
    dropout: float = field(default=0.1, metadata=doc("Dropout on embeddings, attention and MLP outputs."))
    position: str = field(default="learned", metadata=doc("Positions: `learned` embeddings or `rotary` (inside attention)."))
    layer_norm_epsilon: float = field(default=1e-5, metadata=doc("LayerNorm epsilon."))

    def validate(self) -> None:
        if min(self.num_layers, self.num_heads, self.hidden_dim, self.max_sequence_length) < 1:
            raise UserError("model_args.num_layers, num_heads, hidden_dim and max_sequence_length must be at least 1")
        if self.hidden_dim % self.num_heads:
            raise UserError(f"model_args.hidden_dim={self.hidden_dim} must be a multiple of num_heads={self.num_heads}")
        if self.position == "rotary" and (self.hidden_dim // self.num_heads) % 2:
            raise UserError("rotary positions need an even head size (hidden_dim / num_heads)")
        if self.position not in ("learned", "rotary"):
            raise UserError("model_args.position must be learned or rotary")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")

    @property
    def mlp_dim(self) -> int:
        return self.intermediate_dim or 4 * self.hidden_dim


def build(hparams: TransformerLMConfig, info: DataInfo):
    """A Functional model mapping token ids (batch, time) to next-token logits (batch, time, vocab).

    Example:
        >>> model = build(TransformerLMConfig(num_layers=1, hidden_dim=16, num_heads=2), DataInfo(vocab_size=40))
        >>> model(np.zeros((2, 10), "int32")).shape
        (2, 10, 40)
    """
    import keras

    from kerasllm.zoo import layers as zoo_layers  # imports Keras, which `kerasllm list` must not load

    if info.sequence_length > hparams.max_sequence_length:
        raise UserError(f"data.sequence_length={info.sequence_length} exceeds the context model_args.max_sequence_length="
                        f"{hparams.max_sequence_length}; lower one or raise the other")
    init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # one initializer per layer
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    embedding = keras.layers.ReversibleEmbedding(info.vocab_size, hparams.hidden_dim, embeddings_initializer=init(),
                                                 name="token_embedding")
    x = embedding(tokens)  # (batch, time, hidden)
    if hparams.position == "learned":
        positions = zoo_layers.PositionEmbedding(hparams.max_sequence_length, initializer=init(),
                                                 name="position_embedding")(x)
        x = keras.layers.Add(name="embeddings_add")([x, positions])
    x = keras.layers.Dropout(hparams.dropout, name="embeddings_dropout")(x)
    for i in range(hparams.num_layers):
        x = zoo_layers.DecoderBlock(
            hparams.mlp_dim, hparams.num_heads, dropout=hparams.dropout, layer_norm_epsilon=hparams.layer_norm_epsilon,
            max_sequence_length=hparams.max_sequence_length, rotary=hparams.position == "rotary", name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=hparams.layer_norm_epsilon, name="final_norm")(x)
    logits = embedding(x, reverse=True)  # (batch, time, vocab), tied to the token embedding
    return keras.Model(tokens, logits, name="transformer_lm")


def count_params(hparams: TransformerLMConfig, vocab_size: int | None = None) -> int:
    """Parameter count without building the model (default: the default data's character vocabulary)."""
    if vocab_size is None:
        vocab_size = builtin_vocab_size(SPEC.default_data)
    d, m = hparams.hidden_dim, hparams.mlp_dim
    per_block = (4 * d * d + 4 * d) + (2 * d * m + m + d) + 2 * 2 * d  # attention, MLP, two LayerNorms
    positions = hparams.max_sequence_length * d if hparams.position == "learned" else 0
    return vocab_size * d + positions + hparams.num_layers * per_block + 2 * d


_COMPILED = weakref.WeakKeyDictionary()  # model -> its compiled cache functions, by shape


class TransformerCacheDecoder:
    """Generation with a key/value cache: the prompt fills it once, then each token costs one position.

    The step runs the model's own layers (`call_with_cache`) as a traced `tf.function` on static shapes when the
    backend is TensorFlow, compiled with XLA when the model is built from zoo/layers.py (positions are gathered and
    the cache written with dynamic updates, so the index stays a runtime value; keras-hub's slicing
    `PositionEmbedding`, in models saved before, made XLA compile the step again for every position, so those run
    without XLA). Each block keeps its own cache (batch, 2, context, heads, head_dim). Prompts of different lengths
    are decoded in groups of equal length. When the context is full, the cache is rebuilt from the last half of the
    context (a sliding window).
    """

    def __init__(self, model):
        import keras

        from kerasllm.zoo import layers as zoo_layers  # imports Keras, which `kerasllm list` must not load

        self.model = model
        self.embedding = model.get_layer("token_embedding")
        names = {layer.name for layer in model.layers}
        self.positions = model.get_layer("position_embedding") if "position_embedding" in names else None
        self.blocks = [layer for layer in model.layers if layer.name.startswith("block_")]
        self.final_norm = model.get_layer("final_norm")
        self.context = (self.positions.sequence_length if self.positions is not None else self.blocks[0].max_sequence_length)
        first = self.blocks[0]
        self.num_heads = first.num_heads
        self.head_dim = self.embedding.output_dim // self.num_heads
        self._compiled = _COMPILED.setdefault(model, {})  # shared by every decoder of this model
        self.backend = keras.backend.backend()
        self.xla = (all(isinstance(block, zoo_layers.DecoderBlock) for block in self.blocks)
                    and (self.positions is None or isinstance(self.positions, zoo_layers.PositionEmbedding)))

    @classmethod
    def from_model(cls, model):
        try:
            return cls(model)
        except (ValueError, AttributeError):
            return None  # not a transformer-lm layout: the windowed fallback applies

    def _blocks_with_cache(self, token_ids, caches, index):
        """The last block's output (batch, length, hidden) for `token_ids` placed at `index`, and the updated caches."""
        x = self.embedding(token_ids)
        if self.positions is not None:
            x = x + self.positions(x, start_index=index)
        updated = []
        for block, cache in zip(self.blocks, caches):
            x, cache = block(x, self_attention_cache=cache, self_attention_cache_update_index=index)
            updated.append(cache)
        return x, updated

    def call_with_cache(self, token_ids, caches, index, last):
        """Logits (batch, vocab) at position `last` of `token_ids` placed at `index`, and the updated caches."""
        from keras import ops

        x, updated = self._blocks_with_cache(token_ids, caches, index)
        x = self.final_norm(ops.take(x, last, axis=1))  # (batch, hidden): only the position that is sampled from
        return self.embedding(x, reverse=True), updated

    def tf_endpoints(self) -> dict:
        """On-device generation as two TensorFlow functions (a LiteRT file's signatures, `kerasllm.export.litert`), with
        their input signatures: `prefill(tokens (1, length)) -> {logits (1, vocab) after the last token, cache}` and
        `decode(token (1,), position (), cache) -> {logits, cache}`; the cache holds every block's keys and values,
        (blocks, 1, 2, context, heads, head_dim). The prompt and what is decoded stay within the context."""
        import tensorflow as tf

        context, blocks = self.context, len(self.blocks)
        shape = (blocks, 1, 2, context, self.num_heads, self.head_dim)
        dtype = tf.as_dtype(self.model.compute_dtype)

        def prefill(tokens):
            length = tf.shape(tokens)[1]
            padded = tf.pad(tokens, [[0, 0], [0, context - length]])  # causal: what follows the prompt changes nothing before it
            caches = [tf.zeros(shape[1:], dtype) for _ in range(blocks)]
            logits, caches = self.call_with_cache(padded, caches, tf.constant(0), length - 1)
            return {"logits": tf.cast(logits, tf.float32), "cache": tf.stack(caches)}

        def decode(token, position, cache):
            logits, caches = self.call_with_cache(token[:, None], tf.unstack(cache), position, tf.constant(0))
            return {"logits": tf.cast(logits, tf.float32), "cache": tf.stack(caches)}

        return {"prefill": (prefill, [tf.TensorSpec([1, None], tf.int32, name="tokens")]),
                "decode": (decode, [tf.TensorSpec([1], tf.int32, name="token"), tf.TensorSpec([], tf.int32, name="position"),
                                    tf.TensorSpec(shape, dtype, name="cache")])}

    def call_all_with_cache(self, token_ids, caches, index):
        """Logits (batch, length, vocab) at every position of `token_ids` placed at `index`, and the updated caches: a
        target model checking several draft tokens in one pass (`kerasllm.speculative`)."""
        x, updated = self._blocks_with_cache(token_ids, caches, index)
        return self.embedding(self.final_norm(x), reverse=True), updated

    def _function(self, key):
        if key not in self._compiled:
            method = self.call_all_with_cache if key[0] == "all" else self.call_with_cache
            if self.backend == "tensorflow":
                import tensorflow as tf

                self._compiled[key] = tf.function(method, jit_compile=self.xla)
            else:
                self._compiled[key] = method
        return self._compiled[key]

    def _empty_caches(self, batch: int):
        from keras import ops

        shape = (batch, 2, self.context, self.num_heads, self.head_dim)
        return [ops.zeros(shape, dtype=self.model.compute_dtype) for _ in self.blocks]

    @staticmethod
    def _int(value):
        from keras import ops

        return ops.convert_to_tensor(value, "int32")  # a tensor: a Python int would trace (and compile) again per value

    def _seed(self, rows: np.ndarray):
        """Fill fresh caches with `rows` (batch, length); logits after the last token."""
        from keras import ops

        batch, length = rows.shape
        bucket = min(self.context, -(-length // 16) * 16)  # pad to a multiple of 16: few compiled shapes
        padded = np.zeros((batch, bucket), np.int32)
        padded[:, :length] = rows
        logits, caches = self._function(("seed", batch, bucket))(ops.convert_to_tensor(padded), self._empty_caches(batch),
                                                                 self._int(0), self._int(length - 1))
        return np.asarray(ops.convert_to_numpy(logits), np.float64), caches

    def start(self, prompts):
        groups = {}
        for row, prompt in enumerate(prompts):
            ids = np.asarray(prompt, np.int32)[-self.context:]
            groups.setdefault(len(ids), []).append((row, ids))
        logits = np.zeros((len(prompts), self.embedding.input_dim), np.float64)
        state = []
        for length, members in groups.items():
            rows = np.stack([ids for _, ids in members])
            group_logits, caches = self._seed(rows)
            index = [member for member, _ in members]
            logits[index] = group_logits
            state.append({"rows": index, "caches": caches, "position": length, "history": rows})
        return logits, state

    def step(self, state, tokens):
        from keras import ops

        tokens = np.asarray(tokens, np.int32)
        logits = np.zeros((len(tokens), self.embedding.input_dim), np.float64)
        for group in state:
            new = tokens[group["rows"]][:, None]  # (batch, 1)
            group["history"] = np.concatenate([group["history"], new], axis=1)
            if group["position"] >= self.context:  # full: rebuild from the last half of the context
                keep = group["history"][:, -(self.context // 2):]
                group_logits, group["caches"] = self._seed(keep)
                group["position"] = keep.shape[1]
            else:
                step = self._function(("step", len(group["rows"])))
                out, group["caches"] = step(ops.convert_to_tensor(new), group["caches"], self._int(group["position"]),
                                            self._int(0))
                group_logits = np.asarray(ops.convert_to_numpy(out), np.float64)
                group["position"] += 1
            logits[group["rows"]] = group_logits
        return logits, state

    def tf_greedy(self, ids, lengths, steps, penalty):
        """Greedy decoding as TensorFlow ops only, for a SavedModel's `generate` signature: `ids` (batch, context)
        prompts padded on the right, `lengths` (batch,) their lengths, `steps` new tokens (a scalar tensor; every
        prompt + steps fits the context), `penalty` (vocab,) added to the logits (-inf: never picked). The prompts fill
        the caches in one pass; each new token is then one position per row at its own index (`project_rows` and
        `finish_rows`, as `kerasllm serve`'s rows step); padding written past a prompt is overwritten before it is
        attended. Returns the new ids (batch, steps)."""
        import tensorflow as tf

        batch = tf.shape(ids)[0]
        x = self.embedding(ids)
        if self.positions is not None:
            x = x + self.positions(x, start_index=0)
        caches = []
        for block in self.blocks:
            empty = tf.zeros([batch, 2, self.context, self.num_heads, self.head_dim], self.model.compute_dtype)
            x, cache = block(x, self_attention_cache=empty, self_attention_cache_update_index=0)
            caches.append(cache)
        last = tf.gather(x, lengths - 1, axis=1, batch_dims=1)  # (batch, hidden): each prompt's last position
        logits = self.embedding(self.final_norm(last), reverse=True)
        rows = tf.range(batch)

        def step(i, logits, caches, out):
            token = tf.argmax(tf.cast(logits, tf.float32) + penalty, axis=-1, output_type=tf.int32)
            out = out.write(i, token)
            index = lengths + i
            h = self.embedding(token[:, None])
            if self.positions is not None:
                h = h + self.positions(h, start_index=index)
            written = []
            for block, cache in zip(self.blocks, caches):
                query, key, value = block.project_rows(h, index)
                for part, new in ((0, key), (1, value)):
                    where = tf.stack([rows, tf.fill([batch], part), index], axis=1)
                    cache = tf.tensor_scatter_nd_update(cache, where, tf.cast(new[:, 0], cache.dtype))
                h = block.finish_rows(h, query, cache[:, 0], cache[:, 1], index)
                written.append(cache)
            return i + 1, self.embedding(self.final_norm(h[:, 0]), reverse=True), written, out

        _, _, _, out = tf.while_loop(lambda i, *_: i < steps, step,
                                     (tf.constant(0), logits, caches, tf.TensorArray(tf.int32, size=steps)))
        return tf.transpose(out.stack())  # (batch, steps)

    # --- slots: one row per request, each at its own position (continuous batching, `kerasllm serve`) ----------
    @property
    def per_row(self) -> bool:
        """Rows can step at different positions: the model is built from zoo/layers.py (keras-hub's layers, in models
        saved before, take one position for the whole batch)."""
        return self.xla

    def slot_caches(self, slots: int):
        """Empty caches for `slots` rows. On TensorFlow they are variables that the step writes in place (one row's new
        key and value a step, not the whole cache again)."""
        caches = self._empty_caches(slots)
        if self.backend != "tensorflow":
            return caches
        import tensorflow as tf

        return [tf.Variable(cache, trainable=False) for cache in caches]

    def prefill(self, ids: np.ndarray):
        """Read one prompt (its last `context` ids): its next-token logits (vocab,) and its one-row caches."""
        logits, caches = self._seed(np.asarray(ids, np.int32)[None, -self.context:])
        return logits[0], caches

    def put(self, caches, row: int, row_caches):
        """`caches` with row `row` replaced by `row_caches` (a prefill's)."""
        from keras import ops

        if self.backend == "tensorflow":
            for cache, new in zip(caches, row_caches):
                cache.scatter_nd_update([[row]], ops.cast(new, cache.dtype))
            return caches
        return [ops.slice_update(cache, [row, 0, 0, 0, 0], ops.cast(new, cache.dtype)) for cache, new in zip(caches, row_caches)]

    def step_rows(self, caches, tokens: np.ndarray, positions: np.ndarray, busy=None):
        """One new token per row, each written at its own position: logits (rows, vocab) and the caches. Every row is
        computed whether it is `busy` or not (one shape of rows: a row's figures do not depend on how many others are
        busy); a row reads only its own cache. On TensorFlow, attention reads the first `window` positions of the
        caches, the shortest of `windows` that holds every busy row's position."""
        from keras import ops

        tokens, positions = np.asarray(tokens, np.int32), np.asarray(positions, np.int32)
        if self.backend == "tensorflow":
            busy = np.ones(len(tokens), bool) if busy is None else np.asarray(busy, bool)
            furthest = int(positions[busy].max()) + 1 if busy.any() else 1
            window = next(size for size in self.windows if size >= furthest)
            key = ("rows in place", len(tokens), window, tuple(id(cache) for cache in caches))
            if key not in self._compiled:
                self._compiled[key] = self._in_place_step(caches, window)
            out = self._compiled[key](ops.convert_to_tensor(tokens[:, None]), ops.convert_to_tensor(positions))
            return np.asarray(out, np.float64), caches
        step = self._function(("rows", len(tokens)))
        out, caches = step(ops.convert_to_tensor(tokens[:, None]), caches, ops.convert_to_tensor(positions), self._int(0))
        return np.asarray(ops.convert_to_numpy(out), np.float64), caches

    @property
    def windows(self) -> list[int]:
        """The lengths of cache that a rows' step attends over: powers of two from 64, then the whole context. A 16-row
        step of a 4 × 128 model with a 256-token context took 2.3 ms at 64 positions against 5.3 ms at 256, with the
        same logits to the bit (bench/RESULTS.md, serving)."""
        sizes, size = [], 64
        while size < self.context:
            sizes.append(size)
            size *= 2
        return [*sizes, self.context]

    def _in_place_step(self, variables, window: int):
        """The rows' step on TensorFlow, compiled with XLA: each block's new keys and values are scattered into its cache
        variable at (row, position), then attention reads the variable's first `window` positions."""
        import tensorflow as tf

        def step(token_ids, index):
            rows = tf.range(tf.shape(index)[0])
            x = self.embedding(token_ids)
            if self.positions is not None:
                x = x + self.positions(x, start_index=index)
            for block, cache in zip(self.blocks, variables):
                query, key, value = block.project_rows(x, index)
                for part, new in ((0, key), (1, value)):
                    where = tf.stack([rows, tf.fill(tf.shape(rows), part), index], axis=1)  # (rows, 3): row, key/value, position
                    cache.scatter_nd_update(where, tf.cast(new[:, 0], cache.dtype))
                keys_values = cache[:, :, :window]
                x = block.finish_rows(x, query, keys_values[:, 0], keys_values[:, 1], index)
            return self.embedding(self.final_norm(x[:, 0]), reverse=True)

        return tf.function(step, jit_compile=self.xla)

    def select(self, state, rows):
        """Keep (and repeat) rows of a single-group state, for beam search."""
        from keras import ops

        (group,) = state
        rows = np.asarray(rows)
        picked = ops.convert_to_tensor(rows)
        group["caches"] = [ops.take(cache, picked, axis=0) for cache in group["caches"]]
        group["history"] = group["history"][rows]
        group["rows"] = list(range(len(rows)))
        return state


SPEC = ModelSpec(
    name="transformer-lm",
    task="text-generation",
    hparams=TransformerLMConfig,
    build=build,
    default_data="builtin:python-docs",
    description="GPT-style decoder-only Transformer language model (KV-cache generation compiled with XLA)",
    count_params=count_params,
    output="logits",
    defaults={
        "data": {"sequence_length": 64},
        "train": {"epochs": 5, "batch_size": 32, "learning_rate": 1e-3, "warmup_steps": 100, "weight_decay": 0.1},
        "runtime": {"jit_compile": True, "steps_per_execution": 10},
    },
    presets=PRESETS,
    objectives={"chat": "chat"},  # `--task chat`: instruction / chat tuning, the loss on the assistant's replies
    decoder=TransformerCacheDecoder.from_model,
    overfitting_fixes=(
        "more dropout: --set model_args.dropout=0.2",
        "stronger weight decay: --set train.weight_decay=0.2",
        "a smaller model: --preset tiny or --set model_args.num_layers=2",
        "more text (--data with a larger corpus)",
        "early stopping keeps the best epoch already (train.early_stopping_patience)",
    ),
)
