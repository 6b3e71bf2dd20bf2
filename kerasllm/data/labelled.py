"""Labelled text for classification: (text or sentence pair, label) examples from files, folders or TFDS.

Sources (`--data`):

* a `.csv`, `.tsv` or `.jsonl` file with a header (CSV/TSV) or one object per line
  (JSONL); `data.text_column` names the text (two names, `premise,hypothesis`, make
  sentence pairs) and `data.label_column` the label;
* the SST format, one `<label> <sentence>` per line (any other file name);
* a split prefix: `stsa.binary` stands for `stsa.binary.train`, `.dev` and `.test`
  (any of these suffixes: train, dev/validation/valid, test); the same for a folder
  holding `train.csv`, `dev.csv`, `test.csv` (or .tsv/.jsonl/.txt);
* a folder with one sub-folder of `.txt` files per class, or with `train/` and
  `test/` (or `dev/`) folders laid out that way (as IMDB's `aclImdb`);
* `tfds:NAME` (`tfds:imdb_reviews`, `tfds:glue/sst2`): the text and label features
  from the builder's info; splits whose labels are all -1 (GLUE's test) are not used.

Without a held-out split, a seeded random `data.validation_fraction` of the rows is
validation. Labels stay strings here; the task maps them to ids with the training
split's classes (`ClassLabels`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core.errors import UserError
from kerasllm.core.files import absent
from kerasllm.data import tfds as tfds_source
from kerasllm.data.text import read_text_file, text_files

# Lazy imports: TensorFlow is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and
# must not load them.

TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".jsonl": None}
SPLIT_NAMES = {"train": ("train",), "validation": ("dev", "validation", "valid", "val"), "test": ("test",)}
LOCAL_FORMATS = ("a .csv/.tsv/.jsonl file (--set data.text_column=… data.label_column=…), an SST-style file of "
                 "'<label> <sentence>' lines, or a folder with one sub-folder of .txt files per class")


@dataclass
class Examples:
    """Texts (or (first, second) pairs) and their labels as strings, and where each came from (for errors)."""

    texts: list
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class LabelledSplit:
    train: Examples
    validation: Examples
    test: Examples | None
    class_names: list[str] | None  # names the source itself gives (tfds ClassLabel, class folders), in id order
    record: dict


# --- one file --------------------------------------------------------------------------------

def _columns(text_column: str, label_column: str = "") -> list[str]:
    """The text columns `data.text_column` names; the label column among them would show the model its answer."""
    names = [name.strip() for name in text_column.split(",") if name.strip()]
    if label_column and label_column in names:
        raise UserError(f"data.text_column names {label_column!r}, the label column (data.label_column): the model would "
                        "read the answer; name only text columns")
    return names


def _pick_text_columns(header: list[str], text_column: str, label_column: str, where: str) -> list[str]:
    wanted = _columns(text_column, label_column)
    if not wanted:
        for candidate in ("text", "sentence", "review", "content"):
            if candidate in header:
                return [candidate]
        others = [name for name in header if name != label_column]
        if len(others) == 1:
            return others
        raise UserError(f"{where} has columns {', '.join(header)}; name the text with --set data.text_column=NAME "
                        "(two names, a,b, for sentence pairs)")
    if len(wanted) > 2:
        raise UserError("data.text_column names at most two columns (a sentence pair)")
    for name in wanted:
        if name not in header:
            raise UserError(f"{where} has no text column {name!r}; its columns: {', '.join(header)} "
                            "(set data.text_column)")
    return wanted


def _row_example(row: dict, text_columns: list[str], label_column: str, where: str, number: int):
    if label_column not in row:
        raise UserError(f"{where} has no label column {label_column!r}; its columns: {', '.join(map(str, row))} "
                        "(set data.label_column)")
    texts = []
    for name in text_columns:
        value = row.get(name)
        if isinstance(value, list):  # JSONL lists of sentences are joined
            value = " ".join(map(str, value))
        if value is None or not str(value).strip():
            raise UserError(f"{where} row {number} has an empty text in column {name!r}; fill it or remove the row")
        texts.append(str(value))
    label = row[label_column]
    if label is None or str(label).strip() == "":
        raise UserError(f"{where} row {number} has no label in column {label_column!r}; fill it or remove the row")
    return (texts[0] if len(texts) == 1 else tuple(texts)), str(label).strip()


def read_table(path: Path, text_column: str, label_column: str) -> Examples:
    """A CSV/TSV file with a header row, or a JSONL file."""
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    content = _read(path)
    texts, labels = [], []
    if delimiter is None:
        rows = []
        for number, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path} line {number} is not JSON ({error.msg}); write one JSON object per line") from error
            if not isinstance(row, dict):
                raise UserError(f"{path} line {number} is not a JSON object; write one object per line")
            rows.append((number, row))
        if not rows:
            raise UserError(f"{path} holds no rows")
        header = list(rows[0][1])
    else:
        reader = csv.reader(content.splitlines(), delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        table = [row for row in reader if row]
        if len(table) < 2:
            raise UserError(f"{path} needs a header row and at least one example")
        header = [name.strip() for name in table[0]]
        rows = []
        for number, values in enumerate(table[1:], 2):
            if len(values) != len(header):
                raise UserError(f"{path} row {number} has {len(values)} columns but the header has {len(header)}; "
                                f"fix the row (quote {'commas' if delimiter == ',' else 'tabs'} inside a text)")
            rows.append((number, dict(zip(header, values))))
    columns = _pick_text_columns(header, text_column, label_column, str(path))
    for number, row in rows:
        text, label = _row_example(row, columns, label_column, str(path), number)
        texts.append(text)
        labels.append(label)
    return Examples(texts, labels)


def read_label_lines(path: Path) -> Examples:
    """SST style: `<label> <text>` per line."""
    texts, labels = [], []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.strip().partition(" ")
        if not text.strip():
            raise UserError(f"{path} line {number} has a label but an empty text; each line must be '<label> <text>'")
        texts.append(text.strip())
        labels.append(label)
    if not texts:
        raise UserError(f"{path} holds no examples; each line must be '<label> <text>'")
    check_label_lines(path, labels)
    return Examples(texts, labels)


MAX_LINE_LABELS = 50  # SST-style files hold a few classes; prose read that way gives one "class" per first word


def check_label_lines(path: Path, labels: list[str]) -> None:
    """Refuse plain text taken for `<label> <text>` lines: its first words would become hundreds of classes."""
    distinct = sorted(set(labels))
    if len(distinct) > MAX_LINE_LABELS or (len(labels) >= 20 and len(distinct) > len(labels) / 2):
        shown = ", ".join(repr(label) for label in distinct[:4])
        raise UserError(f"{path} does not look like '<label> <text>' lines: their first words give {len(distinct)} labels "
                        f"({shown}, ...); label the lines, or use a .csv/.tsv/.jsonl file with a label column "
                        "(plain text trains a language model)")


def read_file(path: Path, text_column: str, label_column: str) -> Examples:
    if path.suffix.lower() in TABLE_SUFFIXES:
        return read_table(path, text_column, label_column)
    return read_label_lines(path)


def _read(path: Path) -> str:
    return read_text_file(path)


# --- folders and split families ----------------------------------------------------------------

def split_files(path: Path) -> dict[str, Path]:
    """`{train, validation, test}` files for a split prefix (`stsa.binary` → `stsa.binary.train`, …) or a folder
    holding `train.csv`/`dev.csv`/`test.csv` (any table suffix or .txt)."""
    found = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            if path.is_dir():
                candidates = [path / f"{name}{suffix}" for suffix in (*TABLE_SUFFIXES, ".txt")]
            else:
                candidates = [path.with_name(f"{path.name}.{name}")]
            match = next((c for c in candidates if c.is_file()), None)
            if match:
                found[split] = match
                break
    return found if "train" in found else {}


def class_folder(folder: Path) -> tuple[Examples, list[str]] | None:
    """A folder whose sub-folders are classes of .txt files (None if it is not laid out that way)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not classes or not any(text_files(c) for c in classes):
        return None
    texts, labels = [], []
    for class_dir in classes:
        for file in text_files(class_dir):
            text = read_text_file(file).strip()
            if not text:
                raise UserError(f"{file} is empty; remove it or give it text")
            texts.append(text)
            labels.append(class_dir.name)
    names = [c.name for c in classes if c.name in set(labels)]
    if len(names) < 2:
        raise UserError(f"{folder} has only one class folder with .txt files; classification needs at least two")
    return Examples(texts, labels), names


def tfds_examples(name: str, text_column: str, label_column: str):
    """Splits of a TFDS text-classification set, with the label names from its ClassLabel feature."""
    try:
        info = tfds_source.prepared_info(name)
    except UserError as error:
        raise UserError(f"{error} — offline, use local labelled text instead: {LOCAL_FORMATS}") from error
    features = info.features
    label_key = label_column if label_column in features else tfds_source.feature_of(info, name, "label")
    text_keys = _columns(text_column, label_column) or [k for k, f in features.items() if k != label_key and _is_text(f)]
    if not text_keys or len(text_keys) > 2:
        raise UserError(f"tfds:{name} has features {', '.join(features)}; name the text with --set data.text_column=NAME")
    names = list(features[label_key].names)
    splits = {}
    for split in tfds_source.split_names(info):
        texts, labels = [], []
        for example in tfds_source.load_split(name, split).as_numpy_iterator():
            label = int(example[label_key])
            if label < 0:
                continue  # GLUE's test labels are hidden (-1)
            parts = tuple(example[key].decode("utf-8") for key in text_keys)
            texts.append(parts[0] if len(parts) == 1 else parts)
            labels.append(names[label])
        if texts:
            splits[split] = Examples(texts, labels)
    return splits, names


def _is_text(feature) -> bool:
    import tensorflow as tf

    return getattr(feature, "dtype", None) == tf.string


# --- entry point -----------------------------------------------------------------------------

def seeded_split(examples: Examples, fraction: float, seed: int = 0) -> tuple[Examples, Examples]:
    order = np.random.default_rng(seed).permutation(len(examples))
    cut = int(round(len(examples) * (1 - fraction)))
    pick = lambda index: Examples([examples.texts[i] for i in index], [examples.labels[i] for i in index])
    return pick(order[:cut]), pick(order[cut:])


def digest(*parts: Examples | None) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        if part is not None:
            hasher.update(json.dumps([part.texts, part.labels], ensure_ascii=False).encode("utf-8"))
    return hasher.hexdigest()


def gather_splits(source: str, text_column: str, label_column: str) -> tuple[dict[str, Examples], list[str] | None]:
    """The source's own splits (at least `train`) and the class names it gives, if any."""
    if source.startswith("tfds:"):
        return tfds_examples(source.removeprefix("tfds:"), text_column, label_column)
    path = Path(source).expanduser()
    files = split_files(path) if not path.is_file() else {}
    if files:
        return {split: read_file(file, text_column, label_column) for split, file in files.items()}, None
    if path.is_file():
        return {"train": read_file(path, text_column, label_column)}, None
    if path.is_dir():
        split_dirs = {split: path / name for split, names in SPLIT_NAMES.items() for name in names if (path / name).is_dir()}
        if "train" in split_dirs:
            loaded = {split: class_folder(folder) for split, folder in split_dirs.items()}
            if loaded["train"] is not None:
                return {split: value[0] for split, value in loaded.items() if value}, loaded["train"][1]
        single = class_folder(path)
        if single is not None:
            return {"train": single[0]}, single[1]
        raise UserError(f"{path} is not labelled text; pass {LOCAL_FORMATS}")
    raise UserError(f"data path {path} {absent(path)}; pass {LOCAL_FORMATS}, a split prefix such as "
                    "sst/stsa.binary (for stsa.binary.train, .dev, .test), or tfds:NAME")


def load_labelled(source: str, validation_fraction: float = 0.1, text_column: str = "", label_column: str = "label") -> LabelledSplit:
    """Training, validation (the source's, else a seeded random fraction) and test examples, with a record."""
    splits, class_names = gather_splits(source, text_column, label_column)
    train = splits.get("train")
    if train is None or len(train) == 0:
        raise UserError(f"{source} has no training examples")
    validation, test = splits.get("validation"), splits.get("test")
    if validation is None:  # the test split (if any) stays for `kerasllm evaluate --data`
        train, validation = seeded_split(train, validation_fraction)
        how = f"seeded random {validation_fraction:.0%} of the training rows is validation"
    else:
        how = "the source's validation (dev) split is validation"
    if len(validation) == 0:
        raise UserError(f"the validation split of {source} is empty; use more data or a larger data.validation_fraction")
    record = {
        "source": source, "sha256": digest(train, validation, test), "split": how, "validation_fraction": validation_fraction,
        "train_examples": len(train), "validation_examples": len(validation), "test_examples": len(test) if test else 0,
        "sentence_pairs": isinstance(train.texts[0], tuple), "text_column": text_column, "label_column": label_column,
    }
    return LabelledSplit(train, validation, test, class_names, record)
