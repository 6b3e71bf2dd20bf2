"""Encoder inputs: texts (or sentence pairs) → fixed-length rows `[CLS] a [SEP] (b [SEP]) [PAD]…`.

Static shapes for XLA and TPUs: every row has `sequence_length` ids. White-space tokens
(kerasllm's word and wordpiece tokenizers keep them, for lossless language modelling)
are dropped: a classifier does not need them and they would double the length.
Rows that do not fit are truncated (a pair: the longer side first) and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerasllm.core.errors import UserError


@dataclass
class Packed:
    ids: np.ndarray  # (examples, sequence_length) int32
    truncated: int  # examples that lost tokens


class Packer:
    """Packs texts with a tokenizer's [CLS]/[SEP]/[PAD] (or [BOS]/[EOS] when it has no [CLS]/[SEP])."""

    def __init__(self, tokenizer, sequence_length: int):
        if sequence_length < 4:
            raise UserError("data.sequence_length must be at least 4 for classification")
        self.tokenizer, self.length = tokenizer, sequence_length
        special = tokenizer.special_id
        self.cls_id = special("cls") if special("cls") is not None else special("bos")
        self.sep_id = special("sep") if special("sep") is not None else special("eos")
        self.pad_id = special("pad") or 0
        self.drop = np.asarray(getattr(tokenizer, "whitespace_ids", ()), np.int32)

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        rows = self.tokenizer.encode_batch(texts)
        return [row[~np.isin(row, self.drop)] for row in rows] if self.drop.size else rows

    def pack(self, texts: list) -> Packed:
        """Rows for single texts or (first, second) pairs."""
        pairs = bool(texts) and isinstance(texts[0], tuple)
        firsts = self._encode([t[0] if pairs else t for t in texts])
        seconds = self._encode([t[1] for t in texts]) if pairs else [None] * len(texts)
        ids = np.full((len(texts), self.length), self.pad_id, np.int32)
        truncated = 0
        for row, (first, second) in enumerate(zip(firsts, seconds)):
            pieces, cut = self.fit(first, second)
            truncated += cut
            ids[row, :len(pieces)] = pieces
        return Packed(ids, truncated)

    def tf_pack(self, texts):
        """`pack` of single texts as TensorFlow ops (a SavedModel signature): (batch,) strings → (batch, length) ids."""
        import tensorflow as tf

        ids = self.tokenizer.tf_encode(texts)
        if self.drop.size:
            ids = tf.ragged.boolean_mask(ids, tf.ragged.map_flat_values(
                lambda flat: tf.logical_not(tf.reduce_any(tf.equal(flat[:, None], tf.constant(self.drop)), axis=1)), ids))
        head = [self.cls_id] if self.cls_id is not None else []
        sep = [self.sep_id] if self.sep_id is not None else []
        ids = ids[:, : self.length - len(head) - len(sep)]
        batch = tf.shape(texts)[0]
        columns = lambda values: tf.RaggedTensor.from_tensor(tf.tile(tf.constant([values], tf.int32), [batch, 1]))
        ids = tf.concat([part for part in (columns(head) if head else None, ids, columns(sep) if sep else None) if part is not None], 1)
        return ids.to_tensor(default_value=self.pad_id, shape=[None, self.length])

    def fit(self, first: np.ndarray, second: np.ndarray | None) -> tuple[list[int], bool]:
        head = [self.cls_id] if self.cls_id is not None else []
        sep = [self.sep_id] if self.sep_id is not None else []
        room = self.length - len(head) - len(sep) * (1 if second is None else 2)
        if second is None:
            return head + list(first[:room]) + sep, len(first) > room
        a, b = list(first), list(second)
        cut = len(a) + len(b) > room
        while len(a) + len(b) > room:  # trim the longer side, as BERT does
            (a if len(a) >= len(b) else b).pop()
        return head + a + sep + b + sep, cut

    def chunks(self, text_lines: list[str]) -> np.ndarray:
        """Unlabelled text (lines) → rows of whole lines or `sequence_length - 2`-token pieces of long ones (masked LM)."""
        room = self.length - 2
        rows = []
        for ids in self._encode([line for line in text_lines if line.strip()]):
            for start in range(0, len(ids), room):
                piece = ids[start:start + room]
                if len(piece) >= 2:
                    rows.append([self.cls_id, *piece, self.sep_id])
        packed = np.full((len(rows), self.length), self.pad_id, np.int32)
        for row, pieces in enumerate(rows):
            packed[row, :len(pieces)] = pieces
        return packed
