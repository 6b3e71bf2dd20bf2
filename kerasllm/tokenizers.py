"""Text tokenizers, fitted on the training split and saved with the model.

Kinds (`data.tokenizer`):

* `char` — one token per Unicode code point.
* `word` — words, runs of punctuation and runs of white space (lossless).
* `wordpiece` — BERT-style subwords learned with tensorflow-text's WordPiece learner.
  Text is first split into words (letters, digits, marks, `_`), single punctuation
  characters and single white-space characters; white space is kept as tokens, so
  decoding gives back the text exactly. A word with a character the training split
  never had becomes one `[UNK]` (WordPiece's rule).
* `sentencepiece` — a unigram SentencePiece model (the `sentencepiece` trainer, no
  normalisation, white space kept, byte fallback: unseen characters become UTF-8
  byte tokens, so every text round-trips).

Special tokens come first: `[PAD]` 0, `[UNK]` 1, `[BOS]` 2, `[EOS]` 3, then
`[CLS]`, `[SEP]`, `[MASK]` for encoders (`encoder_tokens=True`).

One object serves three places: `encode`/`decode` in plain Python (generation),
`tf_encode`/`tf_decode` as TensorFlow ops (inside tf.data and inside exported
graphs; `tf_module()` wraps them in a `tf.Module` for a SavedModel).

`tokenizer.json` carries a `format_version`; files written by kerasllm 0.1
(`{"level", "vocabulary"}` with `[UNK]` at id 0) still load.
"""

from __future__ import annotations

import base64
import collections
import functools
import io
import json
import re
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.quiet import captured_stderr
from kerasllm.core.validation import TOKENIZERS
from kerasllm.hub import HubTokenizer

# Lazy imports: TensorFlow, tensorflow-text and sentencepiece are imported inside methods: `kerasllm --help` and
# `kerasllm list` load this module and must not load them.

FORMAT_VERSION = 2
KINDS = TOKENIZERS  # what `fit` makes
PAD, UNK, BOS, EOS, CLS, SEP, MASK = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"
BASE_SPECIALS = (PAD, UNK, BOS, EOS)
ENCODER_SPECIALS = (CLS, SEP, MASK)
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"

# RE2 patterns (tensorflow-text); \p{M} keeps combining marks inside their word.
WORD_CHARS = r"[\p{L}\p{N}\p{M}_]"
WORD_SPLIT = rf"{WORD_CHARS}+|[^\p{{L}}\p{{N}}\p{{M}}_\s]+|\s+"  # word level: words, punctuation runs, space runs
PIECE_SPLIT = rf"{WORD_CHARS}+|[^\p{{L}}\p{{N}}\p{{M}}_\s]|\s"  # wordpiece pre-split: words, single chars


@functools.cache
def tf_text():
    """tensorflow_text, imported (once) with its C++ start-up lines hidden."""
    with captured_stderr():
        import tensorflow_text
    return tensorflow_text


def _special_ids(specials: list[str]) -> dict[str, int]:
    """`["[PAD]", "[UNK]", ...]` at the start of a vocabulary → `{"pad": 0, "unk": 1, ...}`."""
    return {name.strip("[]").lower(): i for i, name in enumerate(specials)}


def _regex_split(texts, pattern: str):
    """A (batch,) string tensor → ragged (batch, pieces) of the matches of `pattern` (lossless)."""
    return tf_text().regex_split(texts, pattern, pattern)


class Tokenizer:
    """Maps text to ids and back. Build one with `Tokenizer.fit` or `Tokenizer.load`.

    Args:
        vocabulary: tokens by id; the special tokens first.
        special_tokens: `{"pad": 0, "unk": 1, ...}` ids of the special tokens present.

    Example:
        >>> tok = Tokenizer.fit("hello world", kind="char")
        >>> tok.decode(tok.encode("hold"))
        'hold'
    """

    kind = ""
    # Each token decodes to text on its own (else a token may be part of a character: byte fallback).
    tokens_stand_alone = True

    def __init__(self, vocabulary: list[str], special_tokens: dict[str, int]):
        if not vocabulary:
            raise ValueError("empty vocabulary")
        if "unk" not in special_tokens:
            raise ValueError("a vocabulary needs an [UNK] token")
        self.vocabulary = list(vocabulary)
        self.special_tokens = dict(special_tokens)
        self._ids = {token: i for i, token in enumerate(self.vocabulary)}
        self._table = None

    # --- fitting ------------------------------------------------------------------------
    @staticmethod
    def fit(text: str, kind: str = "char", vocab_size: int = 20000, encoder_tokens: bool = False) -> "Tokenizer":
        """A tokenizer of `kind` fitted on `text` with at most `vocab_size` tokens (specials included)."""
        if kind == "keras-hub":
            raise UserError("a keras-hub tokenizer comes with its preset; start from it with `kerasllm finetune PRESET --data …`")
        if kind not in KINDS:
            raise UserError(f"unknown tokenizer {kind!r}; use one of {', '.join(KINDS)}")
        specials = list(BASE_SPECIALS + (ENCODER_SPECIALS if encoder_tokens else ()))
        if vocab_size <= len(specials):
            raise UserError(f"data.vocab_size={vocab_size} leaves no room beside the {len(specials)} special tokens; raise it")
        return TOKENIZERS[kind].fit_text(text, vocab_size, specials)

    @classmethod
    def _ranked(cls, tokens, vocab_size: int, specials: list[str]) -> "Tokenizer":
        counts = collections.Counter(tokens)
        for special in specials:
            counts.pop(special, None)
        ranked = sorted(counts, key=lambda token: (-counts[token], token))[: vocab_size - len(specials)]
        return cls(specials + sorted(ranked), _special_ids(specials))

    # --- ids ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)

    def special_id(self, name: str) -> int | None:
        return self.special_tokens.get(name)

    @property
    def unk_id(self) -> int:
        return self.special_tokens["unk"]

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get("eos")

    def with_specials(self, specials: tuple[str, ...]) -> "Tokenizer":
        """This tokenizer with `specials` (e.g. `[USER]`) as special tokens: the missing ones get new ids after the
        vocabulary (a model trained with this tokenizer grows its embedding by as many rows). Text never encodes to
        them: templates place them by id."""
        missing = [name for name in specials if name.strip("[]").lower() not in self.special_tokens]
        if not missing:
            return self
        saved = self.to_dict()
        saved["vocabulary"] = [*self.vocabulary, *missing]
        saved["special_tokens"] = {**self.special_tokens, **{name.strip("[]").lower(): len(self.vocabulary) + i
                                                             for i, name in enumerate(missing)}}
        return Tokenizer.from_dict(saved)

    def never_generated(self) -> list[int]:
        """Ids a sampler must not produce: every special token except [EOS]."""
        return sorted(i for name, i in self.special_tokens.items() if name != "eos")

    def token(self, token_id: int) -> str:
        """The text of one token ([UNK] shows as U+FFFD; other special tokens as nothing)."""
        if token_id == self.unk_id:
            return REPLACEMENT
        if token_id in self.special_tokens.values():
            return ""
        return self.vocabulary[token_id]

    # --- plain Python -------------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32)."""
        import tensorflow as tf

        return self.tf_encode(tf.constant([text])).flat_values.numpy().astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.token(int(i)) for i in ids)

    def encode_batch(self, texts: list[str], chunk: int = 2048) -> list[np.ndarray]:
        """Token ids of many texts (TensorFlow ops, a chunk at a time)."""
        import tensorflow as tf

        out = []
        for start in range(0, len(texts), chunk):
            ragged = self.tf_encode(tf.constant(texts[start:start + chunk]))
            out += [row.astype(np.int32) for row in ragged.numpy()]
        return out

    @functools.cached_property
    def whitespace_ids(self) -> np.ndarray:
        """Ids of tokens that are only white space (classifiers drop them: they carry no meaning there)."""
        return np.asarray([i for i in range(self.vocab_size)
                           if i not in self.special_tokens.values() and self.token(i) and self.token(i).isspace()], np.int32)

    # --- TensorFlow ops -----------------------------------------------------------------
    def lookup_table(self):
        import tensorflow as tf

        if self._table is None:
            keys = tf.constant(self.vocabulary)
            self._table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.range(len(self.vocabulary), dtype=tf.int64)),
                default_value=self.unk_id,
            )
        return self._table

    def tf_pieces(self, texts):
        raise NotImplementedError

    def tf_encode(self, texts):
        """(batch,) strings → ragged (batch, tokens) int32 ids, as TensorFlow ops."""
        import tensorflow as tf

        pieces = self.tf_pieces(texts)
        return tf.cast(tf.ragged.map_flat_values(self.lookup_table().lookup, pieces), tf.int32)

    def tf_decode(self, ids):
        """Ragged or dense (batch, tokens) ids → (batch,) strings, as TensorFlow ops."""
        import tensorflow as tf

        texts = [self.token(i) for i in range(self.vocab_size)]
        strings = tf.gather(tf.constant(texts), tf.cast(ids, tf.int32))
        return tf.strings.reduce_join(strings, axis=-1)

    def tf_module(self):
        """A `tf.Module` with `tokenize(strings)` and `detokenize(ids)` signatures, for SavedModels."""
        import tensorflow as tf

        tokenizer = self

        class TokenizerModule(tf.Module):
            def __init__(self):
                super().__init__()
                self.table = tokenizer.lookup_table()

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
            def tokenize(self, texts):
                return tokenizer.tf_encode(texts).to_tensor(default_value=tokenizer.special_tokens.get("pad", 0))

            @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
            def detokenize(self, ids):
                return tokenizer.tf_decode(ids)

        return TokenizerModule()

    # --- files --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "vocabulary": self.vocabulary,
                "special_tokens": self.special_tokens}

    def save(self, folder: Path, file_name: str = files.TOKENIZER_FILE) -> Path:
        path = Path(folder) / file_name
        files.write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @staticmethod
    def from_dict(saved: dict) -> "Tokenizer":
        if "format_version" not in saved:  # kerasllm 0.1: {"level", "vocabulary"}, [UNK] at id 0
            return TOKENIZERS[saved["level"]](saved["vocabulary"], {"unk": 0})
        if saved["format_version"] > FORMAT_VERSION:
            raise ValueError(f"format_version {saved['format_version']} is newer than this kerasllm reads ({FORMAT_VERSION}); upgrade kerasllm")
        cls = TOKENIZERS[saved["kind"]]
        return cls.from_saved(saved)

    @classmethod
    def from_saved(cls, saved: dict) -> "Tokenizer":
        return cls(saved["vocabulary"], saved["special_tokens"])

    @staticmethod
    def load(folder: Path, file_name: str = files.TOKENIZER_FILE) -> "Tokenizer":
        path = Path(folder) / file_name
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("kind") == "keras-hub":  # a preset's tokenizer, saved beside as a keras-hub preset
                return HubTokenizer.load(folder, saved)
            return Tokenizer.from_dict(saved)
        except FileNotFoundError as error:
            raise UserError(f"{path} is missing; the run folder is incomplete, retrain or restore it") from error
        except (ValueError, KeyError, TypeError) as error:
            raise UserError(f"{path} is corrupt ({error}); retrain or restore the run folder") from error


class CharTokenizer(Tokenizer):
    """One token per code point."""

    kind = "char"

    @classmethod
    def fit_text(cls, text, vocab_size, specials):
        return cls._ranked(text, vocab_size, specials)

    def encode(self, text: str) -> np.ndarray:
        get, unk = self._ids.get, self.unk_id
        return np.fromiter((get(char, unk) for char in text), dtype=np.int32, count=len(text))

    def tf_pieces(self, texts):
        import tensorflow as tf

        return tf.strings.unicode_split(texts, "UTF-8")


class WordTokenizer(Tokenizer):
    """Words, punctuation runs and white-space runs; decoding joins them back losslessly."""

    kind = "word"

    @classmethod
    def fit_text(cls, text, vocab_size, specials):
        import tensorflow as tf

        pieces = _regex_split(tf.constant([text]), WORD_SPLIT).flat_values.numpy()
        return cls._ranked((piece.decode("utf-8") for piece in pieces), vocab_size, specials)

    def tf_pieces(self, texts):
        return _regex_split(texts, WORD_SPLIT)


class WordPieceTokenizer(Tokenizer):
    """BERT-style WordPiece over words, single punctuation and single white-space characters."""

    kind = "wordpiece"
    SUFFIX = "##"

    @classmethod
    def fit_text(cls, text, vocab_size, specials):
        import tensorflow as tf
        from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

        pieces = [p.decode("utf-8") for p in _regex_split(tf.constant([text]), PIECE_SPLIT).flat_values.numpy()]
        counts = collections.Counter(pieces)
        spaces = sorted(p for p in counts if p.isspace())
        words = {p: n for p, n in counts.items() if not p.isspace()}
        vocabulary = learner.learn(words, vocab_size, list(specials) + spaces, lower_thresh=2,
                                   max_unique_chars=max(1000, len(set(text))))
        return cls(vocabulary, _special_ids(specials))

    def tf_encode(self, texts):
        import tensorflow as tf

        words = _regex_split(texts, PIECE_SPLIT)  # (batch, words)
        wordpiece = tf_text().WordpieceTokenizer(self.lookup_table(), suffix_indicator=self.SUFFIX, unknown_token=UNK,
                                               token_out_type=tf.int64, max_bytes_per_word=200)
        return tf.cast(wordpiece.tokenize(words).merge_dims(-2, -1), tf.int32)  # (batch, pieces)

    def token(self, token_id: int) -> str:
        text = super().token(token_id)
        return text[len(self.SUFFIX):] if text.startswith(self.SUFFIX) and len(text) > len(self.SUFFIX) else text


class SentencePieceTokenizer(Tokenizer):
    """A unigram SentencePiece model with byte fallback (lossless)."""

    kind = "sentencepiece"
    tokens_stand_alone = False  # byte-fallback tokens are pieces of one UTF-8 character

    def __init__(self, vocabulary, special_tokens, proto: bytes):
        super().__init__(vocabulary, special_tokens)
        self.proto = proto
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        self._model = None

    @classmethod
    def fit_text(cls, text, vocab_size, specials):
        import sentencepiece

        lines = [line for line in text.split("\n") if line.strip()]
        if not lines:
            raise UserError("the training text is empty; sentencepiece needs some text to learn from")
        model = io.BytesIO()
        encoder = [s for s in specials if s not in BASE_SPECIALS]
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
                pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
                control_symbols=encoder, user_defined_symbols=["\n"], byte_fallback=True, character_coverage=1.0,
                normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
                allow_whitespace_only_pieces=True, hard_vocab_limit=False, max_sentence_length=1 << 16,
                num_threads=2, minloglevel=2,
            )
        except RuntimeError as error:
            needed = re.search(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)", str(error))
            if needed:  # the 256 byte-fallback tokens, the special tokens and every character must fit
                raise UserError(f"data.vocab_size={vocab_size} is too small for sentencepiece here (its characters and 256 "
                                f"byte tokens need {needed.group(1)}); raise it to at least {needed.group(1)}") from error
            raise UserError(f"sentencepiece could not learn a vocabulary: {str(error).splitlines()[0][:200]}; "
                            "use more text or another data.vocab_size") from error
        proto = model.getvalue()
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        vocabulary = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        special_tokens = {name.strip("[]").lower(): vocabulary.index(name) for name in specials}
        return cls(vocabulary, special_tokens, proto)

    @classmethod
    def from_saved(cls, saved):
        return cls(saved["vocabulary"], saved["special_tokens"], base64.b64decode(saved["sentencepiece_model"]))

    def to_dict(self) -> dict:
        return dict(super().to_dict(), sentencepiece_model=base64.b64encode(self.proto).decode("ascii"))

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.processor.encode(text, out_type=int), dtype=np.int32)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if int(i) not in self.special_tokens.values() or int(i) == self.unk_id]
        return self.processor.decode(ids)

    def token(self, token_id: int) -> str:
        return self.decode([token_id])

    def _tf_model(self):
        if self._model is None:
            with captured_stderr():  # "normalizer.cc(51) LOG(INFO) ..." from the bundled sentencepiece
                self._model = tf_text().SentencepieceTokenizer(model=self.proto, out_type="int32")
        return self._model

    def tf_encode(self, texts):
        return self._tf_model().tokenize(texts)

    def tf_decode(self, ids):
        return self._tf_model().detokenize(ids)

    def lookup_table(self):
        return self._tf_model()


TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer, WordPieceTokenizer, SentencePieceTokenizer)}
