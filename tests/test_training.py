"""The shared trainer: resume gives the same weights as a straight run."""

import shutil

import numpy as np
import pytest

from kerasllm import config as config_lib
from kerasllm import registry, runs, training
from kerasllm.errors import UserError
from tests.conftest import TINY

SPEC = registry.get("lstm-textgen")


def make_config(corpus_file, *extra):
    return config_lib.resolve(SPEC, None, [*TINY, f"data.source={corpus_file}", "runtime.deterministic=true",
                                           "train.checkpoint_every_steps=2", "train.sample_length=0", *extra])


def weights(run_dir):
    import keras

    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, corpus_file):
    run_dir = runs.new_run_dir(SPEC.name, tmp_path_factory.mktemp("straight") / "run")
    training.train(make_config(corpus_file), run_dir, progress="quiet")
    return run_dir


def test_straight_run_checkpoints_every_epoch_and_every_n_steps(straight_run):
    names = sorted(p.name for p in (straight_run / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004", "step-00000006"]
    state = runs.read_json(straight_run / "checkpoints" / "step-00000004" / "state.json")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)


@pytest.mark.parametrize("keep_until", ["step-00000003", "step-00000004"], ids=["epoch-boundary", "mid-epoch"])
def test_resume_matches_the_straight_run(straight_run, corpus_file, tmp_path, keep_until):
    resumed = tmp_path / "resumed"
    shutil.copytree(straight_run, resumed)
    (resumed / "model.keras").unlink()
    for folder in (resumed / "checkpoints").iterdir():
        if folder.name > keep_until:
            shutil.rmtree(folder)  # as if the run had been killed right after `keep_until`
    summary = training.train(make_config(corpus_file), resumed, resume=True, progress="quiet")
    assert summary["epochs_completed"] == 2 and summary["steps"] == 6
    for a, b in zip(weights(straight_run), weights(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    history = runs.read_json(resumed / "history.json")
    assert len(history["loss"]) == 2


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, corpus_file):
    with pytest.raises(UserError, match="has no checkpoint to resume from"):
        training.train(make_config(corpus_file), tmp_path, resume=True, progress="quiet")


def test_optimizer_recipe():
    from kerasllm.config import TrainConfig

    optimizer = training.make_optimizer(TrainConfig(learning_rate=1e-2, warmup_steps=10, min_learning_rate_ratio=0.1), total_steps=110)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(10)) == pytest.approx(1e-2)
    assert float(schedule(110)) == pytest.approx(1e-3, rel=1e-3)
    assert optimizer.global_clipnorm == 1.0 and type(optimizer).__name__ == "AdamW"
    sgd = training.make_optimizer(TrainConfig(optimizer="sgd", schedule="constant", clip_norm=0), total_steps=5)
    assert type(sgd).__name__ == "SGD" and sgd.global_clipnorm is None


def test_early_stopping_keeps_the_best_weights(tmp_path, corpus_file):
    # A learning rate this large makes validation loss get worse after the first epoch.
    config = make_config(corpus_file, "train.epochs=6", "train.learning_rate=5.0", "train.early_stopping_patience=1",
                         "train.clip_norm=0", "train.schedule=constant")
    summary = training.train(config, runs.new_run_dir(SPEC.name, tmp_path / "run"), progress="quiet")
    history = runs.read_json(tmp_path / "run" / "history.json")
    assert summary["stopped_early"] and summary["epochs_completed"] < 6
    best = min(history["val_loss"])
    assert summary["after_training"]["loss"] == pytest.approx(best, rel=1e-4)
