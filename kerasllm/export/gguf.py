"""A run as one GGUF file for llama.cpp (and what reads GGUF: Ollama, LM Studio, llama-cpp-python), written with
the `gguf` package.

transformer-lm's blocks are the ones llama.cpp builds as `gpt2` (learned positions: pre-LayerNorm, one fused
query/key/value projection ordered (q | k | v) × heads, GELU, the output tied to the token embedding) and as `gptneox`
(rotary positions on every feature of a head, NeoX's rotate-half convention as `zoo.layers.RotaryPositions`, with
`use_parallel_residual` false). Weights are float32, each kernel stored as llama.cpp reads it (out × in).

The tokenizer goes in as llama.cpp's unigram kind (`tokenizer.ggml.model = "t5"`, SentencePiece's unigram model):
over a `char` run's vocabulary, whose pieces are single characters, its best split is one character at a time, as
kerasllm reads text, with the space spelled "▁" (SentencePiece's), no space added in front, runs of spaces kept, and a
character the vocabulary lacks read as [UNK], at kerasllm's ids. One difference: llama.cpp reads a run of unknown
characters as one [UNK], kerasllm as one each. The special tokens are control tokens at kerasllm's ids (text a user
types never becomes one). A chat run's template goes in as `tokenizer.chat_template` (Jinja), rendering its
`[SYSTEM]`/`[USER]`/`[ASSISTANT] … [EOS]` rows.

Differences a user may see: llama.cpp's GELU is the tanh approximation (kerasllm's is exact), so logits differ by a
few thousandths; kerasllm's sampler never picks the special tokens, and llama.cpp's greedy sampler may (a
`--logit-bias` of -inf on them gives kerasllm's choice); llama.cpp slides no window over the context.

`export` writes the file beside, reads it back with the `gguf` reader (every tensor's name, shape and values, the
tokenizer's tokens) and, where `llama_cpp` (llama-cpp-python) is installed, loads it in llama.cpp: the logits on
pieces of the run's validation text within a tolerance and the greedy continuation of each piece equal to `kerasllm
generate --temperature 0`, token for token; then renames it into place.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.export.hf import NEW_TOKENS, PROMPT_TOKENS, SAMPLES, block_weights, chat_template_jinja, check_replacing, check_weights, samples
from kerasllm.export.measure import human_size

# Lazy imports: Keras, gguf and llama_cpp are imported inside functions.

INSTALL = 'pip install "kerasllm[gguf]"'
SPACE = "\u2581"  # SentencePiece's space, as llama.cpp's SentencePiece tokenizer writes " "
TOLERANCE = 1e-2  # max |logit diff| in llama.cpp: its GELU is the tanh approximation, kerasllm's exact
RUN_KEY = "kerasllm.run"  # the run a file came from (an earlier export of kerasllm's may be replaced)
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # gguf.TokenType


@dataclass
class GGUFResult:
    path: Path
    architecture: str
    size_bytes: int
    tensors: int
    max_abs_diff: float | None  # None: llama.cpp not installed here, so not loaded there
    samples: int
    greedy_tokens: int
    chat: bool = False

    def line(self) -> str:
        wrote = (f"wrote {self.path} (GGUF, llama.cpp's {self.architecture}, float32, {human_size(self.size_bytes)}); read back: "
                 f"{count(self.tensors, 'tensor')} and the tokenizer as written")
        if self.max_abs_diff is None:
            return wrote + f"; not loaded in llama.cpp here (llama-cpp-python is not installed: {INSTALL})"
        checked = (f"{count(self.samples, 'conversation')} of the run's data (the file's chat template gives `kerasllm chat`'s "
                   "ids)" if self.chat else f"{count(self.samples, 'piece')} of the validation text")
        return (wrote + f"; in llama.cpp, on {checked}: max |logit diff| "
                f"{self.max_abs_diff:.3g} (tolerance {TOLERANCE:g}), the same {self.greedy_tokens} greedy tokens as "
                "`kerasllm generate --temperature 0`")


def check_request(run, model) -> None:
    """What `--format gguf` takes, refused in one line before anything is written."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"--format gguf needs the gguf package, which is not installed; {INSTALL}")
    if run is None:
        raise UserError("--format gguf exports a run folder (its tokenizer goes into the file); pass the run folder")
    if run.spec.name == "hub-causal-lm":
        raise UserError("--format gguf writes transformer-lm runs; a tuned keras-hub preset goes to llama.cpp through "
                        "--format hf, then llama.cpp's convert_hf_to_gguf.py on that folder")
    if run.spec.name != "transformer-lm":
        raise UserError(f"--format gguf writes transformer-lm runs, and this is a {run.spec.name} run; --format savedmodel, "
                        "tflite or onnx take every model")
    tokenizer = run.artifacts.get("tokenizer")
    if getattr(tokenizer, "kind", "") != "char":
        raise UserError(f"--format gguf writes char tokenizers (llama.cpp reads them one character at a time), and this run's "
                        f"is {getattr(tokenizer, 'kind', '?')}; --format hf takes it")
    if SPACE in tokenizer.vocabulary:
        raise UserError(f"this run's vocabulary holds {SPACE!r}, which llama.cpp's tokenizer reads as a space; --format hf "
                        "takes it")
    check_weights(run, model, "this writer", "GGUF")


def default_out(run_dir: Path) -> Path:
    return Path(run_dir) / files.EXPORT_DIR / "model.gguf"


def written_by_kerasllm(path: Path) -> bool:
    from gguf import GGUFReader

    try:
        return RUN_KEY in GGUFReader(str(path)).fields
    except Exception:  # not a GGUF file at all
        return False


def check_out(out: Path, overwrite: bool) -> None:
    """A new `.gguf` file, or (with --overwrite) an earlier GGUF export of kerasllm's."""
    out = Path(out)
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"--format gguf needs the gguf package, which is not installed; {INSTALL}")
    if out.suffix != ".gguf":
        raise UserError(f"--format gguf needs an output path ending in .gguf, got {out}")
    check_replacing(out, overwrite, lambda found: found.is_file() and written_by_kerasllm(found), "GGUF")


# --- the file --------------------------------------------------------------------------------

def vocabulary(tokenizer) -> tuple[list[str], list[int]]:
    """(tokens, their llama.cpp types): kerasllm's tokens at their ids, the space as "▁"."""
    tokens = [SPACE if token == " " else token for token in tokenizer.vocabulary]
    specials = set(tokenizer.special_tokens.values())
    return tokens, [UNKNOWN if i == tokenizer.unk_id else CONTROL if i in specials else NORMAL for i in range(len(tokens))]


def one_unknown_per_run(ids, unk_id: int) -> list[int]:
    """kerasllm's ids as llama.cpp's unigram tokenizer gives them: a run of [UNK]s as one."""
    return [int(i) for n, i in enumerate(ids) if not (i == unk_id and n and ids[n - 1] == unk_id)]


def _array(variable) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(variable), np.float32)


def tensors(model, hparams) -> dict[str, np.ndarray]:
    """llama.cpp's tensors by name, as numpy arrays in the shape `gguf` writes (a kernel as out × in)."""
    embedding = _array(model.get_layer("token_embedding").embeddings)
    weights = {"token_embd.weight": embedding}
    if hparams.position == "learned":
        weights["position_embd.weight"] = _array(model.get_layer("position_embedding").position_embeddings)
    else:  # gptneox needs its output matrix written out; gpt2 ties it to the token embedding when it is absent
        weights["output.weight"] = embedding.copy()
    weights.update(block_weights(model, hparams, "blk.{i}", ("attn_norm", "ffn_norm", "attn_qkv", "attn_output", "ffn_up",
                                                             "ffn_down"), transpose=True))
    final = model.get_layer("final_norm")
    weights["output_norm.weight"], weights["output_norm.bias"] = _array(final.gamma), _array(final.beta)
    return {name: np.ascontiguousarray(value) for name, value in weights.items()}


def write(path: Path, run, model) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """The file; returns (llama.cpp's architecture, the tensors written, the tokens written)."""
    import gguf

    hparams, tokenizer, template = run.config.model_args, run.artifacts["tokenizer"], run.artifacts.get("chat_template")
    architecture = "gpt2" if hparams.position == "learned" else "gptneox"
    tokens, types = vocabulary(tokenizer)
    weights = tensors(model, hparams)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name(run.path.name)
    writer.add_string(RUN_KEY, str(run.path))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(hparams.max_sequence_length)
    writer.add_embedding_length(hparams.hidden_dim)
    writer.add_block_count(hparams.num_layers)
    writer.add_feed_forward_length(hparams.mlp_dim)
    writer.add_head_count(hparams.num_heads)
    writer.add_head_count_kv(hparams.num_heads)
    writer.add_layer_norm_eps(hparams.layer_norm_epsilon)
    if architecture == "gptneox":
        writer.add_rope_dimension_count(hparams.hidden_dim // hparams.num_heads)
        writer.add_rope_freq_base(10000.0)
        writer.add_parallel_residual(False)
    writer.add_tokenizer_model("t5")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(types)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id)):
        if tokenizer.special_id(name) is not None:
            add(tokenizer.special_id(name))
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_remove_extra_whitespaces(False)
    if template is not None:
        writer.add_chat_template(chat_template_jinja(template))
    for name, value in weights.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return architecture, weights, tokens


def read_back(path: Path, weights: dict[str, np.ndarray], tokens: list[str]) -> None:
    """The file as the `gguf` reader sees it: every tensor's name, shape and values, and the tokens, as written."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    found = {tensor.name: tensor for tensor in reader.tensors}
    if set(found) != set(weights):
        raise UserError(f"the GGUF file read back holds other tensors than were written ({sorted(set(found) ^ set(weights))[:3]}); "
                        "the export was not written")
    for name, value in weights.items():
        read = np.asarray(found[name].data).reshape(value.shape)
        if not np.array_equal(read, value):
            raise UserError(f"the GGUF file read back has other values in {name}; the export was not written")
    field = reader.fields["tokenizer.ggml.tokens"]
    if [bytes(field.parts[i]).decode("utf-8") for i in field.data] != tokens:
        raise UserError("the GGUF file read back holds other tokens than were written; the export was not written")


def check_in_llama_cpp(path: Path, run, model, pieces: list) -> tuple[float, int]:
    """(max |logit diff|, greedy tokens compared) of the file in llama.cpp against the Keras model on `pieces` (text, or
    a chat run's conversations: their template rendered by llama-cpp-python from the file gives `kerasllm chat`'s ids,
    and their text is compared); one line naming the first difference otherwise. Greedy there skips what kerasllm's
    sampler never picks (the special tokens)."""
    from kerasllm import generation
    from kerasllm.core.quiet import captured_stderr

    tokenizer = run.artifacts["tokenizer"]
    context = run.config.model_args.max_sequence_length
    new_tokens = min(NEW_TOKENS, context // 2)
    llm = load_llama(path, context)
    banned = np.zeros(llm.n_vocab(), bool)
    banned[generation.banned_ids(tokenizer, allow_eos=False)] = True
    worst, compared = 0.0, 0
    template = run.artifacts.get("chat_template")
    for piece in pieces:
        if template is not None:
            check_chat_template(llm, template, tokenizer, piece)
        text = piece if isinstance(piece, str) else " ".join(message["content"] for message in piece)
        ours = [int(i) for i in tokenizer.encode(text)]
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if theirs != one_unknown_per_run(ours, tokenizer.unk_id):
            raise UserError(f"llama.cpp tokenizes {text[:40]!r} differently from the run's; the export was not written")
        window = ours[:context]
        llm.reset()
        with captured_stderr():
            llm.eval(window)
        logits = np.asarray(llm.scores[:len(window)], np.float32)
        worst = max(worst, float(np.max(np.abs(logits - np.asarray(model.predict_on_batch(np.asarray([window], np.int32)), np.float32)))))
        prompt = ours[:min(PROMPT_TOKENS, context - new_tokens)]
        llm.reset()
        continued = []
        with captured_stderr():
            llm.eval(prompt)
            for _ in range(new_tokens):
                scores = np.where(banned, -np.inf, np.asarray(llm.scores[llm.n_tokens - 1], np.float32))
                continued.append(int(np.argmax(scores)))
                llm.eval([continued[-1]])
        (kerasllm_text,) = generation.generate_ids(model, tokenizer, [np.asarray(prompt, np.int32)], new_tokens,
                                                   window=run.config.data.sequence_length, spec=run.spec, temperature=0.0)
        if tokenizer.decode(continued) != kerasllm_text:
            raise UserError(f"in llama.cpp the greedy continuation of {tokenizer.decode(prompt)!r} is "
                            f"{tokenizer.decode(continued)!r}, in kerasllm {kerasllm_text!r}; the export was not written")
        compared = max(compared, len(continued))
    if not worst <= TOLERANCE:
        raise UserError(f"in llama.cpp the logits differ from the run's by up to {worst:.3g} (tolerance {TOLERANCE:g}); "
                        "the export was not written")
    return worst, compared


def check_chat_template(llm, template, tokenizer, conversation: list[dict]) -> None:
    """The file's chat template as llama-cpp-python renders it (`create_chat_completion`'s Jinja formatter), read with
    its special tokens: the ids `kerasllm chat` feeds."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token=template.end_token, bos_token="")
    theirs = llm.tokenize(formatter(messages=conversation).prompt.encode("utf-8"), add_bos=False, special=True)
    if theirs != [int(i) for i in template.prompt(tokenizer, conversation)]:
        raise UserError("in llama.cpp the file's chat template gives other ids than `kerasllm chat` for a conversation of the "
                        "run's data; the export was not written")


def load_llama(path: Path, context: int):
    """The file in llama.cpp (llama-cpp-python), every position's logits kept, its log lines kept off the terminal
    (llama.cpp's on fd 2, and llama-cpp-python's log callback's on `sys.stderr`)."""
    import contextlib
    import io

    from llama_cpp import Llama

    from kerasllm.core.quiet import captured_stderr

    with captured_stderr(), contextlib.redirect_stderr(io.StringIO()):
        return Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False, n_threads=max(1, min(4, _cores())))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def export(run, model, out: Path, overwrite: bool = False) -> GGUFResult:
    """Write `run` as a GGUF file at `out`, read back and (with llama-cpp-python) checked in llama.cpp before it
    replaces anything."""
    check_request(run, model)
    check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + ".partial")
    staging.unlink(missing_ok=True)
    try:
        architecture, weights, tokens = write(staging, run, model)
        read_back(staging, weights, tokens)
        pieces = samples(run, SAMPLES)  # text, or a chat run's conversations
        worst, compared = (check_in_llama_cpp(staging, run, model, pieces)
                           if importlib.util.find_spec("llama_cpp") is not None else (None, 0))
        staging.replace(out)
    finally:
        staging.unlink(missing_ok=True)
    return GGUFResult(out, architecture, out.stat().st_size, len(weights), worst, len(pieces) if worst is not None else 0,
                      compared, run.task.name == "chat")
