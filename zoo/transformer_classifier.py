"""`transformer-classifier`: a BERT-style encoder with a classification head (or a masked-LM head for pretraining).

Token + position + segment embeddings → `num_layers` bidirectional self-attention blocks
(keras-hub's `BertBackbone`, built from `TransformerEncoder`, the same keras-hub layer
family as `transformer-lm`'s blocks) → the [CLS] position (or a mean over real tokens) →
dropout → logits. Segment ids and the padding mask are computed from the token ids
(`zoo.layers.SegmentIds`, `PaddingMask`), so the model takes one (batch, time) input.

`--set train.objective=mlm` (or `kerasllm train transformer-classifier --objective mlm`)
builds the same backbone with a masked-LM head and pretrains it on unlabelled text; a
pretrained run is a base for `kerasllm finetune`, which keeps the backbone and adds a
fresh classification head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: keras-hub (and zoo.layers, which imports Keras) is imported inside functions: `kerasllm --help` and
# `kerasllm list` load this module and must not load them.

PRESETS = {
    "tiny": {"num_layers": 2, "num_heads": 2, "hidden_dim": 128, "intermediate_dim": 512, "max_sequence_length": 128},
    "small": {"num_layers": 4, "num_heads": 4, "hidden_dim": 256, "intermediate_dim": 1024, "max_sequence_length": 128},
    # BERT-base's shape, meant for a GPU or TPU
    "base": {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "intermediate_dim": 3072, "max_sequence_length": 512,
             "data.sequence_length": 512, "data.vocab_size": 30522},
}


@dataclass
class TransformerClassifierConfig:
    """Hyperparameters of `transformer-classifier`."""

    num_layers: int = field(default=2, metadata=doc("Encoder blocks."))
    num_heads: int = field(default=2, metadata=doc("Attention heads per block."))
    hidden_dim: int = field(default=128, metadata=doc("Width of the hidden states (embedding size)."))
    intermediate_dim: int = field(default=512, metadata=doc("Width of each block's feed-forward layer."))
    max_sequence_length: int = field(default=128, metadata=doc("The most tokens per input (position embeddings)."))
    dropout: float = field(default=0.1, metadata=doc("Dropout in the encoder and before the head."))
    pooling: str = field(default="cls", metadata=doc("What the head sees: `cls` (the first position) or `mean` (over real tokens)."))

    def validate(self) -> None:
        if min(self.num_layers, self.num_heads, self.hidden_dim, self.intermediate_dim, self.max_sequence_length) < 1:
            raise UserError("model_args.num_layers, num_heads, hidden_dim, intermediate_dim and max_sequence_length must be at least 1")
        if self.hidden_dim % self.num_heads:
            raise UserError(f"model_args.hidden_dim={self.hidden_dim} must be a multiple of num_heads={self.num_heads}")
        if self.pooling not in ("cls", "mean"):
            raise UserError("model_args.pooling must be cls or mean")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: TransformerClassifierConfig, info: DataInfo):
    """A Functional model: token ids (batch, time) → class logits (batch, classes); masked-LM logits for objective mlm.

    Example:
        >>> model = build(TransformerClassifierConfig(num_layers=1, hidden_dim=16), DataInfo(vocab_size=50, num_classes=2, sep_id=5))
        >>> model(np.zeros((2, 10), "int32")).shape
        (2, 2)
    """
    import keras_hub

    from kerasllm.zoo.layers import encoder_model  # zoo.layers imports Keras, which `kerasllm list` must not load

    if info.sequence_length > hparams.max_sequence_length:
        raise UserError(f"data.sequence_length={info.sequence_length} exceeds model_args.max_sequence_length="
                        f"{hparams.max_sequence_length}; lower one or raise the other")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=info.vocab_size, num_layers=hparams.num_layers, num_heads=hparams.num_heads,
        hidden_dim=hparams.hidden_dim, intermediate_dim=hparams.intermediate_dim, dropout=hparams.dropout,
        max_sequence_length=hparams.max_sequence_length, num_segments=2, name="backbone")
    return encoder_model(backbone, info, hparams.pooling, hparams.dropout, name="transformer_classifier")


def count_params(hparams: TransformerClassifierConfig, vocab_size: int = 8000, num_classes: int = 2) -> int:
    """Parameters of the classifier, without building it (default: the default vocabulary and two classes)."""
    d, m = hparams.hidden_dim, hparams.intermediate_dim
    embeddings = vocab_size * d + hparams.max_sequence_length * d + 2 * d + 2 * d  # tokens, positions, segments, LayerNorm
    per_block = 4 * (d * d + d) + 2 * d + (d * m + m) + (m * d + d) + 2 * d
    pooled_dense = d * d + d  # BertBackbone's pooled output (unused by the cls/mean head, kept for preset parity)
    return embeddings + hparams.num_layers * per_block + pooled_dense + d * num_classes + num_classes


SPEC = ModelSpec(
    name="transformer-classifier",
    task="text-classification",
    hparams=TransformerClassifierConfig,
    build=build,
    default_data="tfds:imdb_reviews",
    description="BERT-style Transformer encoder for text classification; masked-LM pretraining with --objective mlm",
    count_params=count_params,
    output="logits",
    objectives={"mlm": "masked-lm"},
    defaults={
        "data": {"tokenizer": "wordpiece", "vocab_size": 8000, "sequence_length": 128},
        "train": {"epochs": 5, "batch_size": 32, "learning_rate": 5e-4, "warmup_steps": 100, "weight_decay": 0.01,
                  "sample_length": 0,
                  "monitor": "val_accuracy"},
        "runtime": {"jit_compile": True},
    },
    presets=PRESETS,
    head_layers=("classifier_head",),
    overfitting_fixes=(
        "pretrain with masked-LM on unlabelled text, then fine-tune: kerasllm train transformer-classifier --objective mlm",
        "more dropout: --set model_args.dropout=0.2",
        "a smaller model: --preset tiny or --set model_args.num_layers=1",
        "more labelled data",
    ),
)
