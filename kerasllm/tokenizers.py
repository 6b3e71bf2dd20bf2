"""Text tokenizers: characters or words, fitted on the training split and saved with the model.

Id 0 is `[UNK]`: a character or word the training split never had. Encoding and
decoding are pure Python/NumPy, so the same tokenizer serves training, evaluation,
generation and exported models without TensorFlow.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import numpy as np

from kerasllm.errors import UserError

UNKNOWN = "[UNK]"
# Words, runs of punctuation and runs of white space: decoding joins tokens back losslessly.
WORD_PATTERN = re.compile(r"\w+|[^\w\s]+|\s+")
FILENAME = "tokenizer.json"


class Tokenizer:
    """Maps text to ids and back at one level (`char` or `word`).

    Args:
        level: `char` or `word`.
        vocabulary: tokens by id; entry 0 must be `[UNK]`.

    Example:
        >>> tok = Tokenizer.fit("hello world", level="char")
        >>> tok.decode(tok.encode("hold"))
        'hold'
    """

    def __init__(self, level: str, vocabulary: list[str]):
        if level not in ("char", "word"):
            raise ValueError(f"unknown tokenizer level {level!r}")
        if not vocabulary or vocabulary[0] != UNKNOWN:
            raise ValueError(f"vocabulary must start with {UNKNOWN}")
        self.level = level
        self.vocabulary = list(vocabulary)
        self._ids = {token: i for i, token in enumerate(self.vocabulary)}

    @classmethod
    def fit(cls, text: str, level: str = "char", max_vocab: int = 20000) -> "Tokenizer":
        """Vocabulary of the `max_vocab - 1` most frequent tokens of `text` (ties broken by token)."""
        counts = collections.Counter(cls.split(text, level))
        ranked = sorted(counts, key=lambda token: (-counts[token], token))[: max_vocab - 1]
        return cls(level, [UNKNOWN] + sorted(ranked))

    @staticmethod
    def split(text: str, level: str) -> list[str]:
        return list(text) if level == "char" else WORD_PATTERN.findall(text)

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32); unknown tokens become 0."""
        get = self._ids.get
        return np.fromiter((get(token, 0) for token in self.split(text, self.level)), dtype=np.int32)

    def decode(self, ids) -> str:
        return "".join(self.token(int(i)) for i in ids)

    def token(self, token_id: int) -> str:
        return "\N{REPLACEMENT CHARACTER}" if token_id == 0 else self.vocabulary[token_id]

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILENAME
        path.write_text(json.dumps({"level": self.level, "vocabulary": self.vocabulary}, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, folder: Path) -> "Tokenizer":
        path = Path(folder) / FILENAME
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return cls(saved["level"], saved["vocabulary"])
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing; the run folder is incomplete, retrain or restore it") from error
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is corrupt ({error}); retrain or restore the run folder") from error
