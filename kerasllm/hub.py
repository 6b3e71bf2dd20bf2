"""keras-hub presets as fine-tuning bases: a handle (`kaggle://…`, `hf://…`) or a local preset folder.

Loaded with keras-hub's own `from_preset` (`keras_hub.models.Backbone` and
`keras_hub.tokenizers.Tokenizer`); a download that fails (offline) is one line that
says to pass a local preset folder instead (one written with `save_to_preset`).
`HubTokenizer` gives a keras-hub tokenizer the interface kerasllm's text tasks use and
saves it into the run folder as a preset, so a run never needs the network again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from kerasllm import generation
from kerasllm.core import compat, files, network
from kerasllm.core.errors import UserError
from kerasllm.core.quiet import captured_stderr

# Lazy imports: keras-hub is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and
# must not load them.

SCHEMES = ("kaggle://", "hf://", "modelscope://")
HOSTS = {"kaggle://": "www.kaggle.com", "hf://": "huggingface.co", "modelscope://": "www.modelscope.cn"}


def check_reachable(preset: str, what: str,
                    fix: str = "download it on a machine with a network (`kerasllm download`) and pass the local preset folder") -> None:
    """A handle's host is asked first, in about two seconds: offline, the libraries retried for half a minute and then
    blamed a missing config.json."""
    host = next((host for scheme, host in HOSTS.items() if preset.startswith(scheme)), None)
    if host is not None:
        network.require(host, f"load the {what} of preset {preset}", fix)
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
    handles = compat.hub_preset_handles()  # without importing keras-hub (and TensorFlow)
    if handles:
        return handles.get(name)
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
        with captured_stderr():  # a SentencePiece model logs "normalizer.cc(51) LOG(INFO) …" on fd 2 as it loads
            return HubTokenizer(keras_hub.tokenizers.Tokenizer.from_preset(preset), preset)
    except Exception as error:
        raise _failed("tokenizer", preset, error) from error


def resolve(name: str) -> str | None:
    """The preset `name` stands for (a bare KerasHub name becomes its `kaggle://` handle), or None when it is none."""
    preset = named_handle(name) or name
    return preset if is_preset(preset) else None


def load_causal_lm(preset: str, **kwargs):
    """A keras-hub causal LM (GPT-2, Gemma, Llama …) with its preprocessor and tokenizer, from a preset that has one
    (`preprocessor=None`: the model alone)."""
    check_reachable(preset, "model")
    import keras_hub

    try:
        with captured_stderr():  # its tokenizer's SentencePiece model logs on fd 2 as it loads
            return keras_hub.models.CausalLM.from_preset(preset, **kwargs)
    except Exception as error:
        first = (str(error).splitlines() or [type(error).__name__])[0][:200]
        if "CausalLM" in first or "class" in first.lower():
            raise UserError(f"preset {preset} is not a causal language model ({first}); generate takes a causal-LM preset "
                            "such as gpt2_base_en or a folder one was saved to") from error
        raise _failed("model", preset, error) from error


def check_backbone_fits(backbone, info) -> None:
    """A preset's backbone holds the tokenizer's ids and the data's sequence length (hub-classifier, hub-causal-lm)."""
    vocabulary = getattr(backbone, "vocabulary_size", None)
    if vocabulary and vocabulary < info.vocab_size:
        raise UserError(f"the preset's tokenizer has {info.vocab_size} tokens but its backbone only {vocabulary}; the preset is inconsistent")
    longest = getattr(backbone, "max_sequence_length", None)
    if longest and info.sequence_length > longest:
        raise UserError(f"data.sequence_length={info.sequence_length} exceeds the preset's max_sequence_length={longest}; lower it")


def unknown_parameters(hparams) -> int:
    """A preset model's parameter count before it is loaded: unknown (0; `list` shows none)."""
    return 0


DOWNLOAD_ELSEWHERE = "run `kerasllm download` on a machine with a network and copy the folder it writes here"


def download(preset: str, out: Path) -> list[str]:
    """Save the preset's backbone and tokenizer into `out`, a local preset folder that every command takes in its place
    (`CausalLM.from_preset` builds a causal LM's head and preprocessor from them); returns what was saved."""
    check_reachable(preset, "files", DOWNLOAD_ELSEWHERE)
    import keras_hub

    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset)
    except Exception as error:
        raise _failed("files", preset, error) from error
    backbone.save_to_preset(str(out))
    tokenizer.save_to_preset(str(out))
    return [type(backbone).__name__.removesuffix("Backbone"), f"{backbone.count_params():,} parameters",
            f"tokenizer with {tokenizer.vocabulary_size():,} tokens"]


class CausalLMDecoder:
    """`generation.Decoder` for a keras-hub causal LM, with its key/value cache: each row keeps its own cache and position
    (prompts of different lengths), one `call_with_cache` per row and token, traced once on TensorFlow."""

    def __init__(self, causal_lm, length: int):
        import keras

        self.lm, self.length = causal_lm, length
        self.call = causal_lm.call_with_cache
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self.call = tf.function(causal_lm.call_with_cache, reduce_retracing=True)

    def _next(self, token: int, cache, index: int):
        import keras

        logits, _, cache = self.call(keras.ops.convert_to_tensor([[token]], "int32"), cache, keras.ops.convert_to_tensor(index, "int32"))
        return np.asarray(keras.ops.convert_to_numpy(logits), np.float64)[0, -1], (cache, index + 1)

    def start(self, prompts):
        logits, state = [], []
        for prompt in prompts:
            ids = np.zeros((1, self.length), np.int32)
            ids[0, :len(prompt)] = prompt
            row_logits, row = self._next(int(prompt[-1]), compat.hub_build_cache(self.lm, ids), len(prompt) - 1)
            logits.append(row_logits)
            state.append(row)
        return np.stack(logits), state

    def step(self, state, tokens):
        rows = [self._next(int(token), cache, index) if index < self.length else self._full()
                for token, (cache, index) in zip(tokens, state)]
        return np.stack([row_logits for row_logits, _ in rows]), [row for _, row in rows]

    def _full(self):
        raise UserError(f"the text reached the model's longest sequence ({self.length} tokens); lower --max-length")

    def select(self, state, rows):
        return [state[int(row)] for row in rows]

    # --- slots (`kerasllm serve`): each row keeps its own cache and position, and steps alone --------------------
    per_row = True  # rows may stand at different positions: each is its own call (keras-hub's cache takes one index)
    prefill_has_one_shape = True  # a prompt is read into a cache of the full length, whatever its own length

    @property
    def context(self) -> int:
        return self.length

    def slot_caches(self, slots: int) -> list:
        return [None] * slots

    def prefill(self, ids):
        """Read one prompt (its last `length` ids): its next-token logits (vocab,) and its row's (cache, position)."""
        logits, state = self.start([np.asarray(ids, np.int32)[-self.length:]])
        return logits[0], state[0]

    def put(self, caches: list, row: int, row_caches) -> list:
        caches[row] = row_caches
        return caches

    def step_rows(self, caches: list, tokens, positions, busy=None):
        """One new token for each busy row (all rows that ever held a request when `busy` is None), each at its own
        position: logits (rows, vocab), zeros for idle rows, and the caches."""
        busy = [cache is not None for cache in caches] if busy is None else busy
        logits = None
        for row, (token, position) in enumerate(zip(tokens, positions)):
            if not busy[row] or caches[row] is None:
                continue
            row_logits, caches[row] = self._next(int(token), caches[row][0], int(position))
            logits = np.zeros((len(tokens), row_logits.shape[-1])) if logits is None else logits
            logits[row] = row_logits
        return (np.zeros((len(tokens), 1)) if logits is None else logits), caches


class PresetLM:
    """A keras-hub causal-LM preset behind `kerasllm generate`: its tokenizer, kerasllm's samplers and beam search."""

    def __init__(self, preset: str):
        self.preset, self.lm = preset, load_causal_lm(preset)
        self.tokenizer = HubTokenizer(self.lm.preprocessor.tokenizer, preset)
        self.context = getattr(self.lm.backbone, "max_sequence_length", None)
        self.adds_start = bool(getattr(self.lm.preprocessor, "add_start_token", False))

    def encode(self, text: str) -> np.ndarray:
        """The prompt's ids, after the start token when the preset's preprocessor adds one (as its own `generate` does)."""
        ids = self.tokenizer.encode(text)
        start = self.tokenizer.special_id("bos")
        return np.concatenate([[start], ids]).astype(np.int32) if self.adds_start and start is not None else ids

    def generate(self, prompts: list[str], *, max_length: int, beam: int = 0, on_text=None, **sampling) -> list[str]:
        generation.check_beam_fits(beam, self.tokenizer.vocab_size, sampling.get("top_k", 0))
        encoded = [self.encode(text) for text in prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise UserError(f"preset {self.preset}'s tokenizer adds no start token, so a prompt cannot be empty; pass --prompt TEXT")
        longest = max(len(ids) for ids in encoded) + max_length
        if self.context and longest > self.context:
            raise UserError(f"a prompt and --max-length {max_length} need {longest} tokens, more than the preset's context of "
                            f"{self.context}; lower --max-length or shorten the prompt")
        decoder = CausalLMDecoder(self.lm, min(longest, self.context or longest))
        return generation.generate_ids(None, self.tokenizer, encoded, max_length, decoder=decoder, on_text=on_text,
                                       beam_width=beam, **{"allow_eos": True, **sampling})


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
        self.end_id: int | None = None  # the token that ends generated text, where a chat template's differs from [EOS]
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

    @property
    def eos_id(self) -> int | None:
        return self.end_id if self.end_id is not None else self.special_tokens.get("eos")

    def token_id(self, text: str) -> int | None:
        """The id of a token spelled `text` in the vocabulary (a special token such as `<|eot_id|>`), else None."""
        try:
            found = self.tokenizer.token_to_id(text)
        except (KeyError, ValueError):
            return None
        found = int(found) if found is not None else None
        return found if found is not None and found >= 0 and self.tokenizer.id_to_token(found) == text else None

    def encode_literally(self, text: str, specials=()) -> np.ndarray:
        """`text` as text: where it spells a special token (the tokenizer's or one of `specials`), that spelling is
        encoded as characters, never as the token (keras-hub's tokenizers turn `<|eot_id|>` typed by a user into the
        control token itself)."""
        known = set(specials) | {str(t) for t in (getattr(self.tokenizer, "special_tokens", None) or [])}
        known |= {str(t) for t in (getattr(self.tokenizer, "unsplittable_tokens", None) or [])}
        known = sorted((t for t in known if len(t) > 1 and t in text), key=len, reverse=True)
        if not known:
            return self.encode(text)
        parts = []
        for piece in re.split("(" + "|".join(map(re.escape, known)) + ")", text):
            if piece in known:  # its first character apart: no longer the token's spelling
                parts += [self.encode(piece[:1]), self.encode_literally(piece[1:], specials)]
            elif piece:
                parts.append(self.encode(piece))
        return np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)

    def token_text(self, token_id: int) -> str:
        """How the vocabulary spells token `token_id` (special tokens included)."""
        return str(self.tokenizer.id_to_token(int(token_id)))

    def never_generated(self) -> list[int]:
        """Ids a sampler must not produce: every special token but the end (GPT-2's start and padding are its end too)."""
        return sorted(set(self.special_tokens.values()) - {self.eos_id})

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
