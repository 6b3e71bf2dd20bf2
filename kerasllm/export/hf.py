"""A run as a Hugging Face folder: `transformers` loads it with `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoTokenizer.from_pretrained(folder)`, and nothing of kerasllm.

transformer-lm's blocks are GPT-2's (pre-LayerNorm, one fused query/key/value projection, exact GELU, the output tied
to the token embedding), so a run with learned positions is written as `GPT2LMHeadModel` weights (GPT-2's `Conv1D`
stores a kernel as (in, out), as Keras' Dense does) and a run with rotary positions as `GPTNeoXForCausalLM` with
sequential residuals (`use_parallel_residual: false`) and rotary positions on every feature (`rotary_pct: 1.0`; NeoX
rotates the two halves of each head, as `zoo.layers.RotaryPositions` does; its fused projection is ordered per head,
so the query/key/value columns are regrouped). Weights go to `model.safetensors`, the settings to `config.json` and
`generation_config.json` (eos and pad from the run's special tokens; the other specials suppressed, as kerasllm's
sampler never picks them). A chat run's template goes into `tokenizer_config.json` as a Jinja `chat_template` that
renders its `[SYSTEM]`/`[USER]`/`[ASSISTANT] … [EOS]` rows, so `apply_chat_template` gives `kerasllm chat`'s ids.

The tokenizer becomes a `tokenizer.json` of the `tokenizers` library with every token at its kerasllm id: a `char`
run's vocabulary split one code point at a time, a `word` run's by the same pattern kerasllm splits with (words,
punctuation runs, white-space runs), a `wordpiece` run's as WordPiece (longest match first, `##` continuations) over
kerasllm's pieces; all joined back without spaces; a `sentencepiece` run's unigram model as `tokenizers`' Unigram with
its pieces, scores and byte fallback (the dummy prefix and "▁" as SentencePiece writes them).

A tuned keras-hub preset (a `hub-causal-lm` run) goes out through keras-hub's own `export_to_transformers` with the
run's tokenizer, for the families keras-hub exports; its generation_config.json then ends a reply where `kerasllm chat`
does.

`export` writes the folder beside, then checks it in `transformers` itself before renaming it into place: the logits
on pieces of the run's validation text (max |diff| within the tolerance, float32), the greedy continuation of each
piece (the same tokens as `kerasllm generate --temperature 0`), and the tokenizer (the same ids, and the same text
back). Needs `pip install "kerasllm[hf]"` (safetensors, tokenizers, transformers and torch).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.export.measure import human_size, size_of
from kerasllm.tokenizers import PIECE_SPLIT, REPLACEMENT, WORD_SPLIT

# Lazy imports: Keras, TensorFlow, safetensors, tokenizers, transformers and torch are imported inside functions.

PACKAGES = ("safetensors", "tokenizers", "transformers", "torch")
INSTALL = 'pip install "kerasllm[hf]"'
TOKENIZER_KINDS = ("char", "word", "wordpiece", "sentencepiece")
TOLERANCE = 1e-4
SAMPLES = 4  # pieces of the validation text the folder is checked on
PROMPT_TOKENS = 16
NEW_TOKENS = 32
MARKER = "kerasllm_export.json"  # inside the folder: which run it came from (an earlier export may be replaced)


@dataclass
class HFResult:
    path: Path
    architecture: str
    size_bytes: int
    max_abs_diff: float
    samples: int
    greedy_tokens: int
    checked_on: str = "of the validation text"  # what the samples were

    def line(self) -> str:
        checked = f"{count(self.samples, 'piece' if 'validation' in self.checked_on else 'conversation')} {self.checked_on}"
        return (f"wrote {self.path} (Hugging Face {self.architecture}, {human_size(self.size_bytes)}); in transformers, on "
                f"{checked}: max |logit diff| {self.max_abs_diff:.3g} (tolerance {TOLERANCE:g}), the same "
                f"{self.greedy_tokens} greedy tokens as `kerasllm generate --temperature 0`, the same token ids and text "
                "from its tokenizer")


def check_request(run, model) -> None:
    """What `--format hf` takes, refused in one line before anything is written."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--format hf needs {', '.join(missing)}, which are not installed; {INSTALL}")
    if run is None:
        raise UserError("--format hf exports a run folder (its tokenizer goes with the model); pass the run folder")
    if run.spec.name not in ("transformer-lm", "hub-causal-lm"):
        raise UserError(f"--format hf takes transformer-lm and hub-causal-lm runs, and this is a {run.spec.name} run; "
                        "--format savedmodel, tflite or onnx take every model")
    if run.spec.name == "hub-causal-lm":
        return check_family(model)
    kind = getattr(run.artifacts.get("tokenizer"), "kind", "")
    if kind not in TOKENIZER_KINDS:
        raise UserError(f"--format hf writes {', '.join(TOKENIZER_KINDS)} tokenizers, and this run's is {kind}; "
                        "train with --set data.tokenizer=char or word")
    check_weights(run, model, "transformers", "Hugging Face")


def check_weights(run, model, consumer: str, target: str) -> None:
    """A transformer-lm run's weights, as the Hugging Face and GGUF writers read them: float kernels of kerasllm's own
    blocks (`zoo.layers.DecoderBlock`, with its fused `qkv`)."""
    from kerasllm.export.saving import quantized_layers

    if quantized_layers(model):
        raise UserError(f"this run is a quantized copy, whose int8/int4 kernels {consumer} cannot load as they are; "
                        "export the run it was compressed from")
    if not all(hasattr(model.get_layer(f"block_{i}"), "qkv") for i in range(run.config.model_args.num_layers)):
        raise UserError("this run was saved with keras-hub's Transformer layers (kerasllm before 2026-11); train it again "
                        f"to export it to {target}")


def check_family(model) -> None:
    """A tuned keras-hub preset goes out through keras-hub's own exporter, which knows some families only."""
    from keras_hub.src.utils.transformers.export.hf_exporter import MODEL_CONFIGS

    from kerasllm.zoo.hub_causal_lm import causal_lm_of

    family = type(causal_lm_of(model).backbone).__name__
    if family not in MODEL_CONFIGS:
        known = ", ".join(sorted(name.removesuffix("Backbone") for name in MODEL_CONFIGS))
        raise UserError(f"keras-hub exports {known} presets to Hugging Face, and this run's is "
                        f"{family.removesuffix('Backbone')}; --format savedmodel or tflite take it")


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / files.EXPORT_DIR / "hf"


def check_out(out: Path, overwrite: bool) -> None:
    """A new folder, or (with --overwrite) an earlier Hugging Face export of kerasllm's."""
    check_replacing(Path(out), overwrite, lambda found: (found / MARKER).is_file(), "Hugging Face")
    if Path(out).exists():
        files.check_replaceable(out)


def check_replacing(out: Path, overwrite: bool, ours, what: str) -> None:
    """`out` outside any run folder: new, or (with --overwrite) an earlier export of kerasllm's (`ours(out)`)."""
    if files.is_run_dir(out.parent) or files.is_run_dir(out):
        raise UserError(f"--out {out} would write into a run folder, whose files are the run's own; export into "
                        f"{out.parent / files.EXPORT_DIR}/ (the default) or outside any run")
    if not out.exists():
        return
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if not ours(out):
        raise UserError(f"--overwrite replaces only an earlier {what} export of kerasllm's, and {out} is not one; choose "
                        "another --out")


# --- the model -------------------------------------------------------------------------------

def _array(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def block_weights(model, hparams, prefix: str, names: tuple, transpose: bool) -> dict[str, np.ndarray]:
    """Every block's two LayerNorms and four dense layers (fused qkv, attention output, MLP in, MLP out) under another
    runtime's names: `prefix` (with {i}) and `names` in that order; kernels as (out, in) with `transpose`."""
    weights = {}
    for i in range(hparams.num_layers):
        block, at = model.get_layer(f"block_{i}"), prefix.format(i=i)
        norms, dense = names[:2], names[2:]
        for name, layer in zip(norms, (block.attention_norm, block.mlp_norm)):
            weights[f"{at}.{name}.weight"], weights[f"{at}.{name}.bias"] = _array(layer.gamma), _array(layer.beta)
        for name, layer in zip(dense, (block.qkv, block.attention_output, block.mlp_in, block.mlp_out)):
            kernel = _array(layer.kernel)
            weights[f"{at}.{name}.weight"], weights[f"{at}.{name}.bias"] = kernel.T if transpose else kernel, _array(layer.bias)
    return weights


def gpt2_weights(model, hparams) -> dict[str, np.ndarray]:
    """GPT2LMHeadModel's state dict (the output head is tied to `transformer.wte`)."""
    weights = {"transformer.wte.weight": _array(model.get_layer("token_embedding").embeddings),
               "transformer.wpe.weight": _array(model.get_layer("position_embedding").position_embeddings),
               **block_weights(model, hparams, "transformer.h.{i}", ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                                     "mlp.c_proj"), transpose=False)}
    final = model.get_layer("final_norm")
    weights["transformer.ln_f.weight"], weights["transformer.ln_f.bias"] = _array(final.gamma), _array(final.beta)
    return weights


def neox_weights(model, hparams) -> dict[str, np.ndarray]:
    """GPTNeoXForCausalLM's state dict: torch Linear weights are (out, in), and the fused projection's columns go from
    (q | k | v) × heads to heads × (q | k | v)."""
    heads, width = hparams.num_heads, hparams.hidden_dim
    head = width // heads
    embedding = _array(model.get_layer("token_embedding").embeddings)
    weights = {"gpt_neox.embed_in.weight": embedding, "embed_out.weight": embedding.copy()}
    for i in range(hparams.num_layers):
        block, prefix = model.get_layer(f"block_{i}"), f"gpt_neox.layers.{i}"
        for name, layer in (("input_layernorm", block.attention_norm), ("post_attention_layernorm", block.mlp_norm)):
            weights[f"{prefix}.{name}.weight"], weights[f"{prefix}.{name}.bias"] = _array(layer.gamma), _array(layer.beta)
        kernel, bias = _array(block.qkv.kernel), _array(block.qkv.bias)  # (width, 3 × width), columns (3, heads, head)
        kernel = kernel.reshape(width, 3, heads, head).transpose(0, 2, 1, 3).reshape(width, 3 * width)
        bias = bias.reshape(3, heads, head).transpose(1, 0, 2).reshape(3 * width)
        weights[f"{prefix}.attention.query_key_value.weight"], weights[f"{prefix}.attention.query_key_value.bias"] = kernel.T, bias
        for name, layer in (("attention.dense", block.attention_output), ("mlp.dense_h_to_4h", block.mlp_in),
                            ("mlp.dense_4h_to_h", block.mlp_out)):
            weights[f"{prefix}.{name}.weight"], weights[f"{prefix}.{name}.bias"] = _array(layer.kernel).T, _array(layer.bias)
    final = model.get_layer("final_norm")
    weights["gpt_neox.final_layer_norm.weight"], weights["gpt_neox.final_layer_norm.bias"] = _array(final.gamma), _array(final.beta)
    return {name: np.ascontiguousarray(value) for name, value in weights.items()}


def model_config(hparams, tokenizer) -> dict:
    """config.json: GPT-2's for learned positions, GPT-NeoX's for rotary ones; dropout 0 (an exported model predicts)."""
    specials = {"bos_token_id": tokenizer.special_id("bos"), "eos_token_id": tokenizer.eos_id,
                "pad_token_id": tokenizer.special_id("pad"), "vocab_size": tokenizer.vocab_size, "torch_dtype": "float32"}
    if hparams.position == "learned":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": hparams.max_sequence_length,
                "n_embd": hparams.hidden_dim, "n_layer": hparams.num_layers, "n_head": hparams.num_heads, "n_inner": hparams.mlp_dim,
                "activation_function": "gelu", "layer_norm_epsilon": hparams.layer_norm_epsilon, "resid_pdrop": 0.0,
                "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True, **specials}
    return {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "max_position_embeddings": hparams.max_sequence_length,
            "hidden_size": hparams.hidden_dim, "num_hidden_layers": hparams.num_layers, "num_attention_heads": hparams.num_heads,
            "intermediate_size": hparams.mlp_dim, "hidden_act": "gelu", "rotary_pct": 1.0, "rotary_emb_base": 10000,
            "use_parallel_residual": False, "layer_norm_eps": hparams.layer_norm_epsilon, "attention_bias": True,
            "attention_dropout": 0.0, "hidden_dropout": 0.0, "tie_word_embeddings": False, **specials}


def generation_config(tokenizer, allow_eos: bool) -> dict:
    """generation_config.json: the special tokens kerasllm's sampler never picks are suppressed (`generation.banned_ids`:
    [EOS] too, unless rows may end there: chat runs)."""
    from kerasllm.generation import banned_ids

    return {"bos_token_id": tokenizer.special_id("bos"), "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.special_id("pad"),
            "suppress_tokens": [int(i) for i in banned_ids(tokenizer, allow_eos)]}


# --- the tokenizer ---------------------------------------------------------------------------

def tokenizer_json(tokenizer, chat: bool = False):
    """A `tokenizers.Tokenizer` with every kerasllm token at its id: a word-level model over the run's vocabulary,
    pre-split one code point at a time (char) or by kerasllm's word pattern (word), decoded by joining the tokens.
    The unknown token is spelled U+FFFD, as kerasllm decodes it, and is not special (decoding keeps it)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    if tokenizer.kind == "sentencepiece":
        return sentencepiece_json(tokenizer, chat)
    tokens = [REPLACEMENT if i == tokenizer.unk_id else token for i, token in enumerate(tokenizer.vocabulary)]
    vocabulary = {token: i for i, token in enumerate(tokens)}
    if tokenizer.kind == "wordpiece":  # longest match first within each piece, continuations marked ##, as tf-text's
        built = HFTokenizer(models.WordPiece(vocabulary, unk_token=REPLACEMENT, continuing_subword_prefix="##",
                                             max_input_chars_per_word=200))
        built.decoder = decoders.Sequence([decoders.Replace("##", ""), decoders.Fuse()])
    else:
        built = HFTokenizer(models.WordLevel(vocabulary, unk_token=REPLACEMENT))
        built.decoder = decoders.Fuse()
    pattern = {"char": r"[\s\S]", "word": WORD_SPLIT, "wordpiece": PIECE_SPLIT}[tokenizer.kind]
    built.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    specials = sorted(i for i in tokenizer.special_tokens.values() if i != tokenizer.unk_id)
    built.add_special_tokens([AddedToken(tokenizer.vocabulary[i], special=True, normalized=False) for i in specials])
    built.encode_special_tokens = not chat  # "[EOS]" typed in text is text, as in kerasllm (transformers: split_special_tokens)
    return built


def sentencepiece_json(tokenizer, chat: bool = False):
    """A SentencePiece run's unigram model as a `tokenizers.Tokenizer` with its pieces, scores and ids: the space
    spelled "▁" and one "▁" in front of the text (SentencePiece's dummy prefix), no pre-split (the whole text goes
    through the unigram's best split, as in SentencePiece, where a piece never holds a space after its start), byte
    fallback for what no piece covers; decoded by joining the pieces, reading byte pieces as bytes and dropping the
    dummy prefix's space."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.proto)
    built = HFTokenizer(models.Unigram([(piece.piece, piece.score) for piece in proto.pieces], proto.trainer_spec.unk_id,
                                       proto.trainer_spec.byte_fallback))
    # SentencePiece never reads text as a control piece ("[EOS]" typed is characters); the unigram would: a split after
    # each one's first character keeps it from being read whole
    never = [piece.piece for piece in proto.pieces if piece.type in (proto.SentencePiece.CONTROL, proto.SentencePiece.UNKNOWN)
             and len(piece.piece) > 1]
    if never:
        pattern = "|".join(f"{re.escape(piece[0])}(?={re.escape(piece[1:])})" for piece in never)
        built.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    prefix = proto.normalizer_spec.add_dummy_prefix
    built.normalizer = normalizers.Sequence([*([normalizers.Prepend("\u2581")] if prefix else []), normalizers.Replace(" ", "\u2581")])
    built.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                       *([decoders.Strip(" ", 1, 0)] if prefix else [])])
    specials = sorted(i for i in tokenizer.special_tokens.values() if i != tokenizer.unk_id)
    built.add_special_tokens([AddedToken(tokenizer.vocabulary[i], special=True, normalized=False) for i in specials])
    built.encode_special_tokens = not chat
    return built


def chat_template_jinja(template) -> str:
    """The run's chat template (`kerasllm.data.chat_templates.ChatTemplate`) in Jinja, as `apply_chat_template` renders
    it: each message as its role token, its text and the end token; `add_generation_prompt` adds the assistant's role
    token, after which kerasllm generates a reply."""
    roles = ", ".join(f"{role!r}: {token!r}" for role, token in template.role_tokens.items())
    return ("{%- set roles = {" + roles + "} -%}"
            "{%- for message in messages -%}{{ roles[message['role']] }}{{ message['content'] }}" + template.end_token +
            "{%- endfor -%}{%- if add_generation_prompt -%}{{ roles['assistant'] }}{%- endif -%}")


def tokenizer_config(tokenizer, template=None) -> dict:
    names = {"bos": "bos_token", "eos": "eos_token", "pad": "pad_token", "cls": "cls_token", "sep": "sep_token",
             "mask": "mask_token"}  # no unk_token: a special one would vanish from decoded text, where kerasllm shows U+FFFD
    found = {names[name]: tokenizer.vocabulary[i] for name, i in tokenizer.special_tokens.items() if name in names}
    chat = {"chat_template": chat_template_jinja(template)} if template is not None else {}
    # a plain model: no text a user types turns into a special token, as kerasllm places them by id; a chat model's
    # template is text whose role tokens transformers must read as the special tokens they are
    return {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
            "split_special_tokens": template is None, "model_max_length": 1_000_000, **found, **chat}


# --- writing and checking --------------------------------------------------------------------

def write(folder: Path, run, model) -> str:
    """The folder's files; returns the architecture written."""
    from safetensors.numpy import save_file

    if run.spec.name == "hub-causal-lm":
        return write_hub(folder, run, model)
    hparams, tokenizer, template = run.config.model_args, run.artifacts["tokenizer"], run.artifacts.get("chat_template")
    config = model_config(hparams, tokenizer)
    weights = gpt2_weights(model, hparams) if hparams.position == "learned" else neox_weights(model, hparams)
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    for name, value in (("config.json", config), ("generation_config.json", generation_config(tokenizer, run.task.name == "chat")),
                        ("tokenizer_config.json", tokenizer_config(tokenizer, template)),
                        ("special_tokens_map.json", {k: v for k, v in tokenizer_config(tokenizer).items() if k.endswith("_token")}),
                        (MARKER, {"run": str(run.path), "model": run.spec.name})):
        (folder / name).write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
    tokenizer_json(tokenizer, chat=template is not None).save(str(folder / "tokenizer.json"))
    return config["architectures"][0]


def write_hub(folder: Path, run, model) -> str:
    """A tuned keras-hub preset (LoRA merged into its kernels as the run saved it) through keras-hub's own exporter,
    with the run's tokenizer; generation_config.json then ends a reply where `kerasllm chat` ends it and suppresses
    the special tokens kerasllm's sampler never picks."""
    from kerasllm.generation import banned_ids
    from kerasllm.zoo.hub_causal_lm import causal_lm_of

    causal_lm, tokenizer = causal_lm_of(model), run.artifacts["tokenizer"]
    causal_lm.preprocessor = causal_lm.preprocessor_cls(tokenizer=tokenizer.tokenizer)
    try:
        causal_lm.export_to_transformers(str(folder))
    finally:
        causal_lm.preprocessor = None
    path = folder / "generation_config.json"
    generation = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    generation.update(eos_token_id=tokenizer.eos_id, suppress_tokens=[int(i) for i in banned_ids(tokenizer, allow_eos=True)])
    path.write_text(json.dumps(generation, indent=2), encoding="utf-8")
    (folder / MARKER).write_text(json.dumps({"run": str(run.path), "model": run.spec.name}), encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return (config.get("architectures") or [f"{config.get('model_type', '?')} causal LM"])[0]


def samples(run, count_: int = SAMPLES) -> list:
    """What the folder is checked on: pieces of the run's validation text (from its start, spread over it), each a few
    hundred characters; for a chat run, conversations of its data (lists of messages)."""
    if run.task.name == "chat":
        from kerasllm.data.chat import load_conversations

        return load_conversations(run.data_record["source"]).conversations[:count_]
    from kerasllm.data.text import reload_validation

    text = reload_validation(run.data_record)
    step = max(len(text) // count_, 1)
    return [text[i * step:i * step + 400] for i in range(count_) if text[i * step:i * step + 400].strip()]


def check(folder: Path, run, model, texts: list) -> tuple[float, int]:
    """(max |logit diff|, greedy tokens compared) of the folder in transformers against the Keras model; one line
    naming the first difference otherwise."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from kerasllm import generation

    hf_logging.set_verbosity_error()  # its notes and its "Loading weights" bar: not for the export's user
    hf_logging.disable_progress_bar()

    tokenizer = run.artifacts["tokenizer"]
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    context = getattr(run.config.model_args, "max_sequence_length", 0) or run.config.data.sequence_length
    worst, compared = 0.0, 0
    new_tokens = min(NEW_TOKENS, context // 2)  # a continuation within the context: no sliding window on either side
    template = run.artifacts.get("chat_template")
    for sample in texts:
        if getattr(template, "kind", "") == "kerasllm":  # a conversation: its template's ids, then its messages' text
            ours_prompt = list(map(int, template.prompt(tokenizer, sample)))
            theirs_prompt = hf_tokenizer.apply_chat_template(sample, add_generation_prompt=True, tokenize=True, return_dict=False)
            if list(theirs_prompt) != ours_prompt:
                raise UserError("the exported chat template gives other ids than `kerasllm chat` for a conversation of the "
                                "run's data; the export was not written")
        text = " ".join(message["content"] for message in sample) if template is not None else sample
        ours = tokenizer.encode(text)
        theirs = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if list(map(int, ours)) != list(theirs):
            raise UserError(f"the exported tokenizer encodes {text[:40]!r} differently from the run's; the export was not written")
        if hf_tokenizer.decode(theirs, skip_special_tokens=True) != tokenizer.decode(ours):
            raise UserError(f"the exported tokenizer decodes {text[:40]!r} differently from the run's; the export was not written")
        window = np.asarray(ours[:context], np.int32)[None]
        with torch.no_grad():
            logits = hf_model(torch.from_numpy(window.astype(np.int64))).logits.numpy()
        worst = max(worst, float(np.max(np.abs(logits - np.asarray(model.predict_on_batch(window), np.float32)))))
        prompt = ours[:min(PROMPT_TOKENS, context - new_tokens)]
        with torch.no_grad():
            out = hf_model.generate(torch.from_numpy(np.asarray(prompt, np.int64)[None]), do_sample=False, max_new_tokens=new_tokens)
        continued = out[0, len(prompt):].tolist()
        if template is not None and tokenizer.eos_id in continued:  # a reply ends at [EOS], which kerasllm does not print
            continued = continued[:continued.index(tokenizer.eos_id)]
        rows = generation.Rows(tokenizer, 1, [], None)  # the tokens compared, read as kerasllm reads its own
        rows.set(0, continued)
        hf_text = rows.texts[0]
        (kerasllm_text,) = generation.generate_ids(model, tokenizer, [np.asarray(prompt, np.int32)], new_tokens,
                                                   window=run.config.data.sequence_length, spec=run.spec, temperature=0.0,
                                                   allow_eos=template is not None)
        if hf_text != kerasllm_text:
            raise UserError(f"in transformers the greedy continuation of {tokenizer.decode(prompt)!r} is {hf_text!r}, in "
                            f"kerasllm {kerasllm_text!r}; the export was not written")
        compared = max(compared, len(out[0]) - len(prompt))
    if not worst <= TOLERANCE:
        raise UserError(f"in transformers the logits differ from the run's by up to {worst:.3g} (tolerance {TOLERANCE:g}); "
                        "the export was not written")
    return worst, compared


def export(run, model, out: Path, overwrite: bool = False) -> HFResult:
    """Write `run` as a Hugging Face folder at `out`, checked in transformers before it replaces anything."""
    check_request(run, model)
    check_out(out, overwrite)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        architecture = write(staging, run, model)
        texts = samples(run)
        worst, compared = check(staging, run, model, texts)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = size_of(out)
    kind = getattr(run.artifacts.get("chat_template"), "kind", None)
    checked_on = ("of the validation text" if kind is None else "of the run's data (the chat template gives `kerasllm chat`'s ids)"
                  if kind == "kerasllm" else "of the run's data (their text; the preset's chat template is keras-hub's to export)")
    return HFResult(out, architecture, size, worst, len(texts), compared, checked_on)
