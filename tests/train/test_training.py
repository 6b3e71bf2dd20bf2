"""The shared trainer: resume gives the same weights as a straight run."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kerasllm import catalog
from kerasllm.core import config as config_lib
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.train import building as optimizers
from kerasllm.train import checkpoints, loops
from kerasllm.train import trainer as training
from tests.conftest import TINY

SPEC = catalog.model("lstm-textgen")


def make_config(corpus_file, *extra):
    return config_lib.resolve(SPEC, None, [*TINY, f"data.source={corpus_file}", "runtime.deterministic=true",
                                           "train.checkpoint_every_steps=2", "train.sample_length=0", "train.keep_checkpoints=0", *extra])


def weights(run_dir):
    import keras

    return keras.saving.load_model(run_dir / "model.keras", compile=False).get_weights()


@pytest.fixture(scope="module", params=["fit", "custom"])
def straight_run(request, tmp_path_factory, corpus_file):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    training.train(make_config(corpus_file, f"runtime.loop={request.param}"), run_dir, progress="quiet")
    return run_dir, request.param


def test_straight_run_checkpoints_every_epoch_and_every_n_steps(straight_run):
    straight_run, _ = straight_run
    names = sorted(p.name for p in (straight_run / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003", "step-00000004", "step-00000006"]
    state = files.read_json(straight_run / "checkpoints" / "step-00000004" / "state.json")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)


@pytest.mark.parametrize("keep_until", ["step-00000003", "step-00000004"], ids=["epoch-boundary", "mid-epoch"])
def test_resume_matches_the_straight_run(straight_run, corpus_file, tmp_path, keep_until):
    straight_run, loop = straight_run
    resumed = tmp_path / "resumed"
    shutil.copytree(straight_run, resumed)
    (resumed / "model.keras").unlink()
    for folder in (resumed / "checkpoints").iterdir():
        if folder.name > keep_until:
            shutil.rmtree(folder)  # as if the run had been killed right after `keep_until`
    summary = training.train(make_config(corpus_file, f"runtime.loop={loop}"), resumed, resume=True, progress="quiet")
    assert summary["epochs_completed"] == 2 and summary["steps"] == 6 and summary["loop"] == loop
    for a, b in zip(weights(straight_run), weights(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    history = files.read_json(resumed / "history.json")
    assert len(history["loss"]) == 2


def test_resume_without_a_checkpoint_is_a_user_error(tmp_path, corpus_file):
    with pytest.raises(UserError, match="has no checkpoint: training stopped before the first one"):
        training.train(make_config(corpus_file), tmp_path, resume=True, progress="quiet")


def test_optimizer_recipe():
    from kerasllm.core.config import TrainConfig

    optimizer = optimizers.make_optimizer(TrainConfig(learning_rate=1e-2, warmup_steps=10, min_learning_rate_ratio=0.1), total_steps=110)
    schedule = optimizer.learning_rate if callable(optimizer.learning_rate) else optimizer._learning_rate
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(10)) == pytest.approx(1e-2)
    assert float(schedule(110)) == pytest.approx(1e-3, rel=1e-3)
    assert optimizer.global_clipnorm == 1.0 and type(optimizer).__name__ == "AdamW"
    sgd = optimizers.make_optimizer(TrainConfig(optimizer="sgd", schedule="constant", clip_norm=0), total_steps=5)
    assert type(sgd).__name__ == "SGD" and sgd.global_clipnorm is None


def test_warmup_longer_than_a_quarter_of_the_run_becomes_a_tenth_of_it():
    assert optimizers.warmup_steps(100, 76) == 7  # an 8-core TPU's share of a short run: the peak is reached
    assert optimizers.warmup_steps(100, 2000) == 100 and optimizers.warmup_steps(0, 10) == 0
    assert optimizers.warmup_steps(2, 6) == 1 and optimizers.warmup_steps(5, 0) == 5
    optimizer = optimizers.make_optimizer(config_lib.TrainConfig(learning_rate=1e-2, warmup_steps=100), total_steps=76)
    assert float(optimizer._learning_rate(7)) == pytest.approx(1e-2)  # the schedule itself (test_optimizer_recipe reads it so too)


def test_early_stopping_keeps_the_best_weights(tmp_path, corpus_file):
    # A learning rate this large makes validation loss get worse after the first epoch.
    config = make_config(corpus_file, "train.epochs=6", "train.learning_rate=5.0", "train.early_stopping_patience=1",
                         "train.clip_norm=0", "train.schedule=constant")
    summary = training.train(config, tmp_path / "run", progress="quiet")
    history = files.read_json(tmp_path / "run" / "history.json")
    assert summary["stopped_early"] and summary["epochs_completed"] < 6
    best = min(history["val_loss"])
    assert summary["after_training"]["loss"] == pytest.approx(best, rel=1e-4)


# --- two loops ----------------------------------------------------------------------------

def final_weights(config, run_dir):
    training.train(config, run_dir, progress="quiet")
    return weights(run_dir)


@pytest.mark.slow
def test_fit_and_custom_loops_give_the_same_weights_for_lstm_textgen(corpus_file, tmp_path):
    fit = final_weights(make_config(corpus_file, "train.epochs=1"), tmp_path / "fit")
    custom = final_weights(make_config(corpus_file, "train.epochs=1", "runtime.loop=custom"), tmp_path / "custom")
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(fit, custom)) <= 1e-5


@pytest.mark.slow
@pytest.mark.heavy  # the heavy tier (.ci/heavy): lstm-textgen's twin above stays in the slow tier
def test_fit_and_custom_loops_give_the_same_weights_for_cnn_classifier(tmp_path):
    spec = catalog.model("cnn-classifier")
    settings = ["model_args.width=8", "model_args.depth=2", "train.batch_size=16", "train.steps_per_epoch=3",
                "train.epochs=1", "train.warmup_steps=1", "runtime.jit_compile=false", "runtime.deterministic=true"]
    # dropout and batch normalisation included: the same random streams and moving statistics in both loops
    fit = final_weights(config_lib.resolve(spec, None, settings), tmp_path / "fit")
    custom = final_weights(config_lib.resolve(spec, None, [*settings, "runtime.loop=custom"]), tmp_path / "custom")
    assert len(fit) == len(custom) and max(float(np.max(np.abs(a - b))) for a, b in zip(fit, custom)) <= 1e-5


MIRRORED_SCRIPT = """
import json, sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from kerasllm import catalog
from kerasllm.core import config as config_lib
from kerasllm.train import trainer as training
spec = catalog.model("transformer-lm")
settings = ["data.source=" + sys.argv[1], "model_args.num_layers=1", "model_args.num_heads=2", "model_args.hidden_dim=16",
            "model_args.max_sequence_length=16", "model_args.dropout=0.0", "data.sequence_length=16", "train.epochs=1",
            "train.steps_per_epoch=2", "train.sample_length=0", "runtime.jit_compile=true", "runtime.steps_per_execution=1",
            # SGD with a small clip norm: the update follows the clipped gradient, so clipping each replica's part on its own
            # (what Keras does inside apply_gradients) would double the step; the global gradient must be clipped
            "train.optimizer=sgd", "train.learning_rate=0.5", "train.clip_norm=0.1", "train.warmup_steps=0"]
out = {}
for strategy, batch in (("cpu", 8), ("mirrored", 4)):
    config = config_lib.resolve(spec, None, [*settings, "train.batch_size=%d" % batch, "runtime.strategy=" + strategy])
    summary = training.train(config, sys.argv[2] + "/" + strategy, progress="quiet")
    out[strategy] = [summary["replicas"], summary["strategy"], summary["loop"], summary["jit_compile"], summary["after_training"]["loss"]]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.heavy  # the heavy tier (.ci/heavy): the strategy matrix
def test_xla_over_two_logical_cpus_runs_the_custom_loop_and_matches_one_device(corpus_file, tmp_path):
    """fit cannot compile a step over several devices with XLA; loop auto takes the custom loop, which compiles each
    replica's step (the transformer's sparse embedding gradient is made dense so every replica all-reduces the same
    shapes), and gradient clipping applies to the global batch's gradient. Keras fit on MirroredStrategy is tested for
    every model in test_distribute."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(corpus_file), str(tmp_path)],
                            capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[2]))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["cpu"][:4] == [1, "1 device (CPU)", "fit", True]
    assert out["mirrored"][:4] == [2, "MirroredStrategy: 2 CPUs", "custom", True]
    assert out["mirrored"][4] == pytest.approx(out["cpu"][4], rel=1e-4)


@pytest.mark.slow  # a wall-clock bound: never in the fast tier
def test_fit_returns_right_after_its_last_step(corpus_file, tmp_path):
    """The tf.data autotune thread of a per-device iterator once kept `fit` idle for 8-60 s here."""
    summary = training.train(make_config(corpus_file), tmp_path / "run", progress="quiet")
    assert summary["strategy"] == "1 device (CPU)"
    assert summary["seconds_after_last_step"] < 5.0  # the bug held it 8-60 s; a loaded machine takes ~0.1-1 s


# --- checkpoints and resume -------------------------------------------------------------------

@pytest.mark.slow
def test_checkpoints_are_pruned_to_the_newest_k_plus_the_best(corpus_file, tmp_path):
    config = make_config(corpus_file, "train.epochs=4", "train.keep_checkpoints=2", "train.checkpoint_every_steps=1",
                         "train.learning_rate=5.0", "train.clip_norm=0", "train.schedule=constant",
                         "train.early_stopping_patience=0")
    summary = training.train(config, tmp_path / "run", progress="quiet")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names[-2:] == ["step-00000011", "step-00000012"]
    assert summary["best_checkpoint"] in names and len(names) <= 3


def test_an_unfinished_checkpoint_is_never_taken_for_the_newest(straight_run, tmp_path):
    straight_run, _ = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(straight_run, copy)
    partial = copy / "checkpoints" / "step-00000009.partial"
    shutil.copytree(copy / "checkpoints" / "step-00000006", partial)  # even with a state.json inside
    (copy / "checkpoints" / "step-00000008").mkdir()  # and a folder missing its files
    assert checkpoints.latest_checkpoint(copy).name == "step-00000006"


def test_resuming_a_finished_run_has_nothing_to_do(straight_run, corpus_file, tmp_path):
    straight_run, loop = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(straight_run, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    summary = training.train(make_config(corpus_file, f"runtime.loop={loop}"), copy, resume=True, progress="quiet")
    assert summary["nothing_to_do"]
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_resume_counts_the_interrupted_time_and_keeps_the_schedule(straight_run, corpus_file, tmp_path):
    straight_run, loop = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(straight_run, copy)
    first = files.read_json(copy / "metrics.json")
    summary = training.train(make_config(corpus_file, f"runtime.loop={loop}", "train.epochs=3"), copy, resume=True, progress="quiet")
    assert summary["train_seconds"] > first["train_seconds"]
    assert summary["schedule_steps"] == first["schedule_steps"] == 6  # fixed when the run started
    history = files.read_json(copy / "history.json")
    floor = 1e-2 * 0.1  # lstm-textgen's learning rate x train.min_learning_rate_ratio: the decay has ended
    assert history["learning_rate"][2] == pytest.approx(floor, rel=1e-5)
    assert len(history["loss"]) == 3


def test_resume_refuses_changed_data(straight_run, tmp_path):
    straight_run, loop = straight_run
    copy = tmp_path / "copy"
    shutil.copytree(straight_run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000006")
    (copy / "model.keras").unlink()
    data = tmp_path / "changed.txt"
    data.write_text(Path(files.read_json(copy / "data.json")["source"]).read_text() + "more text")
    config = config_lib.resolve(SPEC, None, [*TINY, f"data.source={data}", "train.sample_length=0"])
    copy_data = files.read_json(copy / "data.json")
    files.write_json(copy / "data.json", dict(copy_data, source=str(data)))
    with pytest.raises(UserError, match="changed since this run was trained"):
        training.train(config, copy, resume=True, progress="quiet")


@pytest.mark.slow
def test_overfitting_is_reported_with_fixes(tmp_path):
    """Random labels on a handful of images: training loss falls, validation loss rises."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "noise.npz"
    np.savez(npz, x=rng.integers(0, 256, (64, 8, 8, 1)).astype(np.uint8), y=rng.integers(0, 4, 64))
    spec = catalog.model("cnn-classifier")
    config = config_lib.resolve(spec, None, [f"data.source={npz}", "model_args.width=16", "model_args.depth=1",
                                             "model_args.dropout=0", "model_args.translation=0", "model_args.rotation=0",
                                             "model_args.zoom=0", "train.batch_size=8", "train.epochs=12",
                                             "train.learning_rate=1e-2", "train.warmup_steps=0", "train.schedule=constant",
                                             "train.early_stopping_patience=0", "train.weight_decay=0",
                                             "data.validation_fraction=0.25", "runtime.jit_compile=false", "train.monitor=val_accuracy"])
    summary = training.train(config, tmp_path / "run", progress="quiet")
    report = summary["overfitting"]
    assert report is not None and "validation loss" in report["reason"]
    assert any("augmentation" in fix for fix in report["fixes"])
    card = (tmp_path / "run" / "README.md").read_text()
    assert "**Overfitting**" in card and "augmentation" in card
    # the note names the epoch model.keras keeps, chosen by train.monitor (an accuracy here), not the lowest val_loss
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    monitored = np.asarray(history[config.train.monitor])
    kept = 1 + int(np.argmin(monitored if "loss" in config.train.monitor else -monitored))
    assert summary["kept_epoch"] == report["kept_epoch"] == kept and f"keeps epoch {kept}." in card


def test_a_healthy_run_is_not_called_overfitting():
    from kerasllm.train.reports import overfitting

    assert overfitting({"loss": [3.0, 2.5, 2.2], "val_loss": [3.1, 2.7, 2.4]}) is None
    assert overfitting({"loss": [3.0, 2.5, 2.2, 2.0], "val_loss": [2.9, 2.6, 2.8, 3.0]})["best_epoch"] == 2
    rising = {"loss": [3.0, 2.5, 2.2, 2.0], "val_loss": [2.9, 2.6, 2.8, 3.0]}
    assert overfitting(rising, kept_epoch=3)["kept_epoch"] == 3  # the trainer's kept epoch, whatever val_loss says


@pytest.mark.slow
def test_random_windows_resume_exactly(corpus_file, tmp_path):
    config = make_config(corpus_file, "data.windows=random")
    training.train(config, tmp_path / "straight", progress="quiet")
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "straight", resumed)
    (resumed / "model.keras").unlink()
    for folder in (resumed / "checkpoints").iterdir():
        if folder.name > "step-00000004":
            shutil.rmtree(folder)
    training.train(config, resumed, resume=True, progress="quiet")
    for a, b in zip(weights(tmp_path / "straight"), weights(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_random_windows_start_anywhere():
    from kerasllm.data import pipeline

    ids = np.arange(1000, dtype=np.int32)
    dataset = pipeline.random_window_dataset(ids, 8, 4, shuffle_seed=3, steps_per_epoch=5, epochs=2)
    batches = list(dataset.as_numpy_iterator())
    assert len(batches) == 10
    starts = np.concatenate([x[:, 0] for x, _ in batches])
    assert len(set(starts % 8)) > 1  # not only multiples of the window length
    for x, y in batches:
        np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    again = list(pipeline.random_window_dataset(ids, 8, 4, shuffle_seed=3, steps_per_epoch=5, epochs=2, first_epoch=1).as_numpy_iterator())
    np.testing.assert_array_equal(again[0][0], batches[5][0])  # epoch 2 is the same batch after a resume


def test_a_time_budget_stops_training(corpus_file, tmp_path):
    summary = training.train(make_config(corpus_file, "train.max_seconds=0.001", "train.epochs=5"), tmp_path / "run", progress="quiet")
    assert summary["stopped_by_time_budget"] and summary["epochs_completed"] == 1 and summary["steps"] == 1
    assert (tmp_path / "run" / "model.keras").is_file()


def test_validation_steps_spread_over_the_split():
    import tensorflow as tf

    dataset = tf.data.Dataset.range(100).batch(1)
    subset = [int(x[0]) for x in loops.spread_subset(dataset, 4).as_numpy_iterator()]
    assert subset == [0, 25, 50, 75]
    assert len(list(loops.spread_subset(dataset, 0).as_numpy_iterator())) == 100


def test_adamw_can_exempt_biases_and_norms_from_weight_decay():
    import keras

    from kerasllm.core.config import TrainConfig

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2), keras.layers.LayerNormalization()])
    for decay_all, expected in ((True, [True] * 4), (False, [True, False, False, False])):
        optimizer = optimizers.make_optimizer(TrainConfig(decay_all_weights=decay_all), total_steps=10)
        optimizer.build(model.trainable_variables)
        assert [optimizer._use_weight_decay(v) for v in model.trainable_variables] == expected


def test_an_epoch_is_whole_calls_into_the_graph():
    """With several steps per call, Keras ran 30, 30 and 9 steps for `steps_per_epoch=23` while the bar showed 23/23."""
    from kerasllm.data import pipeline

    with pytest.raises(UserError, match=r"train.steps_per_epoch=23 is not a multiple of runtime.steps_per_execution=10 "
                                        r"\(steps run per call into the graph\); use 20 or 30, or runtime.steps_per_execution=1"):
        config_lib.resolve(catalog.model("transformer-lm"), None, ["train.steps_per_epoch=23"])
    assert pipeline.steps_in(1000, 8, 0, "training", multiple=10) == 120  # a full pass of 125 batches, in whole calls
    assert pipeline.steps_in(1000, 8, 30, "training", multiple=10) == 30
    with pytest.raises(UserError, match="has 5 batches, fewer than runtime.steps_per_execution=10"):
        pipeline.steps_in(40, 8, 0, "training", multiple=10)


@pytest.mark.parametrize("loop", ["fit", "custom"])
def test_resume_with_several_steps_per_call_matches_the_straight_run(corpus_file, tmp_path, loop):
    extra = ["runtime.steps_per_execution=2", "train.steps_per_epoch=4", f"runtime.loop={loop}"]
    straight = tmp_path / "straight"
    training.train(make_config(corpus_file, *extra), straight, progress="quiet")
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    (resumed / "model.keras").unlink()
    for folder in (resumed / "checkpoints").iterdir():
        if folder.name > "step-00000006":  # killed after a step checkpoint in the middle of epoch 2
            shutil.rmtree(folder)
    assert files.read_json(resumed / "checkpoints" / "step-00000006" / "state.json")["step_in_epoch"] == 2
    summary = training.train(make_config(corpus_file, *extra), resumed, resume=True, progress="quiet")
    assert summary["steps"] == 8 and summary["epochs_completed"] == 2
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_run_says_where_its_time_went(straight_run):
    """metrics.json `timings`: the session's wall by section; the training loop's parts add up to its time, and the
    history keeps the loop's seconds at each epoch (time to a validation figure)."""
    straight_run, _ = straight_run
    metrics = files.read_json(straight_run / "metrics.json")
    timings = metrics["timings"]
    for name in ("start-up", "data", "build", "evaluation before training", "train steps", "validation", "checkpoints",
                 "tensorboard", "final evaluation", "model file", "card and curves"):
        assert timings[name] >= 0, name
    assert timings["start-up"] > 0 and timings["train steps"] > 0 and timings["checkpoints"] > 0
    loop = sum(timings.get(name, 0.0) for name in ("train step compilation", "train steps", "validation compilation", "validation",
                                                   "checkpoints", "tensorboard", "training loop, other"))
    assert loop == pytest.approx(metrics["train_seconds"], rel=0.25, abs=0.5)  # train_seconds stops at the last checkpoint
    seconds = files.read_json(straight_run / "history.json")["train_seconds"]
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] <= metrics["train_seconds"] + 1e-6


def test_timings_count_each_second_once():
    from kerasllm.train.timings import Timings

    now = [100.0]
    timings = Timings(clock=lambda: now[0])  # a clock the test moves: no wall time
    with timings.section("outer"):
        now[0] += 1.0  # the outer section's own second
        now[0] += 2.0
        timings.add("checkpoints", 2.0)  # measured inside the loop, counted once
        with timings.section("inner"):
            now[0] += 4.0
        now[0] += 0.5
    assert timings.seconds == {"checkpoints": 2.0, "inner": 4.0, "outer": 1.5}  # the sections add up to the wall they cover
    timings = Timings()
    timings.add("loop", 10.0)
    timings.split("loop", {"steps": 7.0, "compilation": 5.0})  # more than is left: capped
    assert timings.seconds == {"loop": 0.0, "steps": 7.0, "compilation": 3.0}


def test_a_default_recipe_prints_no_note_about_its_own_warmup(corpus_file, tmp_path):
    """A short run shortens the model's own warmup without a word; a warmup the user chose gets the note (#33)."""
    settings = [item for item in TINY if not item.startswith("train.warmup_steps")]
    default = config_lib.resolve(SPEC, None, [*settings, f"data.source={corpus_file}", "train.epochs=1", "train.sample_length=0"])
    assert default.train.warmup_steps > default.train.steps_per_epoch  # longer than the run: shortened
    summary = training.train(default, tmp_path / "default", progress="quiet")
    assert summary["warmup_steps"] < default.train.warmup_steps and not any("warmup" in note for note in summary["notes"])
    chosen = config_lib.resolve(SPEC, None, [*settings, f"data.source={corpus_file}", "train.epochs=1", "train.sample_length=0",
                                             "train.warmup_steps=40"])
    summary = training.train(chosen, tmp_path / "chosen", progress="quiet")
    assert any("train.warmup_steps=40" in note for note in summary["notes"])


def test_the_time_budget_binds_within_one_call_however_many_steps_a_call_holds():
    """#33: with one call into the graph per epoch, max_seconds=60 trained for 146 s. The budget stops before a call
    that would end past it, the first call (compilation) predicting nothing."""
    from types import SimpleNamespace

    now = [0.0]
    budget = loops.TimeBudget(55.0, 0.0, clock=lambda: now[0])
    budget.set_model(SimpleNamespace(stop_training=False))
    ended = []
    for seconds in (30.0, 10.0, 10.0, 10.0, 10.0):  # the first call compiles; each later one holds a whole epoch
        if budget.expired:
            break
        budget.on_train_batch_begin(0)
        now[0] += seconds
        budget.on_train_batch_end(0)
        ended.append(now[0])
    assert ended == [30.0, 40.0, 50.0] and budget.expired and budget.model.stop_training  # a 4th call would end at 60 > 55
    late = loops.TimeBudget(20.0, 0.0, clock=lambda: now[0])
    late.set_model(SimpleNamespace(stop_training=False))
    late.on_train_batch_begin(0)
    now[0] += 30.0  # the first call alone runs past the budget: it stops right after it
    late.on_train_batch_end(0)
    assert late.expired


def test_one_call_per_epoch_still_times_its_steps(corpus_file, tmp_path):
    config = make_config(corpus_file, "runtime.steps_per_execution=3", "train.checkpoint_every_steps=0")  # TINY: 3 steps an epoch
    summary = training.train(config, tmp_path / "run", progress="quiet")
    assert summary["median_step_seconds"] and summary["timings"]["train steps"] > 0


def test_the_kept_epoch_of_a_checkpoint_written_before_best_epoch_was_kept(tmp_path):
    """A checkpoint from an older kerasllm has no `best_epoch`: it is read from the best checkpoint's own state, so a
    resumed old run's note still names the epoch model.keras keeps (`checkpoints.load_best`)."""
    folder = tmp_path / files.CHECKPOINTS_DIR
    for step, epoch, best in ((10, 1, "step-00000010"), (20, 2, "step-00000010"), (30, 3, "step-00000010")):
        (folder / f"step-{step:08d}").mkdir(parents=True)
        files.write_json(folder / f"step-{step:08d}" / files.CHECKPOINT_STATE,
                         {"epoch": epoch, "global_step": step, "best_checkpoint": best})
    assert checkpoints.read_state(folder / "step-00000030").best_epoch == 1
    assert checkpoints.read_state(folder / "step-00000010").best_epoch == 1  # its own best
    files.write_json(folder / "step-00000030" / files.CHECKPOINT_STATE, {"epoch": 3, "best_checkpoint": "step-00000010",
                                                                         "best_epoch": 1})
    assert checkpoints.read_state(folder / "step-00000030").best_epoch == 1  # kept since: read as written
    state = checkpoints.TrainState(epoch=3, best_checkpoint="gone", best_epoch=2)
    assert checkpoints.load_best(tmp_path, state, model=None) == 3  # the best was pruned away: the last epoch's weights
