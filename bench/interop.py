"""Benchmark: a transformer-lm run in the runtimes it is exported to, each measured in a fresh process that imports that
runtime alone (#31).

    python bench/interop.py [--preset tiny --preset small] [--steps 120]

Trains transformer-lm PRESET on tinyshakespeare (characters, `../shared/data/tinyshakespeare`) for 2 epochs of `--steps`
steps,
exports it with `--format hf`, `--format gguf` and `--format tflite` (whose `model.generate.tflite` has the
prefill/decode signatures), then, per runtime — kerasllm itself (the run's model.keras, cached decoding), transformers,
llama.cpp (llama-cpp-python), LiteRT (ai_edge_litert) — in its own Python process: the file's size, the time to load
it, greedy tokens/s at batch 1 (up to 64 new tokens after a 16-token prompt, within the context: llama.cpp, transformers
and the LiteRT loop slide no window; after one untimed warm-up generation), and the
perplexity of the same validation windows computed there (8 windows of the model's context from the validation
split's start, each scored from its second token; the ids are handed over in a JSON file, so no runtime tokenizes).
Rows go to bench/RESULTS.md; where the weights are the same, the perplexities agree to 3 significant digits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, append_row, kerasllm, machine

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare"
WINDOWS, PROMPT, NEW = 8, 16, 64

COMMON = """
import json, sys, time
import numpy as np
task = json.load(open(sys.argv[1]))
windows, prompt, new = task["windows"], task["prompt"], task["new"]
def log_softmax(x):
    x = np.asarray(x, np.float64); x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))
def nll(rows, window):  # rows[p]: the logits after window[:p + 1]
    table = log_softmax(rows)
    return -sum(table[p, window[p + 1]] for p in range(len(window) - 1)), len(window) - 1
"""

KERAS = COMMON + """
started = time.perf_counter()
import keras, kerasllm.zoo.layers
from kerasllm import generation
from kerasllm.zoo.transformer_lm import TransformerCacheDecoder
model = keras.saving.load_model(task["keras"])
loaded = time.perf_counter() - started
decoder = TransformerCacheDecoder(model)
def greedy():
    logits, state = decoder.start([np.asarray(prompt, np.int32)])
    for _ in range(new):
        token = [int(np.argmax(logits[0]))]
        logits, state = decoder.step(state, token)
greedy(); started = time.perf_counter(); greedy(); speed = new / (time.perf_counter() - started)
total = count = 0
for window in windows:
    rows = np.asarray(model.predict_on_batch(np.asarray([window], np.int32)))[0]
    a, b = nll(rows, window); total += a; count += b
print(json.dumps({"load": loaded, "tokens_per_second": speed, "perplexity": float(np.exp(total / count))}))
"""

TRANSFORMERS = COMMON + """
started = time.perf_counter()
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(task["hf"], dtype=torch.float32).eval()
loaded = time.perf_counter() - started
ids = torch.tensor([prompt])
with torch.no_grad():
    model.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new)
    started = time.perf_counter()
    model.generate(ids, do_sample=False, max_new_tokens=new, min_new_tokens=new)
    speed = new / (time.perf_counter() - started)
    total = count = 0
    for window in windows:
        rows = model(torch.tensor([window])).logits[0].numpy()
        a, b = nll(rows, window); total += a; count += b
print(json.dumps({"load": loaded, "tokens_per_second": speed, "perplexity": float(np.exp(total / count))}))
"""

LLAMA_CPP = COMMON + """
started = time.perf_counter()
from llama_cpp import Llama
llm = Llama(model_path=task["gguf"], n_ctx=task["context"], logits_all=True, verbose=False)
loaded = time.perf_counter() - started
def greedy():
    llm.reset(); llm.eval(prompt)
    for _ in range(new):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
greedy(); started = time.perf_counter(); greedy(); speed = new / (time.perf_counter() - started)
total = count = 0
for window in windows:
    llm.reset(); llm.eval(window)
    a, b = nll(np.asarray(llm.scores[:len(window)]), window); total += a; count += b
print(json.dumps({"load": loaded, "tokens_per_second": speed, "perplexity": float(np.exp(total / count))}))
"""

LITERT = COMMON + """
started = time.perf_counter()
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=task["litert"])
prefill, decode = interpreter.get_signature_runner("prefill"), interpreter.get_signature_runner("decode")
loaded = time.perf_counter() - started
def step(out, token, position):
    return decode(token=np.asarray([token], np.int32), position=np.asarray(position, np.int32), cache=out["cache"])
def greedy():
    out = prefill(tokens=np.asarray([prompt], np.int32))
    for position in range(len(prompt), len(prompt) + new):
        out = step(out, int(np.argmax(out["logits"][0])), position)
greedy(); started = time.perf_counter(); greedy(); speed = new / (time.perf_counter() - started)
total = count = 0
for window in windows:  # the logits after each prefix, one decode per token
    out, rows = prefill(tokens=np.asarray([window[:1]], np.int32)), []
    for position, token in enumerate(window[1:], start=1):
        rows.append(out["logits"][0]); out = step(out, token, position)
    a, b = nll(np.asarray(rows + [out["logits"][0]]), window); total += a; count += b
print(json.dumps({"load": loaded, "tokens_per_second": speed, "perplexity": float(np.exp(total / count))}))
"""

RUNTIMES = (("kerasllm (model.keras)", KERAS, "keras"), ("transformers (hf)", TRANSFORMERS, "hf"),
            ("llama.cpp (gguf)", LLAMA_CPP, "gguf"), ("LiteRT (model.generate.tflite)", LITERT, "litert"))


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(preset: str, steps: int, folder: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from kerasllm import runs
    from kerasllm.data.text import reload_validation

    run_dir = folder / preset
    kerasllm("train", "transformer-lm", "--preset", preset, "--data", DATA, "--out", run_dir, "--epochs", "2", "--quiet",
             "--set", f"train.steps_per_epoch={steps}")
    for fmt in ("hf", "gguf", "tflite"):
        kerasllm("export", run_dir, "--format", fmt)
    run = runs.load_run(run_dir)
    tokenizer, context = run.artifacts["tokenizer"], run.config.model_args.max_sequence_length
    ids = [int(i) for i in tokenizer.encode(reload_validation(run.data_record)[:context * WINDOWS * 2])]
    export = run_dir / "export"
    paths = {"keras": run_dir / "model.keras", "hf": export / "hf", "gguf": export / "model.gguf",
             "litert": export / "model.generate.tflite"}
    task = {"windows": [ids[i * context:(i + 1) * context] for i in range(WINDOWS)], "prompt": ids[:PROMPT],
            "new": min(NEW, context - PROMPT),
            "context": context, **{key: str(path) for key, path in paths.items()}}
    (folder / "task.json").write_text(json.dumps(task))
    for name, script, key in RUNTIMES:
        done = subprocess.run([sys.executable, "-c", script, str(folder / "task.json")], capture_output=True, text=True,
                              cwd=folder)
        if done.returncode != 0:
            print(f"{name}: failed\n{done.stderr[-1500:]}", flush=True)
            continue
        found = json.loads(done.stdout.strip().splitlines()[-1])
        row = [dt.date.today().isoformat(), f"transformer-lm `{preset}` ({2 * steps} steps, context {context})", name,
               f"{size_of(paths[key]) / 1e6:.2f} MB", f"{found['load']:.2f} s", f"{found['tokens_per_second']:,.0f} ({task['new']} tokens)",
               f"{found['perplexity']:.4f}", machine()]
        append_row("A transformer-lm run in the runtimes it is exported to (`python bench/interop.py`, #31)",
                   ["date", "run", "runtime (file)", "size (model.keras: with its optimizer)", "load",
                    "greedy tokens/s, batch 1", "validation perplexity",
                    "machine"], row)
        print(" | ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=("tiny", "small"), help="default: tiny and small")
    parser.add_argument("--steps", type=int, default=120, help="training steps per epoch (2 epochs)")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"bench/interop.py needs {DATA} (tinyshakespeare); it is not there")
    for preset in args.preset or ("tiny", "small"):
        with tempfile.TemporaryDirectory() as folder:
            measure(preset, args.steps, Path(folder))


if __name__ == "__main__":
    main()
