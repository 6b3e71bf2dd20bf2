"""The run loader and what reads a run back: runs.py, saving.py and reports.py, on one tiny run."""

import json
import shutil

import pytest

from kerasllm import catalog, runs
from kerasllm.core import config as config_lib
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.export import saving
from kerasllm.train import reports


def test_load_run_reads_config_spec_task_and_artifacts(trained_run):
    run = runs.load_run(trained_run)
    assert run.spec is catalog.model("lstm-textgen") and run.task.name == "text-generation"
    assert run.config.model_args.units == 16 and run.model_path == trained_run / files.MODEL_FILE
    assert run.artifacts["tokenizer"].kind == "char" and run.data_record["train_characters"] == 18000


def test_load_run_refuses_what_is_not_a_run_or_not_its_own_config(trained_run, tmp_path):
    with pytest.raises(UserError, match="is not a run folder"):
        runs.load_run(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    (copy / files.CONFIG_FILE).write_text((copy / files.CONFIG_FILE).read_text().replace("model: lstm-textgen", "model: cnn-classifier"))
    with pytest.raises(UserError, match="is for 'cnn-classifier' but this run was made for 'lstm-textgen'"):
        runs.load_run(copy)


def test_resume_checks(trained_run, tmp_path):
    assert runs.check_resume_options(trained_run, None, False, None) == trained_run / files.CONFIG_FILE
    with pytest.raises(UserError, match="drop --out/--overwrite"):
        runs.check_resume_options(trained_run, None, True, None)
    config = runs.load_run(trained_run).config
    runs.check_resume_config(trained_run, config)  # the run's own config: nothing changed
    changed = config_lib.apply_overrides(runs.load_run(trained_run).config, ["model_args.units=8", "data.sequence_length=8"])
    with pytest.raises(UserError, match="--resume cannot change model_args, data of a run"):
        runs.check_resume_config(trained_run, changed)


def test_a_worker_that_is_not_the_chief_takes_out_as_given(tmp_path, monkeypatch, trained_run):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}))
    assert runs.plan_new_run("lstm-textgen", trained_run, False, []) == trained_run  # the chief checks and writes it
    with pytest.raises(UserError, match="every worker needs the same --out"):
        runs.plan_new_run("lstm-textgen", None, False, [])
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(UserError, match="already exists and is not empty"):
        runs.plan_new_run("lstm-textgen", trained_run, False, [])


def test_saving_loads_a_run_in_safe_mode_and_names_a_broken_file(trained_run, tmp_path):
    model = saving.load_model(trained_run)
    saving.check_model_fits(model, runs.load_run(trained_run))
    broken = tmp_path / "run"
    shutil.copytree(trained_run, broken)
    (broken / files.MODEL_FILE).write_bytes((broken / files.MODEL_FILE).read_bytes()[:200])
    with pytest.raises(UserError, match=rf"{broken / files.MODEL_FILE} is not a complete model file: its 200 bytes do not "
                                        r"read as a \.keras file .*cut short.*train --resume") as error:
        saving.load_model(broken)
    assert "File not found" not in str(error.value)  # Keras' words for a file that is there but cut short
    assert saving.model_path(trained_run) == trained_run / files.MODEL_FILE


def test_the_model_card_and_curves_come_from_the_run(trained_run, tmp_path):
    run = runs.load_run(trained_run)
    summary = json.loads((trained_run / files.METRICS_FILE).read_text())
    card = reports.model_card(run.spec, run.task, run.config, run.data_record, summary, trained_run)
    assert card.startswith("# ") and "kerasllm train --config" in card and "1 device (CPU)" in card
    history = json.loads((trained_run / files.HISTORY_FILE).read_text())
    path = reports.plot_curves(history, tmp_path / "curves.png", title="t")
    assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b"\x89PNG"


def test_overfitting_is_read_from_the_history():
    rising = {"loss": [2.0, 1.5, 1.2, 1.0, 0.8], "val_loss": [2.1, 1.7, 1.8, 1.9, 2.0]}
    report = reports.overfitting(rising, ("more dropout",))
    assert report["best_epoch"] == 2 and report["fixes"] == ["more dropout"] and "rose in 3 of the 3 epochs" in report["reason"]
    assert reports.overfitting({"loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.6, 1.3]}) is None
    assert reports.overfitting({"loss": [1.0], "val_loss": [1.2]}) is None
