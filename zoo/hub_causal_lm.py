"""`hub-causal-lm`: a keras-hub causal-LM preset (GPT-2, Gemma, Llama 3, …) tuned for chat.

Made by `kerasllm finetune PRESET --task chat --data conv.jsonl` (a local preset folder, or a `kaggle://` / `hf://`
handle when online): keras-hub's own `CausalLM.from_preset` builds the model (backbone and language-model head, no
preprocessor); the token ids are its one input (every position attends: rows are padded at the end, and a causal
model's real tokens never see the padding). The chat template is the preset's family's (Gemma, Llama 3, ChatML) or a
plain `User:` / `Assistant:` one (`kerasllm.data.chat_templates.PresetTemplate`). Replies and `kerasllm serve` decode with the
preset's own key/value cache (`kerasllm.hub.CausalLMDecoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kerasllm import hub
from kerasllm.core.config import doc
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo

# Lazy imports: Keras and keras-hub are imported inside functions: `kerasllm --help` and `kerasllm list` load this
# module and must not load them.

DECODE_LENGTH = 2048  # the longest key/value cache a reply or a served request decodes with (a preset's context, at most)


@dataclass
class HubCausalLMConfig:
    """Hyperparameters of `hub-causal-lm`."""

    preset: str = field(default="", metadata=doc("The keras-hub preset: a local preset folder or a kaggle:// / hf:// handle."))

    def validate(self) -> None:
        if not self.preset:
            raise UserError("hub-causal-lm needs model_args.preset; make it with `kerasllm finetune PRESET_FOLDER --task chat --data …`")


def build(hparams: HubCausalLMConfig, info: DataInfo):
    import keras

    from kerasllm.zoo.layers import PaddingMask  # zoo.layers imports Keras, which `kerasllm list` must not load

    causal_lm = hub.load_causal_lm(hparams.preset, preprocessor=None)
    hub.check_backbone_fits(causal_lm.backbone, info)
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")  # (batch, time)
    logits = causal_lm({"token_ids": tokens, "padding_mask": PaddingMask(-1, name="padding_mask")(tokens)})  # all real
    return keras.Model(tokens, logits, name="hub_causal_lm")


def causal_lm_of(model):
    """The keras-hub `CausalLM` inside a hub-causal-lm model, or None."""
    import keras_hub

    return next((layer for layer in model.layers if isinstance(layer, keras_hub.models.CausalLM)), None)


def decoder(model):
    """The preset's cached decoder for a hub-causal-lm model (None for any other model: the windowed fallback)."""
    causal_lm = causal_lm_of(model)
    if causal_lm is None:
        return None
    longest = getattr(causal_lm.backbone, "max_sequence_length", None) or DECODE_LENGTH
    return hub.CausalLMDecoder(causal_lm, min(longest, DECODE_LENGTH))


SPEC = ModelSpec(
    name="hub-causal-lm",
    task="text-generation",
    hparams=HubCausalLMConfig,
    build=build,
    default_data="builtin:chat-skills",
    description="a keras-hub causal-LM preset tuned for chat (made by `kerasllm finetune PRESET --task chat`)",
    count_params=hub.unknown_parameters,  # depends on the preset; known once it is loaded
    output="logits",
    decoder=decoder,
    objectives={"chat": "chat"},
    defaults={
        "data": {"tokenizer": "keras-hub", "sequence_length": 256},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 5e-5, "warmup_steps": 20, "sample_length": 0},
    },
)
