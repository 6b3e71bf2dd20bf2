"""Image classification: raw images in, one class out.

Training metrics: loss and accuracy. `evaluate` adds top-k accuracy, per-class
precision/recall/F1, macro and weighted averages, the confusion matrix (table and
PNG) and the most confused class pairs; `predict` gives the top-k classes of files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerasllm import evaluation
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.images import IMAGE_SUFFIXES, ImageSplit, load_images, read_image, to_channels
from kerasllm.data.splits import check_unchanged
from kerasllm.tasks.base import PreparedData, Table, Task, classification_tables, classify_endpoint

CHECKED_IMAGES = 16  # validation images a SavedModel's `classify` is checked on


class Labels:
    """Class names and the image format the model was trained on (saved as labels.json)."""

    def __init__(self, class_names: list[str], image_size: int, channels: int):
        self.class_names, self.image_size, self.channels = list(class_names), image_size, channels

    def save(self, folder: Path) -> Path:
        path = Path(folder) / files.LABELS_FILE
        files.write_text_atomic(path, json.dumps(vars(self), indent=2, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, folder: Path) -> "Labels":
        path = Path(folder) / files.LABELS_FILE
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing; the run folder is incomplete, retrain or restore it") from error
        except (ValueError, TypeError) as error:
            raise UserError(f"{path} is corrupt ({error}); retrain or restore the run folder") from error


def load_split(config) -> ImageSplit:
    hparams = config.model_args
    return load_images(config.data.source, config.data.validation_fraction, hparams.image_size, hparams.channels)


class ImageClassification(Task):
    """Raw images in, one class out."""

    name = "image-classification"
    quality = ("accuracy", "macro_f1")
    can_predict = True

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        """Load, convert and split the images; build the pipelines."""
        labels = (artifacts or {}).get("labels")
        split, train = load_split(config), config.train
        if labels is not None and labels.class_names != split.class_names:
            raise UserError("the data's classes differ from the run's labels.json; resume with the data the run was trained on")
        steps = pipeline.steps_in(len(split.x_train), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)
        if len(split.x_validation) == 0:
            raise UserError("the validation split is empty; use more images or a larger data.validation_fraction")
        augment = spec.augment(config.model_args) if spec.augment else None

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            return pipeline.image_dataset(split.x_train, split.y_train, train.batch_size, augment, shuffle_seed=train.seed,
                                          steps_per_epoch=steps, first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps)

        record = dict(split.record, input_length=split.record["image_size"], class_names=split.class_names)
        return PreparedData(
            info=DataInfo(num_classes=len(split.class_names), image_size=record["image_size"], channels=record["channels"]),
            train=train_dataset,
            validation=pipeline.image_dataset(split.x_validation, split.y_validation, train.batch_size),
            steps_per_epoch=steps, items_per_step=train.batch_size, unit="samples", record=record,
            artifacts=[Labels(split.class_names, record["image_size"], record["channels"])],
        )

    def load_artifacts(self, run_dir: Path) -> dict:
        return {"labels": Labels.load(run_dir)}

    def report(self, results: dict, record: dict) -> dict:
        return {"loss": float(results["loss"]), "accuracy": float(results["accuracy"])}

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        """Classification report on the run's validation split, or on `data`'s test split (else all of it)."""
        labels: Labels = run.artifacts["labels"]
        if data:
            split = load_images(data, run.config.data.validation_fraction, labels.image_size, labels.channels)
            if split.record["validation_is_test_split"]:
                images, targets, where = split.x_validation, split.y_validation, f"test split of {data}"
            else:
                images = np.concatenate([split.x_train, split.x_validation])
                targets, where = np.concatenate([split.y_train, split.y_validation]), data
            if len(split.class_names) != len(labels.class_names) or targets.max() >= len(labels.class_names):
                raise UserError(f"{data} has {len(split.class_names)} classes but the model knows {len(labels.class_names)}; "
                                "evaluate on data with the same classes")
        else:
            split = load_split(run.config)
            check_unchanged(split.record, run.data_record)
            images, targets, where = split.x_validation, split.y_validation, f"validation split of {run.data_record['source']}"
        probabilities = model.predict(pipeline.image_dataset(images, targets, batch_size).map(lambda x, y: x), verbose=0)
        results = evaluation.classification_report(targets, probabilities, labels.class_names)
        png = evaluation.write_confusion_png(results["confusion_matrix"], labels.class_names, run.path / files.CONFUSION_MATRIX_FILE,
                                             f"{run.spec.name} on {where}")
        return {"data": where, **results, "confusion_matrix_png": png}

    def predict(self, model, run, inputs: list[str], top_k: int = 3) -> list[dict]:
        """Top-k classes for each image file (folders are searched for images)."""
        labels: Labels = run.artifacts["labels"]
        k = max(1, min(top_k, len(labels.class_names)))
        rows = []
        for path in image_files([Path(item) for item in inputs]):
            image = read_image(path)
            note = ""
            if image.shape[-1] != labels.channels:
                note = f"converted {'RGB' if image.shape[-1] == 3 else 'grayscale'} to {'grayscale' if labels.channels == 1 else 'RGB'}"
                image = to_channels(image[None], labels.channels)[0]
            probabilities = model.predict(image[None].astype(np.float32), verbose=0)[0]
            best = np.argsort(-probabilities)[:k]
            rows.append({"file": str(path), "note": note,
                         "predictions": [{"class": labels.class_names[i], "probability": float(probabilities[i])} for i in best]})
        return rows

    def export_sample(self, model, run, batch: int = 2) -> np.ndarray:
        size = run.data_record.get("image_size", 16) if run else 16
        channels = run.data_record.get("channels", 1) if run else 1
        return np.random.default_rng(0).uniform(0, 255, size=(batch, size, size, channels)).astype("float32")

    def savedmodel_endpoints(self, model, run) -> list:
        """`classify(image_bytes: string) -> label, probabilities`: PNG, JPEG, GIF or BMP bytes decoded to the run's
        channels and resized (bilinear) to its image size in the graph; checked against the model on the first
        validation images, encoded as PNG."""
        import keras
        import tensorflow as tf

        labels: Labels = run.artifacts["labels"]
        size, channels = labels.image_size, labels.channels

        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
            return keras.ops.image.resize(tf.cast(image, tf.float32)[None], (size, size), interpolation="bilinear")[0]

        def to_inputs(encoded):
            return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([size, size, channels], tf.float32))

        try:
            images = load_split(run.config).x_validation[:CHECKED_IMAGES]
        except (UserError, OSError):  # the training data moved: check on the export sample's random pixels
            images = np.rint(self.export_sample(model, run)).astype(np.uint8)
        samples = [tf.io.encode_png(image).numpy() for image in images]
        expected = np.asarray(model.predict(images.astype(np.float32), verbose=0), np.float64)
        return [classify_endpoint(model, run.spec.output, labels.class_names, to_inputs, [], (samples, expected))]

    def tables(self, results: dict, title: str) -> list[Table]:
        return classification_tables(super().tables(results, title), results)

    def data_lines(self, record: dict) -> list[str]:
        return [
            f"Source: `{record.get('source')}` (sha256 `{str(record.get('sha256', ''))[:16]}…`): "
            f"{record.get('train_examples', 0):,} training and {record.get('validation_examples', 0):,} validation images, "
            f"{record.get('classes')} classes, {record.get('image_size')}×{record.get('image_size')}×{record.get('channels')}.",
            f"Split: {record.get('split')}.",
        ]

    def usage(self, run_dir: Path) -> list[str]:
        return [f"kerasllm evaluate {run_dir}", f"kerasllm predict {run_dir} IMAGE.png",
                f"kerasllm export {run_dir} --format tflite"]


def image_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"folder {path} has no images (PNG/JPEG/BMP/GIF)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path} does not exist; pass image files or folders")
    return files


