"""`lstm-classifier`: the tutorial's sentiment model, Embedding → bidirectional LSTM → Dense.

Padding is masked (`mask_zero`), so the LSTM reads only the real tokens of each row.
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
class LSTMClassifierConfig:
    """Hyperparameters of `lstm-classifier`."""

    embedding_dim: int = field(default=128, metadata=doc("Size of the token embeddings."))
    units: int = field(default=128, metadata=doc("LSTM units per direction."))
    bidirectional: bool = field(default=True, metadata=doc("Read the text in both directions."))
    dropout: float = field(default=0.5, metadata=doc("Dropout on the embeddings and before the output layer."))

    def validate(self) -> None:
        if min(self.embedding_dim, self.units) < 1:
            raise UserError("model_args.embedding_dim and units must be at least 1")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: LSTMClassifierConfig, info: DataInfo):
    """Token ids (batch, time), 0 = padding → class logits (batch, classes).

    Example:
        >>> build(LSTMClassifierConfig(units=8), DataInfo(vocab_size=50, num_classes=3))(np.ones((2, 7), "int32")).shape
        (2, 3)
    """
    import keras

    if info.pad_id != 0:
        raise UserError("lstm-classifier masks padding with id 0; use a kerasllm tokenizer (its [PAD] is 0)")
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(info.vocab_size, hparams.embedding_dim, mask_zero=True, name="token_embedding")(tokens)
    x = keras.layers.SpatialDropout1D(hparams.dropout, name="embedding_dropout")(x)  # (batch, time, embedding)
    lstm = keras.layers.LSTM(hparams.units, name="lstm")
    x = keras.layers.Bidirectional(lstm, name="encoder")(x) if hparams.bidirectional else lstm(x)  # (batch, units × directions)
    x = keras.layers.Dropout(hparams.dropout, name="head_dropout")(x)
    logits = keras.layers.Dense(info.num_classes, name="classifier_head")(x)
    return keras.Model(tokens, logits, name="lstm_classifier")


def count_params(hparams: LSTMClassifierConfig, vocab_size: int = 20000, num_classes: int = 2) -> int:
    e, u = hparams.embedding_dim, hparams.units
    directions = 2 if hparams.bidirectional else 1
    lstm = 4 * (u * (e + u) + u)
    return vocab_size * e + directions * lstm + directions * u * num_classes + num_classes


SPEC = ModelSpec(
    name="lstm-classifier",
    task="text-classification",
    hparams=LSTMClassifierConfig,
    build=build,
    default_data="tfds:imdb_reviews",
    description="Embedding → bidirectional LSTM → Dense text classifier (sentiment)",
    count_params=count_params,
    output="logits",
    defaults={
        "data": {"tokenizer": "word", "vocab_size": 20000, "sequence_length": 128},
        "train": {"epochs": 6, "batch_size": 32, "learning_rate": 2e-3, "warmup_steps": 20, "sample_length": 0,
                  "monitor": "val_accuracy"},
    },
    head_layers=("classifier_head",),
    overfitting_fixes=(
        "more dropout: --set model_args.dropout=0.6",
        "fewer units: --set model_args.units=64",
        "a smaller vocabulary: --set data.vocab_size=8000",
        "more labelled data",
    ),
)
