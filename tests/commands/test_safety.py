"""What a new user tripped over: --overwrite never loses data, bad values are one-line errors,
half-finished states point to the fix, and TensorFlow's start-up lines stay off stderr."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import assert_says, tiny_args

ROOT = Path(__file__).resolve().parents[2]

# --- --overwrite --------------------------------------------------------------------------

def test_overwrite_never_deletes_the_current_folder_or_a_parent(runner, tmp_path, corpus_file, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", ".", "--overwrite", *tiny_args()),
                      "replaces only run folders made by kerasllm")
    (work / "config.yaml").write_text("model: lstm-textgen\n")  # even if it looks like a run
    (work / "data.json").write_text("{}")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", ".", "--overwrite", *tiny_args()),
                      "is the current folder or a parent of it")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", "..", "--overwrite", *tiny_args()),
                      "--overwrite")
    assert (work / "notes.txt").read_text() == "mine"


def test_overwrite_never_deletes_the_data(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    data = run / "corpus.txt"
    data.write_text(Path(json.loads((run / "data.json").read_text())["source"]).read_text())
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", data, "--out", run, "--overwrite", *tiny_args()),
                      "which holds")
    assert data.is_file()


def test_overwrite_replaces_an_old_run_only_after_every_check(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.name for p in run.iterdir())
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", tmp_path / "missing.txt", "--out", run, "--overwrite",
                             *tiny_args()), "does not exist")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", trained_run / "config.yaml", "--out", run, "--overwrite",
                             *tiny_args(), "--set", "data.sequence_length=100000"), "too few")
    assert sorted(p.name for p in run.iterdir()) == before  # still the old run
    result = invoke(runner, "train", "lstm-textgen", "--data", json.loads((run / "data.json").read_text())["source"],
                    "--out", run, "--overwrite", "--quiet", *tiny_args())
    assert result.exit_code == 0, result.output
    assert (run / ".kerasllm-run").is_file() and not list(tmp_path.glob(".run.replaced-*"))


def test_a_failed_build_leaves_no_run_folder(runner, tmp_path, corpus_file):
    """A builder that refuses its settings: one line, exit 2, and no run folder (a throwaway model, registered for this
    test only, so the global registry is left as it was)."""
    import dataclasses

    from kerasllm import catalog
    from kerasllm.core.errors import UserError

    def broken(hparams, info):
        raise UserError("embedding_dim 8 is too small for this vocabulary; raise model_args.embedding_dim")

    spec = dataclasses.replace(catalog.model("lstm-textgen"), name="broken-lstm", build=broken)
    with catalog.models().registered(spec.name, spec):
        result = invoke(runner, "train", "broken-lstm", "--data", corpus_file, "--out", tmp_path / "run", *tiny_args())
    assert "broken-lstm" not in catalog.names()
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert_says(result.stderr, "error: ", "embedding_dim 8", "raise model_args.embedding_dim")
    assert not (tmp_path / "run").exists()


def test_out_naming_an_existing_file(runner, tmp_path, corpus_file):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", target, *tiny_args()),
                      "is an existing file")
    assert target.read_text() == "x"


def test_export_overwrite_never_deletes_a_run_or_other_files(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert_user_error(invoke(runner, "export", run, "--format", "savedmodel", "--out", run, "--overwrite"),
                      "is a folder that is not a SavedModel")
    notes = tmp_path / "notes.tflite.txt"
    notes.write_text("keep")
    assert_user_error(invoke(runner, "export", run, "--format", "tflite", "--out", notes, "--overwrite"), "needs an output path ending in .tflite")
    assert (run / "model.keras").is_file() and notes.read_text() == "keep"
    out = tmp_path / "m.savedmodel"
    assert invoke(runner, "export", run, "--format", "savedmodel", "--out", out).exit_code == 0
    again = invoke(runner, "export", run, "--format", "savedmodel", "--out", out, "--overwrite")
    assert again.exit_code == 0, again.output
    assert (out / "saved_model.pb").is_file() and not list(tmp_path.glob(".m.partial*"))


# --- values and one-line errors -----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["evaluate", "{run}", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["generate", "{run}", "--seed", "-1"], "--seed must be between 0"),
    (["generate", "{run}", "--seed", str(2**32)], "--seed must be between 0"),
    (["generate", "{run}", "--temperature", "nan"], "--temperature must be"),
    (["generate", "{run}", "--top-k", "-1"], "--top-k must be"),
    (["generate", "{run}", "--top-p", "0"], "--top-p must be"),
    (["export", "{run}", "--tolerance", "-1", "--out", "{tmp}/m.keras"], "--tolerance must be 0 or more"),
    (["train", "lstm-textgen", "--seed", "-1"], "train.seed must be between 0"),
    (["train", "lstm-textgen", "--set", "train.early_stopping_patience=-1"], "early_stopping_patience"),
    (["train", "lstm-textgen", "--data", ""], "data.source is empty"),
])
def test_values_are_validated_in_one_line(runner, trained_run, tmp_path, args, message):
    args = [a.format(run=trained_run, tmp=tmp_path) for a in args]
    assert_user_error(invoke(runner, *args), message)
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.slow
def test_a_model_of_another_type_inside_a_run(runner, trained_run, tmp_path):
    from tests.tasks.test_images import tiny_cnn_args

    cnn = tmp_path / "cnn"
    assert invoke(runner, "train", "cnn-classifier", "--out", cnn, "--quiet", *tiny_cnn_args()).exit_code == 0
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.copy(cnn / "model.keras", run / "model.keras")
    assert_user_error(invoke(runner, "evaluate", run), "does not fit this run's lstm-textgen")
    shutil.copy(cnn / "config.yaml", run / "config.yaml")  # a config swapped for another model's
    assert_user_error(invoke(runner, "evaluate", run), "restore the run's own config.yaml")


@pytest.mark.parametrize("damage", ["half a zip", "missing"])
def test_a_run_without_a_complete_model_points_to_resume_and_resume_rebuilds_it(runner, trained_run, tmp_path, damage):
    """The advice leads somewhere that works: `train --resume` writes model.keras again from the best checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    if damage == "missing":
        (run / "model.keras").unlink()
    else:
        (run / "model.keras").write_bytes(b"PK\x03\x04 half a zip")
    assert_user_error(invoke(runner, "evaluate", run), f"kerasllm train --resume {run}")
    assert_user_error(invoke(runner, "generate", run), f"kerasllm train --resume {run}")
    resumed = invoke(runner, "train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert invoke(runner, "evaluate", run).exit_code == 0
    assert json.loads((run / "history.json").read_text()) == json.loads((trained_run / "history.json").read_text())  # no new epoch


def checksums(folder: Path) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_resume_writes_nothing_into_the_run(runner, trained_run, corpus_file, tmp_path):
    """Every check runs before the first write: changed data, a truncated checkpoint, a missing tokenizer."""
    data = tmp_path / "corpus.txt"
    shutil.copy(corpus_file, data)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for name in ("config.yaml", "data.json", "README.md"):
        (run / name).write_text((run / name).read_text(encoding="utf-8").replace(str(corpus_file), str(data)), encoding="utf-8")
    before = checksums(run)
    data.write_text(corpus_file.read_text() + " more text", encoding="utf-8")
    assert_user_error(invoke(runner, "train", "--resume", run, "--epochs", "3"), "changed since")
    assert checksums(run) == before
    data.write_text(corpus_file.read_text(), encoding="utf-8")
    newest = sorted((run / "checkpoints").iterdir())[-1] / "model.weights.h5"
    newest.write_bytes(newest.read_bytes()[:1000])
    before = checksums(run)
    assert_user_error(invoke(runner, "train", "--resume", run, "--epochs", "3"), "is unreadable or does not fit this model")
    assert checksums(run) == before
    shutil.rmtree(run)
    shutil.copytree(trained_run, run)
    (run / "tokenizer.json").unlink()
    before = checksums(run)
    assert_user_error(invoke(runner, "train", "--resume", run, "--epochs", "3"), "tokenizer.json")
    assert checksums(run) == before


def test_no_refused_command_writes_into_a_run(runner, trained_run, corpus_file, tmp_path):
    """Each command refused against an existing run leaves every file of it as it was."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = checksums(run)
    missing = tmp_path / "missing.txt"
    refused = [
        (["train", "lstm-textgen", "--data", corpus_file, "--out", run, *tiny_args()], "already exists"),
        (["train", "lstm-textgen", "--data", missing, "--out", run, "--overwrite", *tiny_args()], "does not exist"),
        (["train", "--resume", run, "--set", "model_args.units=8"], "--resume cannot change model_args"),
        (["train", "--resume", run, "--set", "train.steps_per_epoch=-1"], "train.steps_per_epoch must be 0"),
        (["finetune", run, "--data", corpus_file, "--out", run], "already exists"),
        (["finetune", run, "--data", corpus_file, "--method", "lora", "--out", tmp_path / "ft"], "no attention layers for LoRA"),
        (["evaluate", run, "--data", missing], "does not exist"),
        (["evaluate", run, "--batch-size", "0"], "--batch-size must be at least 1"),
        (["generate", run, "--beam", "100000"], "more than 256 beams"),
        (["export", run, "--format", "onnx2"], "unknown export format"),
        (["export", run, "--out", run / "model.keras", "--overwrite"], "is the source model itself"),
        (["export", run, "--format", "h5", "--out", run / "model.h5"], "would write into the run folder"),
    ]
    for args, message in refused:
        assert_user_error(invoke(runner, *args), message)
        assert checksums(run) == before, args


def test_resuming_a_finished_run_says_there_is_nothing_to_do(runner, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = invoke(runner, "train", "--resume", run)
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_ctrl_c_names_the_real_run_folder(runner, corpus_file, trained_run, tmp_path, monkeypatch):
    import kerasllm.train.trainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kerasllm.train.trainer, "train", interrupted)
    result = invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", tmp_path / "run", *tiny_args())
    assert result.exit_code == 130 and "RUN_FOLDER" not in result.output
    assert "nothing was kept" in result.stderr
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    result = invoke(runner, "train", "--resume", run, "--epochs", "3")
    assert result.exit_code == 130 and f"continue with `kerasllm train --resume {run}`" in result.stderr


def test_evaluate_from_another_folder_uses_absolute_data_paths(runner, trained_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Path(json.loads((trained_run / "data.json").read_text())["source"]).is_absolute()
    assert invoke(runner, "evaluate", trained_run).exit_code == 0


def test_builtin_corpus_of_another_python_release_says_why(runner, tmp_path):
    from kerasllm.core.errors import UserError
    from kerasllm.data.splits import check_unchanged

    then = {"source": "builtin:python-docs", "sha256": "a", "python_version": "3.11.7"}
    with pytest.raises(UserError, match=r"Python 3\.11\.7.*pass --data builtin:python-docs"):
        check_unchanged({"sha256": "b", "python_version": "3.11.9"}, then)


def test_version(runner):
    from kerasllm import __version__

    result = invoke(runner, "--version")
    assert result.exit_code == 0 and result.output.strip() == f"kerasllm {__version__}"


# --- images: wrong data is handled or refused ---------------------------------------------

def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    from PIL import Image

    from kerasllm.data.images import read_image

    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint8 and image.min() == 0 and image.max() == 255 and len(np.unique(image)) > 32


def test_nan_in_a_float_npz_is_refused(tmp_path):
    from kerasllm.core.errors import UserError
    from kerasllm.data.images import load_images

    x = np.random.default_rng(0).random((10, 4, 4)).astype(np.float32)
    x[3, 1, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(UserError, match="1 image\\(s\\) contain NaN"):
        load_images(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(UserError, match="empty .npz"):
        load_images(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "none.npz", x=np.zeros((0, 4, 4)), y=np.zeros(0, int))
    with pytest.raises(UserError, match="holds no"):
        load_images(str(tmp_path / "none.npz"))


def test_hidden_folders_are_not_classes(tmp_path):
    from PIL import Image

    from kerasllm.data.images import load_images

    for name in ("cats", "dogs", ".thumbs", "__MACOSX"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((6, 6), i * 40, np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cats" / ".hidden").mkdir()
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "cats" / ".hidden" / "x.png")
    split = load_images(str(tmp_path), 0.25)
    assert split.class_names == ["cats", "dogs"] and split.record["train_examples"] + split.record["validation_examples"] == 8


def test_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from kerasllm.core.errors import UserError
    from kerasllm.data.images import read_image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4,096 pixels is "too many" now
    with pytest.raises(UserError, match="too large to decode safely"):
        read_image(tmp_path / "big.png")


def test_empty_data_source_does_not_read_the_current_folder(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("do not train on me " * 100)
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--set", "data.source="), "data.source is empty")


def test_an_unwritable_run_location_is_one_line(runner, tmp_path, corpus_file):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    assert_user_error(invoke(runner, "train", "lstm-textgen", "--data", corpus_file, "--out", blocker / "run", *tiny_args()),
                      "cannot write the run folder")


# --- what the terminal shows --------------------------------------------------------------

@pytest.mark.slow
def test_a_user_error_after_tensorflow_loads_is_one_line_on_stderr(trained_run, tmp_path):
    """TF's C++ start-up lines (absl, oneDNN, cudart, cuInit) are hidden; --debug shows them."""
    script = Path(sys.executable).parent / "kerasllm"
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "model.keras").write_bytes(b"not a zip")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([str(script), "evaluate", str(run)], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "not a complete model file" in result.stderr
    ok = subprocess.run([str(script), "generate", str(trained_run), "--max-length", "5"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0 and ok.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.heavy)])
def test_a_signal_checkpoints_then_says_how_to_resume_and_resume_is_exact(corpus_file, tmp_path, signal_name):
    """SIGTERM is handled as Ctrl-C is: a checkpoint at the next step's end, one line, exit 130; the resumed run ends
    with the same weights as a run that was never stopped."""
    import signal
    import time

    import keras

    settings = [*tiny_args(), "--set", "train.steps_per_epoch=120", "--set", "train.epochs=4", "--set", "runtime.deterministic=true",
                "--set", "train.sample_length=0", "--set", "model_args.dropout=0.2"]
    base = [sys.executable, "-m", "kerasllm", "train", "lstm-textgen", "--data", str(corpus_file), "--quiet", *settings]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    first = subprocess.run([*base, "--out", str(straight)], capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-2000:]
    process = subprocess.Popen([*base, "--out", str(stopped)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 120
    while not (stopped / "metrics.json").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # training has started
    process.send_signal(getattr(signal, signal_name))
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert_says(stderr.strip().splitlines()[-1], "interrupted", f"`kerasllm train --resume {stopped}`")
    newest = sorted((stopped / "checkpoints").iterdir())[-1]
    state = json.loads((newest / "state.json").read_text())
    assert state["epoch"] < 4 and not (stopped / "model.keras").exists()  # stopped part-way, at a step's end
    resumed = subprocess.run([sys.executable, "-m", "kerasllm", "train", "--resume", str(stopped), "--quiet"], capture_output=True,
                             text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    one = keras.saving.load_model(straight / "model.keras", compile=False).get_weights()
    two = keras.saving.load_model(stopped / "model.keras", compile=False).get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, two)) <= 1e-6


@pytest.mark.slow
def test_a_process_that_cannot_reach_a_steps_end_still_ends_on_sigterm(tmp_path):
    """A worker blocked on a dead peer runs no Python handler; the watcher thread ends it `grace_seconds` after SIGTERM."""
    import signal
    import time

    script = ("import time\nfrom kerasllm.core.interrupts import graceful_stop\nprint('ready', flush=True)\n"
              "with graceful_stop(lambda: None, grace_seconds=1.0, where='RUN'):\n    time.sleep(120)  # never checks the request\n")
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert_says(stderr, "stopped: ", "within 1 s", "`kerasllm train --resume RUN`")


# --- a path that is there but is not what was asked for -------------------------------------

@pytest.mark.parametrize("model", ["lstm-textgen", "cnn-classifier", "lstm-classifier", "lstm-seq2seq"])
def test_a_device_given_as_data_is_named_for_what_it_is(runner, tmp_path, model):
    """/dev/null exists: "does not exist" would not be true, and Python's NotADirectoryError is no message."""
    assert_user_error(invoke(runner, "train", model, "--data", "/dev/null", "--out", tmp_path / "run"), "/dev/null is not a regular file or folder")
    assert not (tmp_path / "run").exists()


def test_a_folder_given_as_a_file_is_named_and_a_refused_option_prints_no_text(runner, tmp_path, trained_run):
    assert_user_error(invoke(runner, "train", "--config", tmp_path), f"config file {tmp_path} is a folder")
    assert_user_error(invoke(runner, "generate", trained_run, "--file", tmp_path), f"--file {tmp_path} is a folder")
    result = invoke(runner, "generate", trained_run, "--prompt", "The", "--top-k", "100000")
    assert_user_error(result, "--top-k 100000 is more than the model's")
    assert result.stdout == ""  # the prompt is written with the first new text, not before a refusal


def test_a_refused_run_announces_no_run_folder_or_strategy(runner, tmp_path):
    """`--data nothere.txt` once printed "training … → runs/…" and "1 device (CPU); global batch …" before its error."""
    result = invoke(runner, "train", "lstm-textgen", "--data", tmp_path / "nothere.txt", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert result.stdout == "" and not (tmp_path / "run").exists()
