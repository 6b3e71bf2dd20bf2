"""The README's tours, run as a user runs them (the installed command, stdout and stderr piped): every command
succeeds, and stderr holds nothing but kerasllm's own notes, no library log line (TensorFlow, absl, XNNPACK,
sentencepiece, Keras warnings …). The settings are shrunk so each tour takes seconds, not minutes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands.test_cli import LEGACY_SCRIPT
from tests.conftest import TINY, TINY_LM, need, optional
from tests.export.test_export_guide import agreement, run_snippet, snippets
from tests.tasks.test_seq2seq import TINY as TINY_SEQ2SEQ
from tests.tasks.test_seq2seq import reverse_pairs
from tests.tasks.test_text_classification import write_sst

pytestmark = pytest.mark.heavy  # the README tours run in the heavy tier (.ci/heavy)

OWN = ("note: ", "warning: ")  # the prefixes of kerasllm's own lines on stderr
# A user's shell: without the XLA_FLAGS that in-process tests leave behind (kerasllm sets its TensorFlow default there)
INHERITED = {name: value for name, value in os.environ.items() if name != "XLA_FLAGS"}


def kerasllm(folder: Path, *args, env: dict | None = None) -> str:
    """Run one command as a user would (piped, COLUMNS=80); fail on a non-zero exit, a "…" that cut something, or any
    stderr line that is not kerasllm's own."""
    done = subprocess.run([sys.executable, "-m", "kerasllm", *map(str, args)], cwd=folder, capture_output=True, text=True,
                          env={**INHERITED, "COLUMNS": "80", **(env or {})}, timeout=600)
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    assert "…" not in done.stdout, (args, done.stdout)  # at 80 columns, piped: tables wrap, lines stay whole
    foreign = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith(OWN)]
    assert foreign == [], (args, foreign)
    return done.stdout


def settings(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.mark.slow
def test_the_text_generation_tour(tmp_path, corpus_file):
    run = tmp_path / "lstm"
    kerasllm(tmp_path, "train", "lstm-textgen", "--data", corpus_file, "--out", run, *settings(*TINY))
    assert "perplexity" in kerasllm(tmp_path, "evaluate", run)
    kerasllm(tmp_path, "generate", run, "--prompt", "The ", "--prompt", "A ", "--stop", "\n", "--top-p", "0.9", "--max-length", "20")
    for fmt in ("tflite", "savedmodel"):  # tflite: XNNPACK's "Created TensorFlow Lite delegate" line
        kerasllm(tmp_path, "export", run, "--format", fmt)
    code = snippets(run / "export")  # the export folder's README: each format runs outside kerasllm
    assert sorted(code) == ["model.generate.tflite", "model.savedmodel", "model.tflite"]
    generated = run_snippet(run / "export", code.pop("model.generate.tflite"))  # LiteRT's prefill/decode loop
    assert generated.strip().endswith("the same as kerasllm generate --temperature 0: True"), generated
    for name, snippet in code.items():
        output = run_snippet(run / "export", snippet)
        assert agreement(output) == 1.0 and "next token after each example: [" in output, (name, output)  # decoded with the tokenizer file
    subprocess.run([sys.executable, "-c", LEGACY_SCRIPT], cwd=tmp_path, check=True, capture_output=True,
                   env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"))
    kerasllm(tmp_path, "export", "my_model.h5", "--format", "keras")  # Keras' UserWarnings while it migrates


@pytest.mark.slow
def test_the_classification_and_finetuning_tour(tmp_path):
    (tmp_path / "数据").mkdir()
    sst = write_sst(tmp_path / "数据")  # a non-Latin path: matplotlib's missing-glyph warnings on the curves' title
    mlm = tmp_path / "mlm"
    kerasllm(tmp_path, "train", "transformer-classifier", "--preset", "tiny", "--objective", "mlm", "--data", f"{sst}.train",
             "--out", mlm, "--epochs", "1", *settings("train.steps_per_epoch=3", "data.sequence_length=32"))
    assert "missing from font" in (mlm / "library.log").read_text()  # kept for the curious, not printed
    tuned = tmp_path / "tuned"
    kerasllm(tmp_path, "finetune", mlm, "--data", sst, "--method", "lora", "--lora-rank", "2", "--out", tuned, "--epochs", "1",
             *settings("train.steps_per_epoch=3"))
    kerasllm(tmp_path, "predict", tuned, "a gripping , funny film", "dull and lifeless", "--top-k", "1")
    for fmt in ("keras", "tflite"):
        kerasllm(tmp_path, "export", tuned, "--format", fmt)
    code = snippets(tuned / "export")
    assert "import kerasllm.zoo.layers" in code["model.keras"]  # its encoder is built from kerasllm's layers
    output = run_snippet(tuned / "export", code["model.tflite"])
    assert agreement(output) == 1.0 and re.search(r"classes: \['[01]', '[01]'\]", output), output


@pytest.mark.slow
def test_the_translation_tour(tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{t}\n" for s, t in reverse_pairs(300)))
    run = tmp_path / "seq2seq"
    kerasllm(tmp_path, "train", "transformer-seq2seq", "--preset", "tiny", "--data", pairs, "--out", run, "--epochs", "1",
             *TINY_SEQ2SEQ, *settings("data.tokenizer=sentencepiece", "data.vocab_size=300", "train.steps_per_epoch=3"))
    assert "bleu" in kerasllm(tmp_path, "evaluate", run).lower()
    kerasllm(tmp_path, "export", run, "--format", "savedmodel")  # sentencepiece's normalizer.cc LOG(INFO) line
    output = run_snippet(run / "export", snippets(run / "export")["model.savedmodel"])  # named inputs, the translate signature
    assert agreement(output) == 1.0 and "translate [" in output


@pytest.mark.slow
def test_the_jax_and_chat_tour(tmp_path, corpus_file):
    need("jax")
    run = tmp_path / "jax"
    kerasllm(tmp_path, "--backend", "jax", "train", "transformer-lm", "--precision", "mixed_bfloat16", "--data", corpus_file,
             "--out", run, "--epochs", "1", *TINY_LM, *settings("train.steps_per_epoch=3"))
    kerasllm(tmp_path, "--backend", "jax", "generate", run, "--prompt", "The ", "--max-length", "10")  # bfloat16 cache on JAX
    chat = tmp_path / "chat"
    kerasllm(tmp_path, "train", "transformer-lm", "--task", "chat", "--out", chat, "--epochs", "1", *TINY_LM,
             *settings("train.steps_per_epoch=3"))
    kerasllm(tmp_path, "compress", chat, "--method", "int8")  # oneDNN's "DT_INT8 only on platforms with AVX-512" line


@pytest.mark.slow
def test_offline_a_preset_by_name_is_one_line_in_seconds(tmp_path):
    """`KERASLLM_OFFLINE=1` (or no network): the name resolves from keras-hub's own lists without loading TensorFlow,
    and the command ends with kerasllm's one line before anything else is imported or retried."""
    import time

    for args in (["generate", "gpt2_base_en", "--prompt", "Hello"], ["download", "gpt2_base_en"]):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "kerasllm", *args], cwd=tmp_path, capture_output=True, text=True,
                              env={**INHERITED, "KERASLLM_OFFLINE": "1"}, timeout=120)
        seconds = time.monotonic() - started
        assert done.returncode == 2 and done.stderr.startswith("error: cannot reach www.kaggle.com"), (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and seconds < 5, (args, seconds, done.stderr)
    assert not (tmp_path / "presets").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt, package, marker", [("hf", "transformers", "AutoModelForCausalLM"), ("gguf", "llama_cpp", "Llama(")])
def test_the_hugging_face_and_gguf_snippets_run_as_written(tmp_path, corpus_file, fmt, package, marker):
    """docs/compress-and-deploy.md's transformers and llama-cpp-python snippets, copied as they are, after the
    commands they follow."""
    optional(package) if package == "llama_cpp" else need(package)
    kerasllm(tmp_path, "train", "transformer-lm", "--data", corpus_file, *TINY_LM, *settings("data.sequence_length=48",
                                                                                            "model_args.max_sequence_length=96"))
    run = kerasllm(tmp_path, "runs", "--latest", "transformer-lm").strip()
    kerasllm(tmp_path, "export", run, "--format", fmt)
    page = (Path(__file__).resolve().parents[2] / "docs" / "compress-and-deploy.md").read_text(encoding="utf-8")
    (snippet,) = [block for block in re.findall(r"```python\n(.*?)```", page, re.S) if marker in block]
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**INHERITED, "PATH": f"{Path(sys.executable).parent}:{INHERITED.get('PATH', '')}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.strip()) > len("ROMEO:"), done.stdout  # the prompt and 40 tokens after it


@pytest.mark.slow
def test_the_openai_client_snippet_runs_as_written(tmp_path):
    """docs/chat-and-serve.md's Python snippet, copied as it is, against `kerasllm serve $CHAT_RUN --port 8000`."""
    import socket
    import time

    need("openai")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken here; the snippet names it")
    chat = tmp_path / "chat"
    kerasllm(tmp_path, "train", "transformer-lm", "--task", "chat", "--out", chat, "--epochs", "1", *TINY_LM,
             *settings("train.steps_per_epoch=3"))
    server = subprocess.Popen([sys.executable, "-m", "kerasllm", "serve", chat, "--port", "8000", "--max-batch", "16"],
                              cwd=tmp_path, env=INHERITED, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "serving chat at http://localhost:8000/v1" in server.stdout.readline()
        page = (Path(__file__).resolve().parents[2] / "docs" / "chat-and-serve.md").read_text(encoding="utf-8")
        (snippet,) = re.findall(r"```python\n(.*?)```", page, re.S)
        deadline = time.time() + 60
        while True:  # the app is up once it prints its address; give uvicorn a moment to bind
            done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                                  env=INHERITED)
            if done.returncode == 0 or time.time() > deadline or "Connection" not in done.stderr:
                break
            time.sleep(1)
        assert done.returncode == 0 and done.stdout.endswith("\n"), done.stderr[-2000:]
    finally:
        server.terminate()
        server.communicate(timeout=30)
