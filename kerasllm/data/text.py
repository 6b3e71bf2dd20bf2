"""Text sources: a file, a folder of .txt files, a TFDS name, or a corpus built in.

`load_text(source, validation_fraction)` returns the training and validation text
and a record of how they were split (`kerasllm.data.splits`), saved with the run so
that `evaluate` can rebuild the same validation text later.

Built-in corpora (need no network):

* `builtin:python-docs` — the English prose of the Python reference documentation
  that ships with CPython itself as `pydoc_data.topics` (what `help("if")` shows):
  about 465,000 characters in Python 3.11, ~95 distinct characters. Its text can
  change between Python releases; the record keeps the Python version.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from kerasllm.data.splits import TextSplit, check_unchanged, python_version, split_by_fraction, text_split

__all__ = ["TextSplit", "check_unchanged", "evaluation_text", "load_text", "reload_validation"]
from kerasllm.core.errors import UserError
from kerasllm.core.files import absent
from kerasllm.data import tfds as tfds_source
from kerasllm.tokenizers import BASE_SPECIALS

BUILTIN_CORPORA = {
    "python-docs": "Python reference documentation prose shipped with CPython (pydoc_data.topics)",
}
HIDDEN = (".", "_")


def builtin_text(name: str) -> str:
    if name == "python-docs":
        try:
            from pydoc_data.topics import topics
        except ImportError as error:  # some distributions strip pydoc_data
            raise UserError("this Python has no pydoc_data module; pass --data FILE with your own text") from error
        return "\n\n".join(topics[key].strip() for key in sorted(topics)) + "\n"
    raise UserError(f"unknown built-in corpus {name!r}; built-in corpora: {', '.join('builtin:' + n for n in BUILTIN_CORPORA)}")


def builtin_vocab_size(source: str) -> int:
    """Character vocabulary size (special tokens included) of a built-in corpus's training split."""
    return len(set(split_by_fraction(builtin_text(source.removeprefix("builtin:")), 0.1)[0])) + len(BASE_SPECIALS)


GZIP_MAGIC = b"\x1f\x8b"


def gunzip(path: Path, data: bytes) -> bytes:
    """A gzip file's contents, or one line saying it was cut short or is damaged."""
    try:
        return gzip.decompress(data)
    except EOFError as error:
        raise UserError(f"{path} is a gzip file cut short ({len(data):,} bytes, the end is missing); copy or download "
                        "it again") from error
    except (OSError, zlib.error) as error:
        raise UserError(f"{path} is a damaged gzip file ({error}); copy or download it again") from error


def read_text_file(path: Path) -> str:
    """A UTF-8 text file (gzipped too: `.gz`, or gzip's magic bytes), checked to be text."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror}); check its permissions") from error
    if data[:2] == GZIP_MAGIC:
        data = gunzip(path, data)
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks like a binary file, not text; pass a UTF-8 text file or a folder of .txt files")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 (bad byte at offset {error.start}); convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from error
    return text.removeprefix("\ufeff")


def text_files(folder: Path) -> list[Path]:
    """The .txt files under `folder`, in sorted order, skipping hidden files and folders."""
    return sorted(p for p in folder.rglob("*.txt")
                  if p.is_file() and not any(part.startswith(HIDDEN) for part in p.relative_to(folder).parts))


TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl")


def read_path(path: Path) -> str:
    if not path.is_file() and not path.is_dir():
        raise UserError(f"data path {path} {absent(path)}; pass a text file, a folder of .txt files, tfds:NAME or builtin:NAME")
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:  # a labelled table's rows would be read as prose
        raise UserError(f"{path} is a table ({path.suffix}), and this model trains on plain text: its separators and labels "
                        "would be read as text; pass a .txt file or a folder of them (classifiers such as lstm-classifier "
                        "train on labelled tables)")
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise UserError(f"folder {path} has no .txt files; put UTF-8 .txt files in it or pass a file")
        text = "\n\n".join(read_text_file(p) for p in files)
    else:
        text = read_text_file(path)
    if not text.strip():
        raise UserError(f"{path} holds no text; pass a non-empty UTF-8 text file")
    return text


def load_text(source: str, validation_fraction: float = 0.1) -> TextSplit:
    """Read `source` and split it into training and validation text."""
    if not source.strip():
        raise UserError("no data source given; pass --data PATH, tfds:NAME or builtin:NAME")
    if source.startswith("tfds:"):
        return tfds_source.load_text_splits(source.removeprefix("tfds:"), validation_fraction)
    if source.startswith("builtin:"):
        text = builtin_text(source.removeprefix("builtin:"))
        return text_split(source, text, None, validation_fraction, python_version=python_version())
    return text_split(source, read_path(Path(source).expanduser()), None, validation_fraction)


def evaluation_text(record: dict, data: str | None = None) -> tuple[str, str]:
    """The text `evaluate` reads and how to name it: all of `data` if given, else the run's validation text."""
    if data:
        split = load_text(data, 0.5)
        return split.train + split.validation, data
    return reload_validation(record), f"validation split of {record['source']}"


def reload_validation(record: dict) -> str:
    """The validation text of a past run, checked against the hash it was trained with."""
    split = load_text(record["source"], record.get("validation_fraction", 0.1))
    check_unchanged(split.record, record)
    return split.validation
