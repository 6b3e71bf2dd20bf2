"""Every command through typer's CliRunner, including the error paths."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kerasllm import cli
from tests.conftest import assert_says, need, tiny_args


def invoke(runner, *args):
    return runner.invoke(cli.app, [str(a) for a in args])


def assert_user_error(result, text):
    assert result.exit_code == 2, result.output
    assert text in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_lists_the_commands(runner):
    result = invoke(runner, "--help")
    assert result.exit_code == 0
    for command in ("list", "info", "train", "evaluate", "generate", "predict", "finetune", "export", "doctor"):
        assert command in result.output


def test_list_and_info(runner):
    result = invoke(runner, "list")
    assert result.exit_code == 0 and "lstm-textgen" in result.output and "text-generation" in result.output
    rows = {row["name"]: row for row in json.loads(invoke(runner, "list", "--json").output)}
    assert rows["lstm-textgen"]["parameters"] > 300_000 and rows["cnn-classifier"]["parameters"] == 73_114
    assert rows["hub-classifier"]["parameters"] is None  # the preset decides, not 0
    assert rows["cnn-classifier"]["task"] == "image-classification" and rows["cnn-classifier"]["default_data"] == "builtin:digits"
    result = invoke(runner, "info", "lstm-textgen")
    assert result.exit_code == 0 and "model_args.units" in result.output and "LSTM hidden units" in result.output
    keys = {row["key"]: row["default"] for row in json.loads(invoke(runner, "info", "lstm-textgen", "--json").output)["keys"]}
    assert keys["model_args.units"] == 256 and keys["train.optimizer"] == "adamw"
    cnn = invoke(runner, "info", "cnn-classifier")
    assert cnn.exit_code == 0 and "preset mnist: image_size=28" in cnn.output


def test_unknown_model_is_one_line(runner):
    assert_user_error(invoke(runner, "info", "lstm-textgn"), "did you mean 'lstm-textgen'?")
    assert_user_error(invoke(runner, "train", "cnn"), "unknown model 'cnn'")


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "holds no text"),
    (b"\x00\x01\x02binary", "looks like a binary file"),
    (b"\xff\xfe\xfa bad", "is not UTF-8"),
])
def test_train_data_errors(runner, tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", path, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_train_config_errors(runner, tmp_path):
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--set", "model_args.unitz=3"), "valid keys in model_args")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--set", "train.epochs=many"), "train.epochs must be int")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--strategy", "tpus", "--out", tmp_path / "r", *tiny_args()),
                      "runtime.strategy must be auto, cpu, gpu, mirrored, tpu or multi-worker")
    assert_user_error(invoke(runner, "train"), "name a model to train")


@pytest.mark.slow
def test_train_never_overwrites_an_existing_run(runner, trained_run):
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    result = invoke(runner, "train", "lstm-textgen", "--out", trained_run, *tiny_args())
    assert_user_error(result, "already exists")
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before


def test_resume_errors(runner, tmp_path, trained_run):
    assert_user_error(invoke(runner, "train", "--resume", tmp_path), "is not a run folder")
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    shutil.rmtree(copy / "checkpoints")
    assert_user_error(invoke(runner, "train", "--resume", copy), "has no checkpoint: training stopped before the first one")
    assert_user_error(invoke(runner, "train", "--resume", trained_run, "--set", "model_args.units=8"),
                      "--resume cannot change model_args")


def test_run_folder_has_everything(trained_run):
    for name in ("config.yaml", "data.json", "tokenizer.json", "model.keras", "history.json", "metrics.json",
                 "curves.png", "README.md", "checkpoints", "logs"):
        assert (trained_run / name).exists(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["after_training"]["loss"] < metrics["before_training"]["loss"]
    assert "kerasllm train --config" in (trained_run / "README.md").read_text()
    data = json.loads((trained_run / "data.json").read_text())
    assert data["split"] == "last 10% of the characters is validation" and data["train_characters"] == 18000


def test_config_file_reproduces_the_run(runner, trained_run, tmp_path):
    out = tmp_path / "again"
    result = invoke(runner, "train", "--config", trained_run / "config.yaml", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    *epochs, summary = [json.loads(line) for line in result.stdout.splitlines()]  # JSON Lines only
    assert [line["epoch"] for line in epochs] == [1, 2]
    assert [line["event"] for line in epochs] == ["epoch", "epoch"] and summary["event"] == "summary"  # each line says what it is
    assert summary["run"] == str(out)
    first = json.loads((trained_run / "metrics.json").read_text())
    assert summary["after_training"]["loss"] == pytest.approx(first["after_training"]["loss"], abs=1e-5)
    assert (out / "config.yaml").read_text() == (trained_run / "config.yaml").read_text()


def test_train_resume_extends_a_finished_run(runner, trained_run, tmp_path):
    copy = tmp_path / "more"
    shutil.copytree(trained_run, copy)
    result = invoke(runner, "train", "--resume", copy, "--epochs", 3, "--quiet")
    assert result.exit_code == 0, result.output
    history = json.loads((copy / "history.json").read_text())
    assert len(history["loss"]) == 3


def test_evaluate(runner, trained_run, corpus_file):
    result = invoke(runner, "evaluate", trained_run)
    assert result.exit_code == 0, result.output
    for key in ("loss", "perplexity", "bits_per_char", "accuracy"):
        assert key in result.output
    values = json.loads(invoke(runner, "evaluate", trained_run, "--json").output)
    assert values["bits_per_char"] == pytest.approx(values["loss"] / 0.6931471805599453)
    metrics = json.loads((trained_run / "metrics.json").read_text())["after_training"]
    assert values["loss"] == pytest.approx(metrics["loss"], rel=1e-5)
    other = json.loads(invoke(runner, "evaluate", trained_run / "model.keras", "--data", corpus_file, "--json").output)
    assert other["data"] == str(corpus_file) and other["tokens"] == 20000


def test_evaluate_errors(runner, tmp_path, trained_run):
    assert_user_error(invoke(runner, "evaluate", tmp_path / "nope"), "does not exist")
    assert_user_error(invoke(runner, "evaluate", tmp_path), "not a run folder")
    copy = tmp_path / "corrupt"
    shutil.copytree(trained_run, copy)
    (copy / "model.keras").write_bytes(b"not a zip file")
    assert_user_error(invoke(runner, "evaluate", copy), "is not a complete model file: its 14 bytes do not read as a .keras file")
    loose = tmp_path / "loose.keras"
    shutil.copy(trained_run / "model.keras", loose)
    assert_user_error(invoke(runner, "evaluate", loose), "is not inside a run folder, so its config.yaml, data.json and tokenizer")


def test_debug_shows_the_traceback(runner, tmp_path):
    result = invoke(runner, "--debug", "evaluate", tmp_path / "nope")
    assert result.exit_code != 0 and result.exception is not None and type(result.exception).__name__ == "UserError"


def test_generate_streams_a_continuation(runner, trained_run):
    result = invoke(runner, "generate", trained_run, "--prompt", "The ", "--length", 40, "--seed", 3)
    assert result.exit_code == 0, result.output
    text = result.output.rstrip("\n")
    assert text.startswith("The ") and len(text) == 44
    again = invoke(runner, "generate", trained_run, "--prompt", "The ", "--length", 40, "--seed", 3)
    assert again.output == result.output  # --seed repeats
    greedy = invoke(runner, "generate", trained_run, "--prompt", "The ", "--length", 20, "--temperature", 0, "--top-k", 3)
    assert greedy.exit_code == 0 and len(greedy.output.rstrip("\n")) == 24
    assert_user_error(invoke(runner, "generate", trained_run, "--temperature", -1), "--temperature must be")


@pytest.mark.parametrize("fmt", ["keras", "h5", "savedmodel", "tflite"])
def test_export_formats_match_the_source(runner, trained_run, tmp_path, fmt):
    out = tmp_path / ("model.savedmodel" if fmt == "savedmodel" else f"model.{ 'keras' if fmt == 'keras' else fmt}")
    result = invoke(runner, "export", trained_run, "--format", fmt, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.exists() and "max |diff|" in result.output
    diff = float(result.output.split("against the source: max |diff| ")[1].split()[0].rstrip(","))
    assert diff <= 1e-4 and "top-1 agreement 100.00%" in result.output and "latency per batch" in result.output
    assert_user_error(invoke(runner, "export", trained_run, "--format", fmt, "--out", out), "already exists")


def test_export_errors(runner, trained_run, tmp_path):
    assert_user_error(invoke(runner, "export", trained_run, "--format", "onnx2"), "unknown export format 'onnx2'")
    assert_user_error(invoke(runner, "export", trained_run / "model.keras", "--out", trained_run / "model.keras"),
                      "is the source model itself")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n garbage")
    assert_user_error(invoke(runner, "export", bad), "is not a complete model file: its 14 bytes do not read as an HDF5 file")
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    assert_user_error(invoke(runner, "export", text), "is not a model file")


LEGACY_SCRIPT = """
import numpy as np, tensorflow as tf
from tensorflow import keras  # tf.keras 2.x, as the tutorial wrote it
vocab = 30
model = keras.Sequential([keras.layers.Embedding(vocab, 8), keras.layers.LSTM(16, return_sequences=True),
                          keras.layers.Dense(vocab, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
x = np.random.RandomState(0).randint(0, vocab, (4, 12)).astype("int32")
model.fit(x, x, epochs=1, verbose=0)
model.save("my_model.h5")
np.save("x.npy", x)
np.save("y.npy", model.predict(x, verbose=0))
"""


@pytest.mark.slow
def test_export_reads_a_tf_keras_2_h5(runner, tmp_path):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run([sys.executable, "-c", LEGACY_SCRIPT], cwd=tmp_path, env=env, check=True, capture_output=True)
    import keras
    import numpy as np

    with pytest.raises(Exception, match="time_major"):
        keras.saving.load_model(tmp_path / "my_model.h5")  # the failure this path exists for
    result = invoke(runner, "export", tmp_path / "my_model.h5", "--format", "keras")
    assert result.exit_code == 0, result.output
    assert "dropped LSTM.time_major" in result.output
    migrated = keras.saving.load_model(tmp_path / "my_model.keras")
    np.testing.assert_allclose(migrated.predict(np.load(tmp_path / "x.npy"), verbose=0), np.load(tmp_path / "y.npy"), atol=1e-5)


@pytest.mark.slow
def test_installed_script_answers_help_and_list_without_tensorflow():
    script = Path(sys.executable).parent / "kerasllm"
    assert script.exists(), "install the project (pip install -e .) to get the kerasllm script"
    result = subprocess.run([str(script), "list"], capture_output=True, text=True)
    assert result.returncode == 0 and "lstm-textgen" in result.stdout
    for args in (["list"], ["--help"], ["info", "transformer-lm"], ["list", "--json"]):
        probe = (f"import sys\nfrom kerasllm import cli\ntry:\n    cli.app({args!r})\nexcept SystemExit:\n    pass\n"
                 "print(sorted(m for m in ('tensorflow', 'keras', 'keras_hub', 'jax') if m in sys.modules))")
        found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        assert found.stdout.strip().endswith("[]"), (args, found.stdout[-500:], found.stderr[-500:])


@pytest.mark.slow
def test_tensorflow_loads_without_the_packages_it_would_import_for_nothing():
    probe = ("import json, sys\nfrom kerasllm.core.quiet import UNUSED_AT_START, load_tensorflow\nload_tensorflow()\n"
             "loaded = [m for m in UNUSED_AT_START if m in sys.modules]\nimport matplotlib, tensorflow as tf\n"
             "print(json.dumps([loaded, float(tf.constant(2.0))]))")
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [[], 2.0]  # none loaded; importable afterwards
    need("jax")
    on_jax = subprocess.run([sys.executable, "-c", probe.replace("tf.constant(2.0)", "2.0")], capture_output=True, text=True,
                            env=dict(os.environ, KERAS_BACKEND="jax"))
    assert on_jax.returncode == 0, on_jax.stderr[-2000:]  # Keras' JAX backend needs JAX and SciPy: they load
    assert sorted(json.loads(on_jax.stdout.strip().splitlines()[-1])[0]) == ["jax", "scipy"]


def test_the_backend_is_found_as_keras_finds_it(tmp_path, monkeypatch):
    from kerasllm.core.quiet import keras_backend

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert keras_backend() == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert keras_backend() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert keras_backend() == "tensorflow"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_subword_tokenizers_train_evaluate_and_generate(runner, corpus_file, tmp_path, kind):
    out = tmp_path / kind
    result = invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", out, "--quiet", *tiny_args(),
                    "--set", f"data.tokenizer={kind}", "--set", "data.vocab_size=500")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == kind
    values = json.loads(invoke(runner, "evaluate", out, "--json").output)
    assert values["bits_per_token"] > values["bits_per_char"] > 0  # a token covers more than one character
    generated = invoke(runner, "generate", out, "--prompt", "The ", "--max-length", 10, "--seed", 1)
    assert generated.exit_code == 0 and generated.output.startswith("The ") and len(generated.output.strip()) > 4


def test_generate_a_batch_of_prompts_with_stop_strings(runner, trained_run):
    result = invoke(runner, "generate", trained_run, "--prompt", "The ", "--prompt", "A ", "--max-length", 30,
                    "--top-p", 0.9, "--stop", "\n", "--seed", 2)
    assert result.exit_code == 0, result.output
    blocks = result.output.split("\n\n")
    assert blocks[0].startswith("The ") and blocks[1].startswith("A ")


def test_sentencepiece_vocabulary_too_small_says_how_large(runner, corpus_file, tmp_path):
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", tmp_path / "sp", *tiny_args(),
                             "--set", "data.tokenizer=sentencepiece", "--set", "data.vocab_size=100"), "raise it to at least")
    assert not (tmp_path / "sp").exists()


@pytest.mark.parametrize("args, facts", [
    (["generate", "RUN", "--length", "abc"], ["--max-length", "integer", "generate --help"]),
    (["compress", "RUN", "--sparsity", "abc"], ["--sparsity", "number"]),
    (["serve"], ["Missing argument", "serve --help"]),
])
def test_a_bad_option_value_is_one_line_not_a_usage_box(runner, args, facts):
    result = invoke(runner, *args)
    assert result.exit_code == 2 and "╭" not in result.output and "Usage:" not in result.output
    assert_says(result.stderr, "error: ", *facts)


def test_runs_lists_the_runs_and_names_the_latest_of_a_model(runner, trained_run, tmp_path):
    """#33: `ls -d runs/transformer-lm-* | tail -1` picked a compressed copy once there was one."""
    import shutil

    folder = tmp_path / "runs"
    shutil.copytree(trained_run, folder / "lstm-textgen-20261201-120000")
    copy = invoke(runner, "compress", folder / "lstm-textgen-20261201-120000", "--method", "int8", "--out", folder / "lstm-textgen-zz-int8")
    assert copy.exit_code == 0, copy.output
    rows = json.loads(invoke(runner, "runs", folder, "--json").stdout)
    assert [row["kind"] for row in rows] == ["compressed", "trained"] and rows[0]["source"].endswith("lstm-textgen-20261201-120000")
    assert rows[1]["metric"] and rows[1]["complete"] and rows[0]["size_bytes"] > 0
    latest = invoke(runner, "runs", folder, "--latest", "lstm-textgen")
    assert latest.exit_code == 0 and latest.stdout.strip() == str(folder / "lstm-textgen-20261201-120000")  # not the copy
    table = invoke(runner, "runs", folder)
    assert "lstm-textgen-zz-int8" in table.stdout and "compressed of lstm-textgen-20261201-120000" in table.stdout
    assert "2 runs" in table.stdout
    assert_user_error(invoke(runner, "runs", folder, "--latest", "transformer-lm"), "no finished transformer-lm run")


def fake_run(folder: Path, name: str, model: str, made: float, source: str = "") -> Path:
    """A run folder as `kerasllm runs` reads it (marker, config.yaml, metrics.json), made at `made` (seconds)."""
    import os

    path = folder / name
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(f"model: {model}\n")
    (path / "metrics.json").write_text(json.dumps({"compressed_from": {"path": source}} if source else {}))
    (path / "model.keras").write_bytes(b"x" * 1000)
    (path / ".kerasllm-run").write_text("")
    os.utime(path / ".kerasllm-run", (made, made))
    return path


def test_runs_prune_lists_first_keeps_the_newest_and_their_sources(runner, tmp_path):
    """#33: runs/ grew to 1.3 GB in one tour with no documented way to clean it."""
    folder = tmp_path / "runs"
    base = fake_run(folder, "lstm-textgen-1", "lstm-textgen", 1e9)
    old = fake_run(folder, "lstm-textgen-2", "lstm-textgen", 1e9 + 10)
    fake_run(folder, "lstm-textgen-3", "lstm-textgen", 1e9 + 20, source=str(base))  # a copy of the oldest run
    newest = fake_run(folder, "lstm-textgen-4", "lstm-textgen", 1e9 + 30)
    other = fake_run(folder, "cnn-classifier-1", "cnn-classifier", 1e9 + 5)
    mine = folder / "notes"  # not kerasllm's
    mine.mkdir()
    (mine / "config.yaml").write_text("model: lstm-textgen\n")
    listed = invoke(runner, "runs", folder, "--prune", "--keep", "2")
    assert listed.exit_code == 0 and "lstm-textgen-2" in listed.stdout and "add --yes" in listed.stdout
    assert old.is_dir()  # listed, not deleted
    done = invoke(runner, "runs", folder, "--prune", "--keep", "2", "--yes")
    assert done.exit_code == 0 and "deleted 1 run" in done.stdout
    assert not old.exists() and base.is_dir() and newest.is_dir() and other.is_dir() and mine.is_dir()  # base: a kept copy's source
    assert "nothing to prune" in invoke(runner, "runs", folder, "--prune", "--keep", "2").stdout
    assert invoke(runner, "runs", folder, "--prune", "--keep", "0", "--model", "cnn-classifier", "--yes").exit_code == 0
    assert not other.exists() and newest.is_dir()
    assert_user_error(invoke(runner, "runs", folder, "--prune", "--keep", "-1"), "--keep must be 0 or more")
    tuned = tmp_path / "tuned"  # a fine-tune records its base's model file, not its folder
    base = fake_run(tuned, "lstm-textgen-1", "lstm-textgen", 1e9)
    fake_run(tuned, "lstm-textgen-2", "lstm-textgen", 1e9 + 10, source=str(base / "model.keras"))
    assert invoke(runner, "runs", tuned, "--prune", "--keep", "1", "--yes").exit_code == 0 and base.is_dir()


def test_doctor_clears_only_the_compilation_caches_kerasllm_made(tmp_path, monkeypatch):
    from kerasllm import compilation

    monkeypatch.setenv("KERASLLM_CACHE_DIR", str(tmp_path))
    ours = tmp_path / "xla" / f"tensorflow-2.21.0-{compilation.cpu_fingerprint()}"
    ours.mkdir(parents=True)
    (ours / "program").write_bytes(b"x" * 2048)
    theirs = tmp_path / "xla" / "my-notes"
    theirs.mkdir()
    assert compilation.clear_compilation_caches() == (1, 2048)
    assert not ours.exists() and theirs.is_dir()


def test_generate_of_a_missing_folder_names_presets_and_download(runner, tmp_path):
    result = invoke(runner, "generate", tmp_path / "presets" / "gpt2", "--prompt", "x")
    assert_says(result.stderr, "does not exist", "keras-hub preset", "kerasllm download")


def test_long_work_shows_a_bar_in_a_terminal_and_nothing_when_piped(monkeypatch):
    """`evaluate --beam` decoding takes minutes: a transient bar on stderr in a terminal; piped (or --json), nothing."""
    import io

    from rich.console import Console

    from kerasllm.commands import common

    piped = io.StringIO()
    monkeypatch.setattr(common, "errors", Console(file=piped, force_terminal=False))
    with common.progress_bar("decoding", "sentences") as advance:
        advance(5, 10)
    assert piped.getvalue() == ""
    terminal = io.StringIO()
    monkeypatch.setattr(common, "errors", Console(file=terminal, force_terminal=True, width=80))
    with common.progress_bar("decoding (beam 4)", "sentences") as advance:
        advance(5, 10)
    assert "decoding (beam 4)" in terminal.getvalue() and "5/10" in terminal.getvalue()

