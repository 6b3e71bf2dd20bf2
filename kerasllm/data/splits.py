"""Train/validation splits of text and the record of how they were made (saved as data.json).

The one place that decides a split and writes its record, for every text source.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import dataclass

from kerasllm.core.errors import UserError


@dataclass
class TextSplit:
    """Training and validation text plus how they were made (`record`, saved as JSON)."""

    train: str
    validation: str
    record: dict


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_by_fraction(text: str, validation_fraction: float) -> tuple[str, str]:
    """The last `validation_fraction` of the characters is the validation text."""
    cut = int(round(len(text) * (1 - validation_fraction)))
    return text[:cut], text[cut:]


def text_split(source: str, train: str, validation: str | None, validation_fraction: float,
               held_out_name: str = "", **extra) -> TextSplit:
    """Split (unless the source had its own `validation`) and record it.

    Args:
        source: the data source as the run records it (absolute for local paths).
        train: the training text, or all of it when `validation` is None.
        validation: the source's own held-out text, if it has one.
        validation_fraction: used when `validation` is None.
        held_out_name: the held-out split's name in the source (`validation`, `test`).
        extra: more record fields (e.g. the Python version for a built-in corpus).
    """
    if validation is None:
        whole = train
        train, validation = split_by_fraction(whole, validation_fraction)
        how = f"last {validation_fraction:.0%} of the characters is validation"
    else:
        whole = train + validation
        how = f"the source's {held_out_name!r} split is validation"
    record = {
        "source": source,
        "sha256": sha256(whole),
        "characters": len(whole),
        "split": how,
        "validation_fraction": validation_fraction,
        "train_characters": len(train),
        "validation_characters": len(validation),
        **extra,
    }
    return TextSplit(train, validation, record)


def python_version() -> str:
    return platform.python_version()


def check_unchanged(now: dict, then: dict, action: str = "evaluate on it anyway") -> None:
    """Refuse data whose sha256 differs from the run's record, saying why when it can."""
    if now.get("sha256") == then.get("sha256"):
        return
    source = then["source"]
    if source.startswith("builtin:") and now.get("python_version") != then.get("python_version"):
        raise UserError(
            f"{source} comes from this Python's own documentation (Python {now.get('python_version')}), which differs "
            f"from the copy the run was trained on (Python {then.get('python_version', 'unknown')}); "
            f"pass --data {source} to {action}"
        )
    raise UserError(f"the data at {source} changed since this run was trained; pass --data {source} to {action}")
