"""The task interface: one object per task, asked by the trainer and the CLI for everything task-specific."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kerasllm import generation
from kerasllm.core.errors import UserError
from kerasllm.core.quiet import captured_stderr
from kerasllm.core.words import a

# Lazy imports: Keras is imported inside methods: `kerasllm --help` and `kerasllm list` load this module and must not
# load them.


@dataclass
class PreparedData:
    """A task's data, ready for the trainer.

    Args:
        info: sizes the builder needs (`kerasllm.data.DataInfo`).
        train: `train(first_epoch, epochs, skip_steps) -> tf.data.Dataset` with
            `steps_per_epoch` batches per epoch.
        validation: a finite tf.data.Dataset.
        steps_per_epoch: batches per training epoch.
        items_per_step: throughput unit count per step (tokens or samples).
        unit: name of that unit for progress displays.
        record: how the data was loaded and split (saved as data.json).
        artifacts: objects saved into the run folder with `save(folder)` (a tokenizer, labels).
        sample: optional `sample(model) -> str` shown after each epoch.
    """

    info: Any
    train: Callable
    validation: Any
    steps_per_epoch: int
    items_per_step: int
    unit: str
    record: dict
    artifacts: list = field(default_factory=list)
    sample: Callable | None = None


@dataclass
class Table:
    """A table to render: `kerasllm evaluate` prints these (rich), the JSON output has the raw values."""

    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Endpoint:
    """A SavedModel signature beside `serve`: `fn(*inputs)` traced with `signature`, the TensorFlow resources it uses
    (lookup tables), and `check(loaded) -> str`, which runs the loaded signature and returns "" or what differed."""

    name: str
    fn: object
    signature: list
    resources: list
    check: object
    example: str = ""  # a text the signature takes (the export folder's README calls it with this)
    usage: str = ""  # the README's line calling it, `{example}` standing for the example (default: strings in, strings out)



def classify_endpoint(model, output: str, class_names: list[str], to_inputs, resources: list, checked: tuple,
                      example: str = "") -> Endpoint:
    """`classify(inputs: (batch,) strings) -> {"label": (batch,) strings, "probabilities": (batch, classes)}`:
    `to_inputs` turns the raw inputs (texts, encoded images) into the model's, in the graph. `checked` is (samples,
    kerasllm's own probabilities for them): the loaded signature must give the same labels, probabilities within 1e-4."""
    import tensorflow as tf

    samples, expected = checked

    names = tf.constant(class_names)

    def classify(inputs):
        outputs = tf.cast(model(to_inputs(inputs), training=False), tf.float32)
        probabilities = tf.nn.softmax(outputs, axis=-1) if output == "logits" else outputs
        return {"label": tf.gather(names, tf.argmax(probabilities, axis=-1)), "probabilities": probabilities}

    def check(loaded) -> str:
        with captured_stderr():  # oneDNN's one-time lines about int32 ops on this CPU
            found = loaded.classify(tf.constant(samples))
        labels = [label.decode("utf-8") for label in found["label"].numpy()]
        wanted = [class_names[i] for i in np.argmax(expected, axis=-1)]
        wrong = sum(a != b for a, b in zip(labels, wanted))
        diff = float(np.max(np.abs(found["probabilities"].numpy() - expected)))
        return f"{wrong} of {len(wanted)} labels differ, probabilities by up to {diff:.2g}" if wrong or diff > 1e-4 else ""

    usage = ('found = loaded.classify(tf.constant([{example}]))\n'
             'print("classify:", found["label"].numpy()[0].decode(), found["probabilities"].numpy()[0].round(3))')
    return Endpoint("classify", classify, [tf.TensorSpec([None], tf.string)], resources, check, example=example, usage=usage)


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class Task:
    """What one task does. Subclass it and register the instance with `kerasllm.tasks.register`.

    Attributes:
        name: the registry name models use as `ModelSpec.task`.
        objective: the `train.objective` name of training for this task (a model's other objectives are in
            `ModelSpec.objectives`).
        can_generate: `kerasllm generate` works for its models.
        can_predict: `kerasllm predict` works for its models.
        weighted_metrics: the metrics are weighted by the data's sample weights.
        quality: the `evaluate` results that say how good a model is, for before → after tables (`kerasllm compress`).
        config_sections: the task's own config sections, name → dataclass type (e.g. `{"seq2seq": Seq2SeqConfig}`):
            its models' configs get them (`config.seq2seq.source_lang`, `--set seq2seq.source_lang=de`), `kerasllm info`
            lists them, and a dataclass with a `validate()` method checks itself. A plugin task declares its options here.
        default_data: the data a model trains on for this task without `--data` when its own default data is for
            another task (`train transformer-lm --task chat`).
    """

    name: str = ""
    objective: str = "classify"
    can_generate: bool = False
    can_predict: bool = False
    weighted_metrics: bool = False  # metrics use the data's sample weights (masked-LM positions)
    evaluate_options: tuple = ()  # extra `evaluate` options the task takes (`beam`, `on_progress(done, total)`)
    continues_prompt: bool = True  # `generate` continues the prompt (language models) rather than transforming it (seq2seq)
    quality: tuple = ("loss", "accuracy")
    config_sections: dict = {}
    default_data: str = ""  # the data `train --task NAME` uses without --data, where the model's own default is for another task

    # --- training -------------------------------------------------------------------
    def loss(self, spec, config=None):
        """A Keras loss object (not a string, so a custom loop can call it); `config` is the run's config."""
        import keras

        return keras.losses.SparseCategoricalCrossentropy(from_logits=spec.output == "logits")

    def metrics(self, spec) -> list:
        """Fresh Keras metric objects (a custom loop owns its own)."""
        import keras

        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        """Load and split the data, fit (or reuse, from `artifacts`) its preprocessing, build the pipelines."""
        raise NotImplementedError

    def load_artifacts(self, run_dir: Path) -> dict:
        """The objects `prepare` saved into a run folder (tokenizer, labels), by name."""
        return {}

    def report(self, results: dict, record: dict) -> dict:
        """Scalar metrics from `{"loss": ..., "accuracy": ...}` as the task names them."""
        return {key: float(value) for key, value in results.items()}

    # --- using a trained model ----------------------------------------------------------
    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        raise NotImplementedError

    def generate(self, model, run, prompts: list[str], **options) -> list[str]:
        """Text for each prompt (`kerasllm generate`); `options` are the command's decoding options and `on_text(row, text)`."""
        raise UserError(f"{run.spec.name} is {a(self.name)} model; `kerasllm generate` needs a text-generation or seq2seq model")

    def write_generations(self, model, run, prompts: list[str], write, **options) -> None:
        """`kerasllm generate`'s output through `write(text)` (`generation.write_generations`)."""
        generation.write_generations(lambda texts, **more: self.generate(model, run, texts, **options, **more), prompts, write,
                                     continues_prompt=self.continues_prompt)

    def predict(self, model, run, inputs: list[str], top_k: int = 3) -> list[dict]:
        raise UserError(f"{run.spec.name} is {a(self.name)} model; `kerasllm predict` does not apply to it")

    def export_sample(self, model, run, batch: int = 2) -> np.ndarray:
        """A batch of valid model inputs, used by export parity checks."""
        raise NotImplementedError

    def savedmodel_endpoints(self, model, run) -> list:
        """Extra SavedModel signatures beside `serve`: `Endpoint`s (e.g. text in, text out); none by default."""
        return []

    # --- rendering ----------------------------------------------------------------------
    def tables(self, results: dict, title: str) -> list[Table]:
        """How `evaluate` results render: scalars in one table by default (files it wrote, `*_png`, are lines of their
        own below the tables: a path in a table cell gets split at 80 columns)."""
        rows = [[key, format_value(value)] for key, value in results.items()
                if not isinstance(value, (list, dict)) and not key.endswith("_png")]
        return [Table(title, ["metric", "value"], rows)]

    def notes(self, record: dict) -> list[str]:
        """Things about the data the user should know (printed after training, kept in metrics.json)."""
        return []

    def data_lines(self, record: dict) -> list[str]:
        """Model-card lines about the data."""
        return [f"Source: `{record.get('source')}`; split: {record.get('split')}."]

    def usage(self, run_dir: Path) -> list[str]:
        """Commands that use a trained run (printed after training and in the model card)."""
        return [f"kerasllm evaluate {run_dir}", f"kerasllm export {run_dir} --format savedmodel"]


def classification_tables(tables: list[Table], results: dict) -> list[Table]:
    """`tables` plus the per-class, confusion-matrix and most-confused tables of a classification report."""
    per_class, matrix, confused = results.get("per_class"), results.get("confusion_matrix"), results.get("most_confused")
    if per_class:
        tables.append(Table("per class", ["class", "precision", "recall", "f1", "support"],
                            [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])]
                             for r in per_class]))
    if matrix:
        names = [row["class"] for row in per_class]
        tables.append(Table("confusion matrix", ["true \\ predicted", *names],
                            [[name, *map(str, row)] for name, row in zip(names, matrix)]))
    if confused:
        tables.append(Table("most confused pairs", ["true", "predicted as", "examples"],
                            [[pair["true"], pair["predicted"], str(pair["count"])] for pair in confused]))
    return tables
