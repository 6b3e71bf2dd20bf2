"""Seq2seq: source text → target text (translation, summarization).

Rows have static shapes (for XLA and TPUs): the source is `ids [EOS] [PAD]…` of
`data.sequence_length`; the decoder reads `[BOS] ids` and predicts `ids [EOS]`, both of
`seq2seq.target_length`. Longer pairs are truncated or dropped (`seq2seq.long_pairs`), with
counts in data.json. The loss is masked on padding (weights 0) with optional label
smoothing; metrics: loss, perplexity and token accuracy over real target tokens.
`evaluate` decodes (greedy, or beam search with `--beam N`) and scores the detokenized
text with sacreBLEU (BLEU, chrF, with signatures) and rouge-score (ROUGE-1/2/L, best
over references), showing a few samples.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm.core import files
from kerasllm.core.config import absolute_source, doc
from kerasllm.core.errors import UserError
from kerasllm.core.words import count, were
from kerasllm.data import DataInfo, pipeline
from kerasllm.data.parallel import Pairs, gather, load_pairs
from kerasllm.data.splits import check_unchanged
from kerasllm.evaluation import text_scores
from kerasllm.generation import check_beam_fits
from kerasllm.tasks.base import Endpoint, PreparedData, Table, Task
from kerasllm.tasks.seq2seq_decoding import decode, graph_translate, seq2seq_decoder
from kerasllm.tokenizers import Tokenizer

# Lazy imports: Keras and TensorFlow are imported inside methods: `kerasllm --help` and `kerasllm list` load this
# module and must not load them.

SAMPLES = 3
CHECKED_SOURCES = 16  # validation sources the SavedModel's translate signature is checked on


class TargetTokenizer:
    """The target side's own tokenizer (`seq2seq.shared_vocab=false`), saved as target_tokenizer.json."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    def save(self, folder: Path) -> Path:
        return self.tokenizer.save(folder, files.TARGET_TOKENIZER_FILE)


@dataclass
class Seq2SeqConfig:
    """The seq2seq task's own config section, `seq2seq.*` (these keys were `data.*` and `train.label_smoothing` before)."""

    source_lang: str = field(default="", metadata=doc(
        "The source language: a tfds feature, or the <lang> of a folder of <split>.<lang> files. Files named a.en,a.de "
        "and tfds configs named pt_to_en say it themselves."))
    target_lang: str = field(default="", metadata=doc("The target language."))
    source_field: str = field(default="source", metadata=doc("JSONL: the source field (a list of strings is joined)."))
    target_field: str = field(default="target", metadata=doc("JSONL: the target field (a list is several references)."))
    target_lists: str = field(default="expand", metadata=doc(
        "Train on every reference of a source (`expand`) or the first only (`first`); evaluation uses all."))
    shared_vocab: bool = field(default=True, metadata=doc("One tokenizer for source and target (else one each)."))
    target_length: int = field(default=0, metadata=doc("Target tokens per row ([BOS]/[EOS] included); 0 means data.sequence_length."))
    long_pairs: str = field(default="truncate", metadata=doc(
        "Pairs longer than the rows are `truncate`d or `drop`ped (the counts are recorded)."))
    label_smoothing: float = field(default=0.0, metadata=doc("Label smoothing of the target distribution (0.1 in the Transformer paper)."))

    def validate(self) -> None:
        checks = [
            (self.target_lists in ("expand", "first"), "seq2seq.target_lists must be expand or first"),
            (self.long_pairs in ("truncate", "drop"), "seq2seq.long_pairs must be truncate or drop"),
            (self.target_length == 0 or self.target_length >= 3, "seq2seq.target_length must be 0 (= data.sequence_length) or at least 3"),
            (0 <= self.label_smoothing < 1, "seq2seq.label_smoothing must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


@dataclass
class Rows:
    sources: np.ndarray  # (pairs, source_length)
    targets_in: np.ndarray  # (pairs, target_length): [BOS] ids
    targets_out: np.ndarray  # (pairs, target_length): ids [EOS]
    truncated: int
    dropped: int


def pack_sources(tokenizer, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows `ids [EOS] [PAD]…` and whether each was cut."""
    rows = np.zeros((len(texts), length), np.int32)
    cut = np.zeros(len(texts), bool)
    for row, ids in enumerate(tokenizer.encode_batch(texts)):
        cut[row] = len(ids) > length - 1
        ids = list(ids[: length - 1]) + [tokenizer.eos_id]
        rows[row, :len(ids)] = ids
    return rows, cut


def pack_pairs(source_tokenizer, target_tokenizer, sources: list[str], targets: list[str], source_length: int,
               target_length: int, long_pairs: str) -> Rows:
    source_rows, source_cut = pack_sources(source_tokenizer, sources, source_length)
    bos, eos = target_tokenizer.special_id("bos"), target_tokenizer.eos_id
    targets_in = np.zeros((len(targets), target_length), np.int32)
    targets_out = np.zeros((len(targets), target_length), np.int32)
    target_cut = np.zeros(len(targets), bool)
    for row, ids in enumerate(target_tokenizer.encode_batch(targets)):
        sequence = [bos, *ids, eos]
        target_cut[row] = len(sequence) > target_length + 1
        sequence = sequence[: target_length + 1]  # a cut target has no [EOS]: the sentence goes on
        targets_in[row, :len(sequence) - 1] = sequence[:-1]
        targets_out[row, :len(sequence) - 1] = sequence[1:]
    long = source_cut | target_cut
    if long_pairs == "drop":
        keep = ~long
        return Rows(source_rows[keep], targets_in[keep], targets_out[keep], 0, int(long.sum()))
    return Rows(source_rows, targets_in, targets_out, int(long.sum()), 0)


def seq2seq_dataset(rows: Rows, batch_size: int, **batching):
    """({source, target_in}, target_out, weights) batches; padding weighs 0."""
    import tensorflow as tf

    weights = (rows.targets_out > 0).astype(np.float32)
    dataset = pipeline.array_dataset(np.arange(len(rows.sources)), rows.targets_out, batch_size, weights, **batching)

    sources, targets_in = tf.constant(rows.sources), tf.constant(rows.targets_in)

    def inputs(index, targets_out, weight):
        return {"source": tf.gather(sources, index), "target_in": tf.gather(targets_in, index)}, targets_out, weight

    return dataset.map(inputs)


def make_loss(label_smoothing: float):
    """Cross-entropy on integer targets from logits, averaged over real (weight 1) tokens; with label smoothing
    (Keras' sparse loss has none) through one-hot targets."""
    import keras

    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")

    class SmoothedLoss(keras.losses.Loss):
        def __init__(self, smoothing: float, **kwargs):
            super().__init__(reduction="mean_with_sample_weight", name="smoothed_crossentropy", **kwargs)
            self.smoothing = smoothing

        def call(self, y_true, y_pred):
            vocab = keras.ops.shape(y_pred)[-1]
            one_hot = keras.ops.one_hot(keras.ops.cast(y_true, "int32"), vocab)
            return keras.losses.categorical_crossentropy(one_hot, y_pred, from_logits=True, label_smoothing=self.smoothing)

        def get_config(self):
            return {"smoothing": self.smoothing}

    return SmoothedLoss(label_smoothing)


class Seq2Seq(Task):
    """Source text → target text with an encoder–decoder model."""

    name = "seq2seq"
    quality = ("bleu", "chrf")
    config_sections = {"seq2seq": Seq2SeqConfig}
    can_generate = True
    weighted_metrics = True  # padding positions weigh 0
    evaluate_options = ("beam", "on_progress")
    continues_prompt = False

    def loss(self, spec, config=None):
        return make_loss(config.seq2seq.label_smoothing if config is not None else 0.0)

    def tokenizers(self, artifacts: dict) -> tuple:
        source = artifacts["tokenizer"]
        return source, artifacts.get("target_tokenizer") or source

    def lengths(self, config) -> tuple[int, int]:
        return config.data.sequence_length, config.seq2seq.target_length or config.data.sequence_length

    def prepare(self, config, spec, artifacts: dict | None = None) -> PreparedData:
        data, train, options = config.data, config.train, config.seq2seq
        split = load_pairs(data.source, options, data.validation_fraction)
        train_sources, train_targets = split.train.training_pairs(options.target_lists)
        artifacts = dict(artifacts or {})
        if "tokenizer" not in artifacts:
            if options.shared_vocab:
                artifacts["tokenizer"] = Tokenizer.fit("\n".join(train_sources + train_targets), data.tokenizer, data.vocab_size)
            else:
                artifacts["tokenizer"] = Tokenizer.fit("\n".join(train_sources), data.tokenizer, data.vocab_size)
                artifacts["target_tokenizer"] = Tokenizer.fit("\n".join(train_targets), data.tokenizer, data.vocab_size)
        source_tokenizer, target_tokenizer = self.tokenizers(artifacts)
        source_length, target_length = self.lengths(config)
        rows = pack_pairs(source_tokenizer, target_tokenizer, train_sources, train_targets, source_length, target_length,
                          options.long_pairs)
        validation_sources, validation_targets = split.validation.training_pairs("first")
        held = pack_pairs(source_tokenizer, target_tokenizer, validation_sources, validation_targets, source_length, target_length,
                          "truncate")
        steps = pipeline.steps_in(len(rows.sources), train.batch_size, train.steps_per_epoch, "training", config.runtime.steps_per_execution)
        shown = split.validation.sources[0], split.validation.references[0][0]

        def train_dataset(first_epoch: int, epochs: int, skip_steps: int = 0):
            return seq2seq_dataset(rows, train.batch_size, shuffle_seed=train.seed, steps_per_epoch=steps,
                                   first_epoch=first_epoch, epochs=epochs, skip_steps=skip_steps)

        def sample(model) -> str:
            decoder = seq2seq_decoder(model, spec, target_length)
            source_row, _ = pack_sources(source_tokenizer, [shown[0]], source_length)
            (ids,) = decode(decoder, source_row, target_tokenizer, target_length)
            return f"source: {shown[0]}\nreference: {shown[1]}\nhypothesis: {target_tokenizer.decode(ids)}"

        record = dict(split.record, tokenizer=source_tokenizer.kind, vocab_size=source_tokenizer.vocab_size,
                      target_vocab_size=target_tokenizer.vocab_size, shared_vocab=options.shared_vocab,
                      sequence_length=source_length, target_length=target_length, input_length=source_length,
                      train_rows=len(rows.sources), truncated_train_pairs=rows.truncated, dropped_train_pairs=rows.dropped,
                      long_pairs=options.long_pairs, example_source=example_prompt(shown[0]))
        saved = [source_tokenizer] + ([TargetTokenizer(target_tokenizer)] if target_tokenizer is not source_tokenizer else [])
        return PreparedData(
            info=DataInfo(vocab_size=source_tokenizer.vocab_size, sequence_length=source_length,
                          num_classes=target_tokenizer.vocab_size, pad_id=0),
            train=train_dataset, validation=seq2seq_dataset(held, train.batch_size),
            steps_per_epoch=steps, items_per_step=train.batch_size, unit="pairs", record=record, artifacts=saved,
            sample=sample if train.sample_length > 0 else None,
        )

    def load_artifacts(self, run_dir: Path) -> dict:
        artifacts = {"tokenizer": Tokenizer.load(run_dir)}
        if (Path(run_dir) / files.TARGET_TOKENIZER_FILE).is_file():
            artifacts["target_tokenizer"] = Tokenizer.load(run_dir, files.TARGET_TOKENIZER_FILE)
        return artifacts

    def report(self, results: dict, record: dict) -> dict:
        loss = float(results["loss"])
        return {"loss": loss, "perplexity": math.exp(min(loss, 700)), "accuracy": float(results["accuracy"])}

    def notes(self, record: dict) -> list[str]:
        notes = [record["languages_note"]] if record.get("languages_note") else []
        if record.get("truncated_train_pairs"):
            truncated = record["truncated_train_pairs"]
            notes.append(f"{count(truncated, 'training pair')} {were(truncated)} longer than the rows "
                         f"({record.get('sequence_length')} source / {record.get('target_length')} target tokens) and were truncated; "
                         "--set seq2seq.long_pairs=drop drops them instead")
        if record.get("dropped_train_pairs"):
            dropped = record["dropped_train_pairs"]
            notes.append(f"{count(dropped, 'training pair')} longer than the rows {were(dropped)} dropped")
        return notes

    # --- using a trained model ----------------------------------------------------------------
    def translate(self, model, run, texts: list[str], beam: int = 0, max_length: int = 0, batch_size: int = 64,
                  on_progress=None) -> list[str]:
        source_tokenizer, target_tokenizer = self.tokenizers(run.artifacts)
        check_beam_fits(beam, target_tokenizer.vocab_size)
        source_length, target_length = self.lengths(run.config)
        rows, _ = pack_sources(source_tokenizer, texts, source_length)
        decoder = seq2seq_decoder(model, run.spec, target_length)
        ids = decode(decoder, rows, target_tokenizer, max_length or target_length, beam=beam, batch_size=batch_size,
                     on_progress=on_progress)
        return [target_tokenizer.decode(row) for row in ids]

    def held_out(self, run, data: str | None) -> tuple[Pairs, str]:
        config, options = run.config.data, run.config.seq2seq
        if not data:
            split = load_pairs(config.source, options, config.validation_fraction)
            check_unchanged(split.record, run.data_record)
            return split.validation, f"validation split of {config.source}"

        splits, _ = gather(absolute_source(data) if "," not in data else data, options)
        if "test" in splits:
            return splits["test"], f"test split of {data}"
        parts = list(splits.values())
        return Pairs([s for p in parts for s in p.sources], [r for p in parts for r in p.references]), data

    def evaluate(self, model, run, data: str | None = None, batch_size: int = 64, beam: int = 0, on_progress=None) -> dict:
        """BLEU, chrF (sacreBLEU) and ROUGE (rouge-score) of decoded text on the validation split or `data`, with samples;
        `on_progress(done, total)` after each batch of sentences decoded (minutes with a wide beam)."""
        pairs, where = self.held_out(run, data)
        started = time.perf_counter()
        hypotheses = self.translate(model, run, pairs.sources, beam=beam, batch_size=batch_size, on_progress=on_progress)
        seconds = time.perf_counter() - started
        scores = text_scores(hypotheses, pairs.references, rouge=True)
        samples = [{"source": s, "reference": r[0], "hypothesis": h}
                   for s, r, h in list(zip(pairs.sources, pairs.references, hypotheses))[:SAMPLES]]
        return {"data": where, "pairs": len(pairs), "decoding": f"beam {beam}" if beam else "greedy", **scores,
                "sentences_per_second": len(pairs) / max(seconds, 1e-9), "samples": samples}

    def generate(self, model, run, prompts: list[str], *, max_length: int = 0, beam: int = 0, on_text=None, **sampling) -> list[str]:
        """Translations or summaries (greedy, or beam search); sampling options (temperature, top-k/p, stop) do not apply."""
        _, target_length = self.lengths(run.config)
        outputs = self.translate(model, run, prompts, beam=beam, max_length=min(max_length, target_length) or target_length)
        if on_text:
            for row, text in enumerate(outputs):
                on_text(row, text)
        return outputs

    def export_sample(self, model, run, batch: int = 2):
        source_length, target_length = self.lengths(run.config) if run else (8, 8)
        vocab = run.artifacts["tokenizer"].vocab_size if run else 8
        rng = np.random.default_rng(0)
        return {"source": rng.integers(4, vocab, size=(batch, source_length)).astype("int32"),
                "target_in": rng.integers(4, vocab, size=(batch, target_length)).astype("int32")}

    def savedmodel_endpoints(self, model, run) -> list:
        """`translate(string) -> string`: greedy decoding with the tokenizers in the graph; checked against
        `kerasllm generate` (greedy) on the first validation sources."""
        import tensorflow as tf

        source_tokenizer, target_tokenizer = self.tokenizers(run.artifacts)
        source_length, target_length = self.lengths(run.config)
        fn = graph_translate(model, source_tokenizer, target_tokenizer, source_length, target_length)
        try:
            texts = self.held_out(run, None)[0].sources[:CHECKED_SOURCES]
        except (UserError, OSError):  # the training data moved: check on words from the vocabulary instead
            texts = [" ".join(source_tokenizer.vocabulary[4:9])]

        def check(loaded) -> str:
            graph = [text.decode("utf-8") for text in loaded.translate(tf.constant(texts)).numpy()]
            python = self.translate(model, run, texts)
            wrong = [(t, g, p) for t, g, p in zip(texts, graph, python) if g != p]
            return f"{len(wrong)} of {len(texts)} translations, e.g. {wrong[0][0]!r}: {wrong[0][1]!r} vs {wrong[0][2]!r}" if wrong else ""

        resources = [tokenizer.lookup_table() for tokenizer in {id(t): t for t in (source_tokenizer, target_tokenizer)}.values()]
        return [Endpoint("translate", fn, [tf.TensorSpec([None], tf.string)], resources, check, example=texts[0])]

    def tables(self, results: dict, title: str) -> list[Table]:
        tables = super().tables(results, title)
        if results.get("samples"):
            tables.append(Table("samples", ["source", "reference", "hypothesis"],
                                [[s["source"], s["reference"], s["hypothesis"]] for s in results["samples"]]))
        return tables

    def data_lines(self, record: dict) -> list[str]:
        direction = f"{record.get('source_lang')} → {record.get('target_lang')}" if record.get("source_lang") else "source → target"
        return [
            f"Source: `{record.get('source')}` ({direction}; sha256 `{str(record.get('sha256', ''))[:16]}…`): "
            f"{record.get('train_pairs', 0):,} training and {record.get('validation_pairs', 0):,} validation pairs; "
            f"split: {record.get('split')}.",
            f"Tokenizer: {record.get('tokenizer')} ({'shared' if record.get('shared_vocab') else 'separate'}), "
            f"{record.get('vocab_size')} tokens; rows of {record.get('sequence_length')} source / {record.get('target_length')} "
            f"target tokens ({record.get('truncated_train_pairs', 0):,} training pairs truncated, "
            f"{record.get('dropped_train_pairs', 0):,} dropped).",
        ]

    def usage(self, run_dir: Path) -> list[str]:
        """The next commands; the `generate` example is a source from the run's own validation data."""
        try:
            example = files.read_json(Path(run_dir) / files.DATA_FILE).get("example_source") or "SOURCE TEXT"
        except UserError:  # a run folder without its data record
            example = "SOURCE TEXT"
        return [f"kerasllm evaluate {run_dir} --beam 4", f"kerasllm generate {run_dir} --prompt {shlex.quote(example)}",
                f"kerasllm export {run_dir} --format savedmodel"]


def example_prompt(source: str, limit: int = 100) -> str:
    """A validation source, short enough for a command line: cut at a word before `limit` characters."""
    source = " ".join(source.split())
    return source if len(source) <= limit else source[:limit].rsplit(" ", 1)[0]
