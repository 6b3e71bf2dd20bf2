"""Text classification: a text (or a sentence pair) in, one class out. Sentiment analysis is the usual case.

Training metrics: loss and accuracy. `evaluate` gives the shared classification report
(`kerasllm.evaluation`: per-class precision/recall/F1, macro and weighted averages,
confusion matrix table and PNG, most confused pairs); `predict` gives the top-k classes
of texts. Labels are mapped to ids with the training split's classes and saved as
labels.json; class imbalance is reported, and `classification.class_weight=balanced` weights
each example inversely to its class frequency.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm import evaluation
from kerasllm.core import files
from kerasllm.core.config import absolute_source, doc
from kerasllm.core.errors import UserError
from kerasllm.core.words import count, were
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.images import IMAGE_SUFFIXES
from kerasllm.data.labelled import Examples, gather_splits, load_labelled
from kerasllm.data.packing import Packer
from kerasllm.data.splits import check_unchanged
from kerasllm.tasks.base import PreparedData, Table, Task, classification_tables, classify_endpoint
from kerasllm.tokenizers import Tokenizer


@dataclass
class ClassificationConfig:
    """The text-classification task's own config section, `classification.*` (`train.class_weight` before)."""

    class_weight: str = field(default="none", metadata=doc(
        "`none`, or `balanced` (weights inversely proportional to class frequency, for imbalanced data)."))

    def validate(self) -> None:
        if self.class_weight not in ("none", "balanced"):
            raise UserError("classification.class_weight must be none or balanced")


CHECKED_TEXTS = 16  # validation texts a SavedModel's `classify` is checked on


def label_value(label) -> str:
    """A label as a value, not as the characters it was written with: numbers by their value (`1`, `1.0`, `01` and
    ` 1 ` are all `1`; `0.50` is `0.5`), anything else stripped of surrounding space."""
    text = str(label).strip()
    try:
        value = float(text)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() else f"{value:g}"


class ClassLabels:
    """Class names in id order, and whether the data wrote them as integers (saved as labels.json). Labels are read as
    values (`label_value`), so `1` and `1.0` are one class."""

    def __init__(self, class_names: list[str], integer_labels: bool = False):
        self.class_names, self.integer_labels = [str(name) for name in class_names], integer_labels
        self._ids = {label_value(name): i for i, name in enumerate(self.class_names)}

    @classmethod
    def from_labels(cls, labels: list[str], source_names: list[str] | None = None) -> "ClassLabels":
        """Names the source gives (tfds, class folders), else the labels seen: integers in numeric order, names sorted."""
        if source_names:
            return cls(source_names)
        seen = {label_value(label) for label in labels}
        if len(seen) < 2:
            raise UserError(f"the training data has only one label ({next(iter(seen), 'none')}); classification needs two or more")
        try:
            ordered = sorted(seen, key=int)
            return cls(ordered, integer_labels=True)
        except ValueError:
            return cls(sorted(seen))

    def ids(self, labels: list[str], where: str) -> np.ndarray:
        values = [label_value(label) for label in labels]
        unknown = sorted(set(values) - set(self._ids))
        if unknown:
            raise UserError(f"label {unknown[0]!r} in {where} was not among the training labels "
                            f"({', '.join(self.class_names)}); remove those rows or train on data that has it")
        return np.asarray([self._ids[value] for value in values], np.int32)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / files.LABELS_FILE
        files.write_text_atomic(path, json.dumps({"class_names": self.class_names, "integer_labels": self.integer_labels},
                                                indent=2, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, folder: Path) -> "ClassLabels":
        path = Path(folder) / files.LABELS_FILE
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return cls(saved["class_names"], bool(saved.get("integer_labels", False)))
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing; the run folder is incomplete, retrain or restore it") from error
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is corrupt ({error}); retrain or restore the run folder") from error


def class_counts(ids: np.ndarray, labels: ClassLabels) -> dict[str, int]:
    counts = np.bincount(ids, minlength=len(labels.class_names))
    return {name: int(count) for name, count in zip(labels.class_names, counts)}


def balanced_weights(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights n / (classes × count), as scikit-learn's `balanced`."""
    counts = np.bincount(ids, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(ids) / (num_classes * np.maximum(counts, 1)), 0.0).astype(np.float32)


def imbalance(counts: dict[str, int]) -> float:
    values = [v for v in counts.values() if v]
    return max(values) / min(values) if values else 1.0


def fit_tokenizer(config, texts: list) -> Tokenizer:
    flat = [part for text in texts for part in (text if isinstance(text, tuple) else (text,))]
    return Tokenizer.fit("\n".join(flat), config.data.tokenizer, config.data.vocab_size, encoder_tokens=True)


def check_tokenizer_fits(tokenizer, packed_ids: np.ndarray, where: str) -> None:
    """Refuse data the (inherited) tokenizer mostly cannot read (more than half of its text tokens unknown)."""
    if tokenizer.unk_id is None:
        return  # byte-level tokenizers (GPT-2) read any text
    real = packed_ids[~np.isin(packed_ids, list(tokenizer.special_tokens.values())) | (packed_ids == tokenizer.unk_id)]
    unknown = float((real == tokenizer.unk_id).mean()) if real.size else 1.0
    if unknown > 0.5:
        raise UserError(f"{unknown:.0%} of the tokens of {where} are unknown to the base model's tokenizer: the data does "
                        "not fit the base (another language or alphabet?); fine-tune a base trained on similar text")


def looks_like_an_image(text: str) -> bool:
    """An existing file with an image suffix (a path given to a text model is otherwise classified as text)."""
    path = Path(text.strip()).expanduser()
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TextClassification(Task):
    """Labelled text in, one class out (sentiment, topics, sentence-pair relations)."""

    name = "text-classification"
    quality = ("accuracy", "macro_f1")
    config_sections = {"classification": ClassificationConfig}
    can_predict = True

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        artifacts = artifacts or {}
        data, train = config.data, config.train
        split = load_labelled(data.source, data.validation_fraction, data.text_column, data.label_column)
        labels = artifacts.get("labels") or ClassLabels.from_labels(split.train.labels, split.class_names)
        if "labels" in artifacts and not set(split.train.labels) <= set(labels.class_names):
            raise UserError("the data's labels differ from the run's labels.json; resume with the data the run was trained on")
        tokenizer = artifacts.get("tokenizer") or fit_tokenizer(config, split.train.texts)
        packer = Packer(tokenizer, data.sequence_length)
        train_x, validation_x = packer.pack(split.train.texts), packer.pack(split.validation.texts)
        if "tokenizer" in artifacts:
            check_tokenizer_fits(tokenizer, train_x.ids, data.source)
        train_y = labels.ids(split.train.labels, f"the training split of {data.source}")
        validation_y = labels.ids(split.validation.labels, f"the validation split of {data.source}")
        counts = class_counts(train_y, labels)
        weights = balanced_weights(train_y, len(labels.class_names)) if config.classification.class_weight == "balanced" else None
        steps = pipeline.steps_in(len(train_y), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            return pipeline.array_dataset(train_x.ids, train_y, train.batch_size, None if weights is None else weights[train_y],
                                          shuffle_seed=train.seed, steps_per_epoch=steps, first_epoch=first_epoch, epochs=epochs,
                                          skip_steps=skip_steps)

        record = dict(split.record, tokenizer=tokenizer.kind, vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length,
                      input_length=data.sequence_length, classes=len(labels.class_names), class_names=labels.class_names,
                      class_counts=counts, imbalance_ratio=imbalance(counts),
                      class_weights=None if weights is None else [float(w) for w in weights],
                      truncated_train_examples=train_x.truncated, truncated_validation_examples=validation_x.truncated)
        return PreparedData(
            info=DataInfo(vocab_size=tokenizer.vocab_size, sequence_length=data.sequence_length, num_classes=len(labels.class_names),
                          pad_id=packer.pad_id, sep_id=packer.sep_id if packer.sep_id is not None else -1,
                          objective=config.train.objective),
            train=train_dataset, validation=pipeline.array_dataset(validation_x.ids, validation_y, train.batch_size),
            steps_per_epoch=steps, items_per_step=train.batch_size, unit="examples", record=record,
            artifacts=[tokenizer, labels],
        )

    def load_artifacts(self, run_dir: Path) -> dict:
        return {"tokenizer": Tokenizer.load(run_dir), "labels": ClassLabels.load(run_dir)}

    def report(self, results: dict, record: dict) -> dict:
        return {"loss": float(results["loss"]), "accuracy": float(results["accuracy"])}

    # --- using a trained model ------------------------------------------------------------
    def probabilities(self, model, run, texts: list, batch_size: int = 64) -> np.ndarray:
        ids = Packer(run.artifacts["tokenizer"], run.config.data.sequence_length).pack(texts).ids
        outputs = np.asarray(model.predict(ids, batch_size=batch_size, verbose=0), np.float64)
        return softmax(outputs) if run.spec.output == "logits" else outputs

    def held_out(self, run, data: str | None) -> tuple[Examples, str]:
        config = run.config.data
        if not data:
            split = load_labelled(config.source, config.validation_fraction, config.text_column, config.label_column)
            check_unchanged(split.record, run.data_record)
            return split.validation, f"validation split of {config.source}"

        splits, _ = gather_splits(absolute_source(data), config.text_column, config.label_column)
        if "test" in splits:
            return splits["test"], f"test split of {data}"
        whole = Examples([t for s in splits.values() for t in s.texts], [label for s in splits.values() for label in s.labels])
        return whole, data

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64) -> dict:
        """Classification report on the run's validation split, or on `data`'s test split (else all of it)."""
        labels: ClassLabels = run.artifacts["labels"]
        examples, where = self.held_out(run, data)
        targets = labels.ids(examples.labels, where)
        probabilities = self.probabilities(model, run, examples.texts, batch_size)
        log_likelihood = np.log(np.maximum(probabilities[np.arange(len(targets)), targets], 1e-12))
        results = {"loss": float(-log_likelihood.mean()),
                   **evaluation.classification_report(targets, probabilities, labels.class_names)}
        png = evaluation.write_confusion_png(results["confusion_matrix"], labels.class_names, run.path / files.CONFUSION_MATRIX_FILE,
                                             f"{run.spec.name} on {where}")
        return {"data": where, **results, "confusion_matrix_png": png}

    def predict(self, model, run, inputs: list[str], top_k: int = 3) -> list[dict]:
        """Top-k classes of each text (a tab separates the two sentences of a pair model's input)."""
        labels: ClassLabels = run.artifacts["labels"]
        pairs = bool(run.data_record.get("sentence_pairs"))
        texts = []
        for text in inputs:
            if not text.strip():
                raise UserError("an input text is empty; pass some text to classify")
            if looks_like_an_image(text):
                raise UserError(f"{text} is an image file, and {run.spec.name} classifies text; pass text (or an image "
                                "model's run)")
            if pairs:
                first, tab, second = text.partition("\t")
                if not tab:
                    raise UserError("this model classifies sentence pairs; separate the two sentences with a tab")
                texts.append((first, second))
            else:
                texts.append(text)
        probabilities = self.probabilities(model, run, texts)
        k = max(1, min(top_k, len(labels.class_names)))
        return [{"text": text, "note": "",
                 "predictions": [{"class": labels.class_names[i], "probability": float(row[i])} for i in np.argsort(-row)[:k]]}
                for text, row in zip(inputs, probabilities)]

    def export_sample(self, model, run, batch: int = 2) -> np.ndarray:
        length = run.data_record.get("input_length", 16) if run else 16
        vocab = run.artifacts["tokenizer"].vocab_size if run else 8
        ids = np.random.default_rng(0).integers(7 if vocab > 8 else 1, vocab, size=(batch, length)).astype("int32")
        ids[:, length // 2:] = 0  # padding
        return ids

    def savedmodel_endpoints(self, model, run) -> list:
        """`classify(text: string) -> label, probabilities`, the tokenizer and packing in the graph; checked against
        `kerasllm predict` on the first validation texts. A sentence-pair model and a keras-hub tokenizer have none."""
        tokenizer = run.artifacts["tokenizer"]
        if run.data_record.get("sentence_pairs") or not hasattr(tokenizer, "tf_encode"):
            return []
        packer = Packer(tokenizer, run.config.data.sequence_length)
        try:
            texts = [text for text in self.held_out(run, None)[0].texts if text.strip()][:CHECKED_TEXTS]
        except (UserError, OSError):  # the training data moved: check on words from the vocabulary instead
            texts = [" ".join(tokenizer.vocabulary[4:9])]
        return [classify_endpoint(model, run.spec.output, run.artifacts["labels"].class_names, packer.tf_pack,
                                  [tokenizer.lookup_table()], (texts, self.probabilities(model, run, texts)), example=texts[0])]

    def tables(self, results: dict, title: str) -> list[Table]:
        return classification_tables(super().tables(results, title), results)

    def data_lines(self, record: dict) -> list[str]:
        counts = record.get("class_counts", {})
        lines = [
            f"Source: `{record.get('source')}` (sha256 `{str(record.get('sha256', ''))[:16]}…`): "
            f"{record.get('train_examples', 0):,} training and {record.get('validation_examples', 0):,} validation examples"
            f"{' (sentence pairs)' if record.get('sentence_pairs') else ''}; split: {record.get('split')}.",
            f"Classes ({record.get('classes')}): " + ", ".join(f"{name} {count:,}" for name, count in counts.items())
            + f"; largest/smallest class {record.get('imbalance_ratio', 1):.2f}×"
            + ("; balanced class weights." if record.get("class_weights") else "."),
            f"Tokenizer: {record.get('tokenizer')}, {record.get('vocab_size')} tokens; rows of {record.get('sequence_length')} tokens "
            f"({count(record.get('truncated_train_examples', 0), 'training example')} truncated).",
        ]
        return lines

    def usage(self, run_dir: Path) -> list[str]:
        return [f"kerasllm evaluate {run_dir}", f'kerasllm predict {run_dir} "a gripping, funny film"',
                f"kerasllm finetune {run_dir} --data MORE_DATA", f"kerasllm export {run_dir} --format savedmodel"]

    def notes(self, record: dict) -> list[str]:
        ratio = record.get("imbalance_ratio", 1.0)
        notes = []
        if ratio >= 1.5 and not record.get("class_weights"):
            notes.append(f"the classes are imbalanced (largest/smallest {ratio:.1f}×: {record.get('class_counts')}); "
                         "--set classification.class_weight=balanced weights the rare classes up")
        if record.get("truncated_train_examples"):
            truncated = record["truncated_train_examples"]
            notes.append(f"{count(truncated, 'training example')} {were(truncated)} longer than data.sequence_length="
                         f"{record.get('sequence_length')} tokens and were truncated")
        return notes
