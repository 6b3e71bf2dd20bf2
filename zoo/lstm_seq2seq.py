"""`lstm-seq2seq`: the classic encoder–decoder LSTM with attention (Bahdanau/Luong), the baseline for seq2seq.

Source embedding (padding masked) → bidirectional LSTM (its outputs are the attention memory; its
final states, concatenated, start the decoder) → target embedding → LSTM → dot-product
attention over the encoder outputs → [decoder state; context] → tanh layer → logits.
Decoding recomputes the decoder over the target prefix at each step (no cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: Keras is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and must
# not load them.


@dataclass
class LSTMSeq2SeqConfig:
    """Hyperparameters of `lstm-seq2seq`."""

    embedding_dim: int = field(default=128, metadata=doc("Size of the token embeddings."))
    units: int = field(default=256, metadata=doc("LSTM units per encoder direction (the decoder has twice as many)."))
    dropout: float = field(default=0.2, metadata=doc("Dropout on embeddings and before the output layer."))

    def validate(self) -> None:
        if min(self.embedding_dim, self.units) < 1:
            raise UserError("model_args.embedding_dim and units must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: LSTMSeq2SeqConfig, info: DataInfo):
    """`{"source", "target_in"}` token ids (0 = padding) → target logits (batch, target_len, target_vocab)."""
    import keras

    source = keras.Input(shape=(None,), dtype="int32", name="source")
    target = keras.Input(shape=(None,), dtype="int32", name="target_in")
    x = keras.layers.Embedding(info.vocab_size, hparams.embedding_dim, mask_zero=True, name="source_embedding")(source)
    x = keras.layers.Dropout(hparams.dropout, name="source_dropout")(x)
    encoded, forward_h, forward_c, backward_h, backward_c = keras.layers.Bidirectional(
        keras.layers.LSTM(hparams.units, return_sequences=True, return_state=True), name="encoder")(x)  # (batch, source_len, 2u)
    state_h = keras.layers.Concatenate(name="state_h")([forward_h, backward_h])
    state_c = keras.layers.Concatenate(name="state_c")([forward_c, backward_c])
    y = keras.layers.Embedding(info.num_classes, hparams.embedding_dim, mask_zero=True, name="target_embedding")(target)
    y = keras.layers.Dropout(hparams.dropout, name="target_dropout")(y)
    decoded = keras.layers.LSTM(2 * hparams.units, return_sequences=True, name="decoder")(y, initial_state=[state_h, state_c])
    context = keras.layers.Attention(name="attention")([decoded, encoded])  # (batch, target_len, 2u); padding masked
    z = keras.layers.Concatenate(name="attended")([decoded, context])
    z = keras.layers.Dense(2 * hparams.units, activation="tanh", name="combine")(z)
    z = keras.layers.Dropout(hparams.dropout, name="output_dropout")(z)
    logits = keras.layers.Dense(info.num_classes, name="logits")(z)
    return keras.Model({"source": source, "target_in": target}, logits, name="lstm_seq2seq")


def count_params(hparams: LSTMSeq2SeqConfig, vocab_size: int = 8000, target_vocab_size: int | None = None) -> int:
    target_vocab_size = target_vocab_size or vocab_size
    e, u = hparams.embedding_dim, hparams.units
    encoder = 2 * 4 * (u * (e + u) + u)
    decoder = 4 * (2 * u * (e + 2 * u) + 2 * u)
    combine = 4 * u * 2 * u + 2 * u
    return vocab_size * e + target_vocab_size * e + encoder + decoder + combine + 2 * u * target_vocab_size + target_vocab_size


SPEC = ModelSpec(
    name="lstm-seq2seq",
    task="seq2seq",
    hparams=LSTMSeq2SeqConfig,
    build=build,
    default_data="tfds:ted_hrlr_translate/pt_to_en",
    description="encoder–decoder LSTM with attention, the classic seq2seq baseline",
    count_params=count_params,
    output="logits",
    defaults={
        "data": {"tokenizer": "sentencepiece", "vocab_size": 8000, "sequence_length": 64},
        "seq2seq": {"target_length": 64},
        "train": {"epochs": 10, "batch_size": 64, "learning_rate": 2e-3, "warmup_steps": 100, "sample_length": 1},
    },
    overfitting_fixes=(
        "more dropout: --set model_args.dropout=0.3",
        "fewer units: --set model_args.units=128",
        "more pairs",
    ),
)
