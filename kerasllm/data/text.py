"""Text sources: a file, a folder of .txt files, a TFDS name, or a corpus built in.

`load_text(source, validation_fraction)` returns the training and validation text
and a record of how they were split, saved with the run so that `evaluate` can
rebuild the same validation text later.

Built-in corpora (need no network):

* `builtin:python-docs` — the English prose of the Python reference documentation
  that ships with CPython itself as `pydoc_data.topics` (what `help("if")` shows):
  about 465,000 characters in Python 3.11, ~95 distinct characters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kerasllm.errors import UserError

BUILTIN_CORPORA = {
    "python-docs": "Python reference documentation prose shipped with CPython (pydoc_data.topics)",
}


@dataclass
class TextSplit:
    """Training and validation text plus how they were made (`record`, saved as JSON)."""

    train: str
    validation: str
    record: dict


def builtin_text(name: str) -> str:
    if name == "python-docs":
        try:
            from pydoc_data.topics import topics
        except ImportError as error:  # some distributions strip pydoc_data
            raise UserError("this Python has no pydoc_data module; pass --data FILE with your own text") from error
        return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    raise UserError(f"unknown built-in corpus {name!r}; built-in corpora: {', '.join('builtin:' + n for n in BUILTIN_CORPORA)}")


def builtin_vocab_size(source: str) -> int:
    """Character vocabulary size ([UNK] included) of a built-in corpus's training split."""
    return len(set(split_by_fraction(builtin_text(source.removeprefix("builtin:")), 0.1)[0])) + 1


def read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks like a binary file, not text; pass a UTF-8 text file or a folder of .txt files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 (bad byte at offset {error.start}); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from error
    return text.removeprefix("\ufeff")


def read_path(path: Path) -> str:
    if not path.exists():
        raise UserError(f"data path {path} does not exist; pass a text file, a folder of .txt files, tfds:NAME or builtin:NAME")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {path} has no .txt files; put UTF-8 .txt files in it or pass a file")
        text = "\n\n".join(read_text_file(p) for p in files)
    else:
        text = read_text_file(path)
    if not text.strip():
        raise UserError(f"{path} holds no text; pass a non-empty UTF-8 text file")
    return text


def split_by_fraction(text: str, validation_fraction: float) -> tuple[str, str]:
    """The last `validation_fraction` of the characters is the validation text."""
    cut = int(round(len(text) * (1 - validation_fraction)))
    return text[:cut], text[cut:]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_text(source: str, validation_fraction: float = 0.1) -> TextSplit:
    """Read `source` and split it into training and validation text."""
    if source.startswith("tfds:"):
        from kerasllm.data.tfds import load_text_splits

        return load_text_splits(source.removeprefix("tfds:"), validation_fraction)
    if source.startswith("builtin:"):
        text = builtin_text(source.removeprefix("builtin:"))
    else:
        text = read_path(Path(source).expanduser())
    train, validation = split_by_fraction(text, validation_fraction)
    record = {
        "source": source,
        "sha256": sha256(text),
        "characters": len(text),
        "split": f"last {validation_fraction:.0%} of the characters is validation",
        "validation_fraction": validation_fraction,
        "train_characters": len(train),
        "validation_characters": len(validation),
    }
    return TextSplit(train, validation, record)


def reload_validation(record: dict) -> str:
    """The validation text of a past run, checked against the hash it was trained with."""
    split = load_text(record["source"], record.get("validation_fraction", 0.1))
    if split.record.get("sha256") != record.get("sha256"):
        raise UserError(
            f"the data at {record['source']} changed since this run was trained; pass --data FILE to evaluate on it anyway"
        )
    return split.validation
