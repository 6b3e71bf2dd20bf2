"""On-device generation with LiteRT: beside a language model's `.tflite` export, `<stem>.generate.tflite` with two
signatures, `prefill(tokens) -> logits, cache` and `decode(token, position, cache) -> logits, cache` (an LSTM's
decode takes no position: its cache is each layer's carried (h, c)), so a phone or a board generates with the
interpreter alone and a cache, one token per call (`zoo/transformer_lm.TransformerCacheDecoder.tf_endpoints`,
`zoo/lstm_textgen.LSTMStepDecoder.tf_endpoints`).

The export runs the export README's loop itself (`LOOP`, the same lines as the snippet) and keeps the file only if its
greedy tokens equal `kerasllm generate --temperature 0`'s, token for token (as many as the context holds, up to 64),
and reports tokens/s against kerasllm's own cached decoding in the same process. With `--quantize dynamic` (int8
weights) the quantized file is judged, not refused, by its greedy agreement and perplexity change on validation text
(computed through `decode`, token by token), beside the float file's, with both sizes and speeds.

The loop keeps no sliding window: the prompt and what it generates stay within the model's context.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.quiet import captured_stderr
from kerasllm.export.measure import human_size

GENERATES = ("transformer-lm", "lstm-textgen")  # the models with a cached decoder written as TensorFlow functions
NEW_TOKENS = 64
PROMPT = "ROMEO:"
PERPLEXITY_TOKENS = 256  # validation tokens read through `decode` for the perplexity of a quantized file

# The export README's loop, as the export runs it (`greedy`): `prefill`, then `decode` one token at a time.
LOOP = '''\
interpreter = Interpreter(model_path=PATH)
prefill, decode = interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")
takes = interpreter.get_signature_list()["decode"]["inputs"]  # an LSTM's decode takes no position
out = prefill(tokens=np.asarray([prompt], np.int32))
tokens, position = [], len(prompt)
for _ in range(steps):
    logits = out["logits"][0].copy()
    logits[never] = -np.inf  # the special tokens kerasllm's greedy decoding never picks
    tokens.append(int(np.argmax(logits)))
    feeds = {"token": np.asarray(tokens[-1:], np.int32), "position": np.asarray(position, np.int32), "cache": out["cache"]}
    out = decode(**{name: value for name, value in feeds.items() if name in takes})
    position += 1
'''


@dataclass
class Generation:
    path: Path
    size_bytes: int
    greedy_tokens: int
    tokens_per_second: float
    kerasllm_tokens_per_second: float
    quantized: dict | None = None  # --quantize dynamic: agreement, perplexity before → after, size and speed of both

    def line(self) -> str:
        speed = (f"{self.tokens_per_second:,.0f} tokens/s at batch 1 against kerasllm's cached decoding "
                 f"{self.kerasllm_tokens_per_second:,.0f}")
        if self.quantized is None:
            return (f"on-device generation: {self.path.name} ({human_size(self.size_bytes)}; signatures prefill and decode), "
                    f"its loop gives the same {self.greedy_tokens} greedy tokens as `kerasllm generate --temperature 0`; {speed}")
        q = self.quantized
        return (f"on-device generation: {self.path.name} (int8 weights, {human_size(self.size_bytes)} against "
                f"{human_size(q['float_bytes'])} in float; signatures prefill and decode): greedy tokens {q['agreement']:.0%} "
                f"the same as the float file's over {self.greedy_tokens}, perplexity {q['perplexity_float']:.4g} → "
                f"{q['perplexity']:.4g} on {PERPLEXITY_TOKENS} validation tokens; {speed} (float file "
                f"{q['float_tokens_per_second']:,.0f})")


def generation_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".generate.tflite")


def convert(run, model, quantize: str) -> bytes:
    """The LiteRT file's bytes: the decoder's two functions in a SavedModel, converted with both signatures."""
    import keras
    import tensorflow as tf

    endpoints = run.spec.decoder(model).tf_endpoints()
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, signature) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=signature)
    with tempfile.TemporaryDirectory() as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=list(endpoints))
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def greedy(path: Path, prompt: list[int], steps: int, never: list[int]) -> tuple[list[int], float]:
    """`LOOP` on the file at `path`: (the greedy tokens, tokens per second of the loop after its prefill)."""
    from ai_edge_litert.interpreter import Interpreter

    scope = {"Interpreter": Interpreter, "np": np, "PATH": str(path), "prompt": list(prompt), "steps": steps, "never": never}
    with captured_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
        started = time.perf_counter()
        exec(LOOP, scope)  # noqa: S102 (our own constant: the README's loop, run as written)
    return scope["tokens"], steps / max(time.perf_counter() - started, 1e-9)


def perplexity(path: Path, ids: list[int]) -> float:
    """exp(mean negative log-likelihood) of `ids[1:]`, each read through `decode` after the tokens before it."""
    from ai_edge_litert.interpreter import Interpreter

    from kerasllm.generation import log_softmax

    with captured_stderr():
        interpreter = Interpreter(model_path=str(path))
    prefill, decode = interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")
    takes = interpreter.get_signature_list()["decode"]["inputs"]
    out, total = prefill(tokens=np.asarray([ids[:1]], np.int32)), 0.0
    for position, token in enumerate(ids[1:], start=1):
        total -= float(log_softmax(np.asarray(out["logits"][0], np.float64))[token])
        feeds = {"token": np.asarray([token], np.int32), "position": np.asarray(position, np.int32), "cache": out["cache"]}
        out = decode(**{name: value for name, value in feeds.items() if name in takes})
    return float(np.exp(total / max(len(ids) - 1, 1)))


def kerasllm_greedy(run, model, prompt: list[int], steps: int) -> tuple[str, float]:
    """kerasllm's own cached greedy decoding of `steps` tokens (`kerasllm generate --temperature 0`): (the text, tokens
    per second of a second call: the first traces and compiles)."""
    from kerasllm import generation

    tokenizer = run.artifacts["tokenizer"]

    def once():
        return generation.generate_ids(model, tokenizer, [np.asarray(prompt, np.int32)], steps, spec=run.spec,
                                       window=run.config.data.sequence_length, temperature=0.0)[0]

    once()
    started = time.perf_counter()
    text = once()
    return text, steps / max(time.perf_counter() - started, 1e-9)


def check_out(out: Path, overwrite: bool) -> None:
    """The generation file beside `out` is replaced only with --overwrite, like the export itself."""
    from kerasllm.core.errors import UserError

    path = generation_path(out)
    if path.exists() and not overwrite:
        raise UserError(f"{path} already exists; pass --overwrite to replace it or choose another --out")


def export(run, model, out: Path, quantize: str = "none") -> Generation:
    """Write `<stem>.generate.tflite` beside `out` and its example file, checked by running `LOOP` (float: the same
    greedy tokens as kerasllm, or nothing is written; dynamic: measured against the float file)."""
    from kerasllm import generation
    from kerasllm.core.errors import UserError

    tokenizer = run.artifacts["tokenizer"]
    decoder = run.spec.decoder(model)
    context = getattr(decoder, "context", None) or 1 << 30  # an LSTM carries its state: no context to stay within
    prompt = [int(i) for i in generation.encode_prompt(tokenizer, PROMPT)]
    steps = max(1, min(NEW_TOKENS, context - len(prompt)))
    never = [int(i) for i in generation.banned_ids(tokenizer, allow_eos=False)]
    path = generation_path(out)
    floating = path.with_name(path.name + ".float.partial")
    staging = path.with_name(path.name + ".partial")
    try:
        floating.write_bytes(convert(run, model, "none"))
        tokens, speed = greedy(floating, prompt, steps, never)
        expected, kerasllm_speed = kerasllm_greedy(run, model, prompt, steps)
        if tokenizer.decode(tokens) != expected:
            raise UserError(f"the LiteRT generation loop gives {tokenizer.decode(tokens)!r} after {PROMPT!r}, kerasllm "
                            f"{expected!r}; {path.name} was not written")
        quantized = None
        if quantize == "dynamic":
            staging.write_bytes(convert(run, model, "dynamic"))
            q_tokens, q_speed = greedy(staging, prompt, steps, never)
            text = validation_ids(run, min(PERPLEXITY_TOKENS, context))
            quantized = {"agreement": float(np.mean(np.asarray(q_tokens) == np.asarray(tokens))),
                         "perplexity_float": perplexity(floating, text), "perplexity": perplexity(staging, text),
                         "float_bytes": floating.stat().st_size, "float_tokens_per_second": speed}
            tokens, speed = q_tokens, q_speed
        else:
            floating.replace(staging)
        example = {"prompt": PROMPT, "prompt_ids": prompt, "steps": steps, "never": never, "kerasllm_text": expected}
        files.write_text_atomic(example_path(out), json.dumps(example, ensure_ascii=False) + "\n")
        staging.replace(path)
    finally:
        for partial in (floating, staging):
            partial.unlink(missing_ok=True)
    return Generation(path, path.stat().st_size, steps, speed, kerasllm_speed, quantized)


def example_path(out: Path) -> Path:
    return Path(out).with_name(Path(out).stem + ".generate.example.json")


def validation_ids(run, count: int) -> list[int]:
    """The first `count` tokens of the run's validation text."""
    from kerasllm.data.text import reload_validation

    return [int(i) for i in run.artifacts["tokenizer"].encode(reload_validation(run.data_record)[:count * 8])[:count]]


def snippet(out: Path, tokenizer_file: str | None) -> str:
    """The export README's section body: `LOOP` with what it needs around it (under 20 lines of its own)."""
    lines = ["import json", "", "import numpy as np", "from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert", "",
             f'PATH = "{generation_path(out).name}"',
             f'example = json.load(open("{example_path(out).name}"))  # a prompt\'s ids and kerasllm\'s greedy text after it',
             'prompt, steps, never = example["prompt_ids"], example["steps"], example["never"]',
             *LOOP.rstrip().splitlines()]
    if tokenizer_file:
        lines += [f'vocabulary = json.load(open("{tokenizer_file}"))["vocabulary"]',
                  'text = "".join(vocabulary[token] for token in tokens)',
                  'print(example["prompt"] + text)',
                  'print("the same as kerasllm generate --temperature 0:", text == example["kerasllm_text"])']
    else:
        lines += ['print(tokens)']
    return "\n".join(lines) + "\n"


def write_readme(out: Path, generated: Generation, tokenizer_file: str | None) -> Path | None:
    """The generation file's section in the export folder's README (`guide.write_section`)."""
    from kerasllm.export import guide

    name = generated.path.name
    text = (f"<!-- export: {name} -->\n## {name} (LiteRT generation, {human_size(generated.size_bytes)})\n\n"
            "Signatures `prefill(tokens) -> logits, cache` and `decode(token, position, cache) -> logits, cache` (an LSTM's "
            "decode takes no position). The loop below is the one `kerasllm export` ran to check this file: greedy, one token "
            "per `decode`, within the model's context. Run from this folder:\n\n"
            f"```python\n{snippet(out, tokenizer_file)}```\n\n<!-- end: {name} -->\n")
    return guide.write_section(Path(out).parent, name, text)
