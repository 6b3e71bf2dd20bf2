"""The task interface: a task and a model registered in-process train and evaluate through the CLI
with no edit to cli.py or training.py; the built-in tasks render their own cards."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from kerasllm import catalog, tasks
from kerasllm.core.config import doc
from kerasllm.core.spec import ModelSpec
from kerasllm.data import DataInfo
from kerasllm.tasks.base import PreparedData, Task
from tests.commands.test_cli import assert_user_error, invoke


class ParityTask(Task):
    """Is the number of ones in 8 random bits odd? Data made on the fly from `bits:SEED`."""

    name = "bit-parity"

    @staticmethod
    def make(seed: int, count: int):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 2, (count, 8)).astype("float32")
        return x, (x.sum(axis=1) % 2).astype("int32")

    def prepare(self, config, spec, artifacts=None):
        from kerasllm.data import pipeline

        seed = int(config.data.source.removeprefix("bits:"))
        x, y = self.make(seed, 256)
        steps = pipeline.steps_in(len(x), config.train.batch_size, config.train.steps_per_epoch, "training")

        def batches(first_epoch, epochs, skip_steps=0):
            import tensorflow as tf

            return tf.data.Dataset.from_tensor_slices((x, y)).batch(config.train.batch_size, drop_remainder=True) \
                .take(steps).repeat(epochs - first_epoch).skip(skip_steps)

        import tensorflow as tf

        validation = tf.data.Dataset.from_tensor_slices(self.make(seed + 1, 64)).batch(32)
        return PreparedData(info=DataInfo(num_classes=2), train=batches, validation=validation, steps_per_epoch=steps,
                            items_per_step=config.train.batch_size, unit="samples",
                            record={"source": config.data.source, "sha256": str(seed), "split": "a second seed"})

    def evaluate(self, model, run, data=None, batch_size=64):
        x, y = self.make(int(run.data_record["source"].removeprefix("bits:")) + 1, 64)
        predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
        return {"data": "fresh bits", "accuracy": float((predicted == y).mean()), "examples": 64}

    def export_sample(self, model, run, batch=2):
        return self.make(0, batch)[0]

    def data_lines(self, record):
        return [f"Random 8-bit vectors from seed {record['sha256']} (parity labels)."]

    def usage(self, run_dir):
        return [f"kerasllm evaluate {run_dir}"]


@dataclass
class ParityConfig:
    units: int = field(default=16, metadata=doc("Hidden units."))


def build_parity(hparams, info):
    import keras

    bits = keras.Input((8,), name="bits")
    hidden = keras.layers.Dense(hparams.units, activation="relu", name="hidden")(bits)
    return keras.Model(bits, keras.layers.Dense(info.num_classes, activation="softmax", name="parity")(hidden))


@pytest.fixture
def parity_model():
    task = ParityTask()
    spec = ModelSpec("parity-mlp", task.name, ParityConfig, build_parity, "bits:7", "An MLP for bit parity", lambda h: 0,
                     defaults={"train": {"epochs": 2, "batch_size": 32, "warmup_steps": 0, "sample_length": 0}})
    with tasks.TASKS.registered(task.name, task), catalog.models().registered(spec.name, spec):
        yield spec


def test_a_new_task_and_model_train_and_evaluate_through_the_cli(runner, tmp_path, parity_model):
    before = {name: Path(name).read_text() for name in ("cli.py", "kerasllm/train/trainer.py")}
    out = tmp_path / "parity"
    result = invoke(runner, "train", "parity-mlp", "--out", out)
    assert result.exit_code == 0, result.output
    assert "next: `kerasllm evaluate" in result.output and "generate" not in result.output
    card = (out / "README.md").read_text()
    assert "Task: bit-parity" in card and "Random 8-bit vectors from seed 7" in card
    assert "characters" not in card and "Vocabulary" not in card and "generate" not in card
    assert "](curves.png)" in card and (out / "curves.png").is_file()  # the card shows its learning curves
    evaluated = invoke(runner, "evaluate", out)
    assert evaluated.exit_code == 0, evaluated.output
    assert "parity-mlp on fresh" in evaluated.output and "accuracy" in evaluated.output
    assert_user_error(invoke(runner, "generate", out), "generate needs a text-generation or seq2seq model")
    assert {name: Path(name).read_text() for name in before} == before


def test_unknown_task_names_are_one_line_errors():
    from kerasllm.core.errors import UserError

    with pytest.raises(UserError, match="unknown task 'image-clasification'; did you mean 'image-classification'"):
        tasks.get("image-clasification")
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(type("Again", (Task,), {"name": "text-generation"})())


def test_image_runs_have_an_image_model_card(runner, tmp_path):
    from tests.tasks.test_images import tiny_cnn_args

    out = tmp_path / "digits"
    result = invoke(runner, "train", "cnn-classifier", "--out", out, "--quiet", *tiny_cnn_args())
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "training and" in card and "validation images, 10 classes" in card and "kerasllm predict" in card
    assert "0 characters" not in card and "Vocabulary: None" not in card and "generate" not in card
    evaluated = invoke(runner, "evaluate", out)
    assert "per class" in evaluated.output and "confusion matrix" in evaluated.output
