"""`kerasllm compress --method distill`: a smaller student trained from scratch to match a run (Keras' Distiller through
the shared trainer), measured against it. The runs are in the slow tier; the loss and the refusals are fast."""

import json
import shutil

import numpy as np
import pytest

from kerasllm.core import files
from kerasllm.export import saving
from tests.commands.test_cli import assert_user_error, invoke
from tests.conftest import TINY_LM
from tests.tasks.test_text_classification import TINY_LSTM, TINY_TRANSFORMER, write_sst

SMALLER = ["--set", "model_args.hidden_dim=8", "--set", "model_args.num_heads=1"]


@pytest.fixture(scope="module")
def distilled_lm(runner, lm_run, tmp_path_factory):
    """(the student, what compress printed); the teacher is `teacher` beside it, a copy of `lm_run`, in one runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    shutil.copytree(lm_run, runs / "teacher")
    out = runs / "student"
    result = invoke(runner, "compress", runs / "teacher", "--method", "distill", *SMALLER, "--epochs", "2", "--temperature", "3",
                    "--alpha", "0.25", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.mark.slow
def test_a_distilled_student_is_a_run_of_its_own_measured_against_its_teacher(distilled_lm, lm_run):
    out, printed = distilled_lm
    metrics = json.loads((out / "metrics.json").read_text())
    # the teacher in the same runs folder is recorded from the student's folder (#33: moving runs/ keeps the pair)
    assert printed["after"] == metrics["after"] and metrics["compressed_from"] == {
        "path": "../teacher", "sha256": files.file_sha256(lm_run / "model.keras")}
    assert files.read_metrics(out)["compressed_from"]["path"] == str((out.parent / "teacher").resolve())
    assert metrics["compression"] == {"method": "distill", "teacher": "transformer-lm", "student": "transformer-lm",
                                      "temperature": 3.0, "alpha": 0.25, "source_file_bytes": (lm_run / "model.keras").stat().st_size}
    before, after = metrics["before"], metrics["after"]
    assert after["parameters"] < before["parameters"] and after["size_bytes"] < before["size_bytes"]
    assert before["perplexity"] > 1 and after["perplexity"] > 1 and after["tokens_per_second"] > 0
    # the teacher's term was part of every training step, and validation is the student's own loss
    history = json.loads((out / "history.json").read_text())
    assert len(history["distillation_loss"]) == 2 and min(history["distillation_loss"] + history["val_distillation_loss"]) > 0
    assert metrics["after_training"]["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-4)
    config = (out / "config.yaml").read_text()
    assert "teacher: ../teacher/model.keras" in config and "distill_alpha: 0.25" in config
    assert (out / "tokenizer.json").read_text() == (lm_run / "tokenizer.json").read_text()  # the teacher's tokenizer
    assert "Distilled from the teacher `../teacher`" in (out / "README.md").read_text()


@pytest.mark.slow
def test_model_keras_is_the_student_alone_and_every_command_takes_it(runner, distilled_lm):
    out, printed = distilled_lm
    model = saving.load_model(out)
    assert model.count_params() == printed["after"]["parameters"] and model.name != "distiller"
    evaluated = invoke(runner, "evaluate", out, "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["perplexity"] == pytest.approx(printed["after"]["perplexity"], rel=1e-4)
    assert invoke(runner, "generate", out, "--prompt", "The", "--max-length", "6").exit_code == 0


@pytest.mark.slow
def test_a_distillation_run_resumes_exactly(runner, distilled_lm, tmp_path):
    """Stopped after epoch 1 of 2 and resumed: the checkpoint holds the student, the teacher and the optimizer. The
    runs folder was moved meanwhile (#33): the student finds its teacher where it now is, and so do `runs` and
    `runs --prune`."""
    straight, _ = distilled_lm
    moved = tmp_path / "elsewhere" / "my-runs"
    shutil.copytree(straight.parent, moved)  # a copy: the fixture's folder stays for the other tests
    resumed = moved / "student"
    shutil.rmtree(sorted((resumed / "checkpoints").iterdir())[-1])
    (resumed / "model.keras").unlink()
    result = invoke(runner, "train", "--resume", resumed, "--quiet")
    assert result.exit_code == 0, result.output
    one, two = saving.load_model(straight).get_weights(), saving.load_model(resumed).get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(one, two, strict=True)) <= 1e-6
    listed = json.loads(invoke(runner, "runs", moved, "--json").stdout)
    assert {row["name"]: row["source"] for row in listed}["student"] == str((moved / "teacher").resolve())
    assert invoke(runner, "runs", moved, "--prune", "--keep", "1", "--yes").exit_code == 0  # the student is newest
    assert (moved / "teacher" / "model.keras").is_file()  # kept: the kept student's source


@pytest.mark.slow
def test_a_changed_teacher_stops_a_resume(runner, distilled_lm, lm_run, tmp_path):
    straight, _ = distilled_lm
    student, teacher = tmp_path / "student", tmp_path / "teacher.keras"
    shutil.copytree(straight, student)
    shutil.rmtree(sorted((student / "checkpoints").iterdir())[-1])
    (student / "model.keras").unlink()
    teacher.write_bytes((lm_run / "model.keras").read_bytes() + b"\0")  # the teacher's file, changed since the run started
    config = (student / "config.yaml").read_text()
    (student / "config.yaml").write_text(config.replace("../teacher/model.keras", str(teacher)))
    assert_user_error(invoke(runner, "train", "--resume", student), "changed since this run started")


@pytest.mark.slow
def test_a_transformer_classifier_distills_into_an_lstm_classifier(runner, tmp_path):
    """Another family for the same task: the student reads the teacher's tokenizer and labels."""
    sst = write_sst(tmp_path)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    result = invoke(runner, "train", "transformer-classifier", "--data", sst, "--out", teacher, "--quiet", "--epochs", "1", *TINY_TRANSFORMER)
    assert result.exit_code == 0, result.output
    lstm_args = [arg for pair in zip(TINY_LSTM[::2], TINY_LSTM[1::2]) if not pair[1].startswith("data.") for arg in pair]
    result = invoke(runner, "compress", teacher, "--method", "distill", "--student", "lstm-classifier", *lstm_args, "--epochs", "1",
                    "--out", student, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["model"] == "lstm-classifier" and summary["compression"]["student"] == "lstm-classifier"
    for side in ("before", "after"):
        assert 0 <= summary[side]["accuracy"] <= 1 and "macro_f1" in summary[side]
    assert (student / "labels.json").read_text() == (teacher / "labels.json").read_text()


def test_the_student_is_named_and_fits_the_teacher_or_one_line(runner, lm_run, trained_run, tmp_path):
    out = tmp_path / "s"
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "distill", "--out", out), "name a smaller student")
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "distill", "--student", "huge", "--out", out),
                      "--student huge is neither a preset of transformer-lm")
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "distill", "--student", "lstm-classifier", "--out", out),
                      "distill into a model of the same task")
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "distill", *SMALLER, "--set", "data.tokenizer=word", "--out", out),
                      "the student reads text with the teacher's tokenizer")
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "distill", *SMALLER, "--alpha", "1.5", "--out", out),
                      "finetune.distill_alpha must be between 0 and 1")
    assert_user_error(invoke(runner, "compress", lm_run, "--method", "int8", "--student", "tiny", "--out", out),
                      "--student belongs to --method distill")
    assert_user_error(invoke(runner, "train", "transformer-lm", *TINY_LM, "--set", f"finetune.teacher={lm_run}/model.keras",
                             "--set", "finetune.sparsity=0.5", "--out", out), "distill, prune and fine-tune in separate runs")
    assert not out.exists()


def test_the_distillation_loss_is_keras_logits_distillation_and_weights_mask_it():
    """Without sample weights the loss is Keras' LogitsDistillation (T² × KL of the softened outputs); with them, the
    same per position, averaged over the weighted positions only; softmax outputs compare through their logs."""
    import keras

    from kerasllm.recipes.distill import StudentDistiller, as_logits, weighted_kl

    def kl(t, s, temperature=3.0):
        p, q = [np.exp(x / temperature) / np.exp(x / temperature).sum(-1, keepdims=True) for x in (t, s)]
        return temperature ** 2 * np.sum(p * np.log(p / q), -1)

    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 5, 7)).astype("float32"), rng.normal(size=(2, 5, 7)).astype("float32")
    keras_loss = float(StudentDistiller.distillation_loss(3.0).compute_loss(teacher, student))
    assert keras_loss == pytest.approx(float(np.mean(kl(teacher, student))), rel=1e-4)
    assert float(weighted_kl(teacher, student, np.ones((2, 5), "float32"), 3.0)) == pytest.approx(keras_loss, rel=1e-4)

    weights = np.zeros((2, 5), "float32")
    weights[0, 1:3] = 1.0
    assert float(weighted_kl(teacher, student, weights, 3.0)) == pytest.approx(kl(teacher, student)[0, 1:3].mean(), rel=1e-4)
    probabilities = keras.ops.softmax(teacher, axis=-1)
    assert float(weighted_kl(as_logits(probabilities, "probabilities"), student, np.ones((2, 5)), 3.0)) == pytest.approx(
        keras_loss, rel=1e-3)
