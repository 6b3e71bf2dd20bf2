"""keras-hub presets as fine-tuning bases: a handle (`kaggle://…`, `hf://…`) or a local preset folder.

Loaded with keras-hub's own `from_preset` (`keras_hub.models.Backbone` and
`keras_hub.tokenizers.Tokenizer`); a download that fails (offline) is one line that
says to pass a local preset folder instead (one written with `save_to_preset`).
`HubTokenizer` gives a keras-hub tokenizer the interface kerasllm's text tasks use and
saves it into the run folder as a preset, so a run never needs the network again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerasllm import compat, files, network
from kerasllm.errors import UserError

# Lazy imports: keras-hub is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and
# must not load them.

SCHEMES = ("kaggle://", "hf://", "modelscope://")
HOSTS = {"kaggle://": "www.kaggle.com", "hf://": "huggingface.co", "modelscope://": "www.modelscope.cn"}


def check_reachable(preset: str, what: str) -> None:
    """A handle's host is asked first, in about two seconds: offline, the libraries retried for half a minute and then
    blamed a missing config.json."""
    host = next((host for scheme, host in HOSTS.items() if preset.startswith(scheme)), None)
    if host is not None:
        network.require(host, f"load the {what} of preset {preset}",
                        "download it on a machine with a network (keras-hub `save_to_preset`) and pass the local preset folder")
TOKENIZER_PRESET_DIR = files.HUB_TOKENIZER_DIR


def is_preset(base: str) -> bool:
    """A preset handle, or a folder keras-hub's `save_to_preset` wrote (config.json + metadata.json)."""
    if base.startswith(SCHEMES):
        return True
    path = Path(base).expanduser()
    return path.is_dir() and (path / "config.json").is_file() and (path / "metadata.json").is_file()


def named_handle(name: str) -> str | None:
    """The `kaggle://` handle of a keras-hub preset given by its bare name (`gpt2_base_en`, as KerasHub's
    `from_preset` takes it), from the preset list keras-hub ships; None for any other text."""
    if not name or "/" in name or Path(name).expanduser().exists() or not name.replace("_", "").replace(".", "").isalnum():
        return None
    import keras_hub

    known = {**keras_hub.models.Backbone.presets, **keras_hub.tokenizers.Tokenizer.presets}
    found = known.get(name)
    return found.get("kaggle_handle") if isinstance(found, dict) else None


def _failed(what: str, preset: str, error: Exception) -> UserError:
    first = (str(error).splitlines() or [type(error).__name__])[0][:200]
    hint = ("offline, download it elsewhere and pass the local preset folder (keras-hub `save_to_preset`)"
            if preset.startswith(SCHEMES) else "check that the folder is a complete keras-hub preset")
    return UserError(f"cannot load the {what} of preset {preset}: {first}; {hint}")


def load_backbone(preset: str):
    check_reachable(preset, "backbone")
    import keras_hub

    try:
        return keras_hub.models.Backbone.from_preset(preset)
    except Exception as error:  # network, missing files, unknown class
        raise _failed("backbone", preset, error) from error


def load_tokenizer(preset: str) -> "HubTokenizer":
    check_reachable(preset, "tokenizer")
    import keras_hub

    try:
        return HubTokenizer(keras_hub.tokenizers.Tokenizer.from_preset(preset), preset)
    except Exception as error:
        raise _failed("tokenizer", preset, error) from error


def preset_sha256(preset: str) -> str:
    """sha256 of a local preset's weights (lineage); empty for a remote handle."""
    weights = Path(preset) / "model.weights.h5"
    return files.file_sha256(weights) if weights.is_file() else ""


class HubTokenizer:
    """A keras-hub tokenizer behind kerasllm's tokenizer interface (encode, decode, special ids, save/load)."""

    kind = "keras-hub"
    tokens_stand_alone = False
    whitespace_ids = np.zeros(0, np.int32)
    NAMES = {"pad": "pad_token_id", "unk": "unk_token_id", "cls": "cls_token_id", "sep": "sep_token_id",
             "mask": "mask_token_id", "bos": "start_token_id", "eos": "end_token_id"}

    def __init__(self, tokenizer, preset: str):
        self.tokenizer, self.preset = tokenizer, preset
        self.special_tokens = {name: int(getattr(tokenizer, attribute)) for name, attribute in self.NAMES.items()
                               if getattr(tokenizer, attribute, None) is not None}
        oov = getattr(tokenizer, "oov_token", None)
        if "unk" not in self.special_tokens and oov is not None:
            self.special_tokens["unk"] = int(tokenizer.token_to_id(oov))
        self.special_tokens.setdefault("pad", self.special_tokens.get("eos", 0))

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocabulary_size())

    @property
    def unk_id(self) -> int | None:
        return self.special_tokens.get("unk")

    def special_id(self, name: str) -> int | None:
        return self.special_tokens.get(name)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str], chunk: int = 2048) -> list[np.ndarray]:
        out = []
        for start in range(0, len(texts), chunk):
            ids = self.tokenizer(texts[start:start + chunk])
            rows = ids.numpy() if hasattr(ids, "numpy") else ids
            out += [np.asarray(row, np.int32) for row in rows]
        return out

    def decode(self, ids) -> str:
        text = self.tokenizer.detokenize([int(i) for i in ids])
        return text.numpy().decode("utf-8") if hasattr(text, "numpy") else str(text)

    def token(self, token_id: int) -> str:
        return self.decode([token_id])

    def save(self, folder: Path) -> Path:
        preset = Path(folder) / TOKENIZER_PRESET_DIR
        preset.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_to_preset(str(preset))
        for name in compat.PRESET_CONFIG_FILES:  # from_preset finds the tokenizer class through them
            (preset / name).write_bytes(Path(compat.preset_file(self.preset, name)).read_bytes())
        path = Path(folder) / files.TOKENIZER_FILE
        files.write_text_atomic(path, json.dumps({"format_version": 2, "kind": self.kind, "preset": TOKENIZER_PRESET_DIR}))
        return path

    @classmethod
    def load(cls, folder: Path, saved: dict) -> "HubTokenizer":
        return load_tokenizer(str(Path(folder) / saved.get("preset", TOKENIZER_PRESET_DIR)))
