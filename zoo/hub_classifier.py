"""`hub-classifier`: a keras-hub preset's backbone (BERT, GPT-2, …) with a classification head.

Made by `kerasllm finetune PRESET --data …` (a local preset folder, or a `kaggle://` /
`hf://` handle when online): the backbone and its tokenizer come from keras-hub's
`from_preset`; the head is new. The token ids are the model's one input; the backbone's
padding mask and segment ids are computed from them (`zoo.layers.encoder_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasllm import hub
from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: zoo.layers (which imports Keras) is imported inside `build`: `kerasllm --help` and `kerasllm list`
# load this module and must not load them.


@dataclass
class HubClassifierConfig:
    """Hyperparameters of `hub-classifier`."""

    preset: str = field(default="", metadata=doc("The keras-hub preset: a local preset folder or a kaggle:// / hf:// handle."))
    pooling: str = field(default="auto", metadata=doc(
        "What the head sees: `cls` (first position), `mean`, `last` (last real token, causal models) or `auto` "
        "(cls for BERT-style backbones with segment inputs, else last)."))
    dropout: float = field(default=0.1, metadata=doc("Dropout before the head."))

    def validate(self) -> None:
        if not self.preset:
            raise UserError("hub-classifier needs model_args.preset; make it with `kerasllm finetune PRESET_FOLDER --data …`")
        if self.pooling not in ("auto", "cls", "mean", "last"):
            raise UserError("model_args.pooling must be auto, cls, mean or last")
        if not 0 <= self.dropout < 1:
            raise UserError("model_args.dropout must be in [0, 1)")


def build(hparams: HubClassifierConfig, info: DataInfo):
    from kerasllm.zoo.layers import encoder_model  # zoo.layers imports Keras, which `kerasllm list` must not load

    backbone = hub.load_backbone(hparams.preset)
    hub.check_backbone_fits(backbone, info)
    pooling = hparams.pooling
    if pooling == "auto":
        pooling = "cls" if isinstance(backbone.input, dict) and "segment_ids" in backbone.input else "last"
    return encoder_model(backbone, info, pooling, hparams.dropout, name="hub_classifier")


SPEC = ModelSpec(
    name="hub-classifier",
    task="text-classification",
    hparams=HubClassifierConfig,
    build=build,
    default_data="tfds:imdb_reviews",
    description="a keras-hub preset's backbone + a classification head (made by `kerasllm finetune PRESET`)",
    count_params=hub.unknown_parameters,  # depends on the preset; known once it is loaded
    output="logits",
    defaults={
        "data": {"tokenizer": "keras-hub", "sequence_length": 128},
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 5e-5, "warmup_steps": 20, "sample_length": 0,
                  "monitor": "val_accuracy"},
    },
    head_layers=("classifier_head",),
)
