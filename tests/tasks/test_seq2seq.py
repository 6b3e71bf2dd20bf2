"""Seq2seq: parallel-text sources, the encoder–decoder models, cached and beam decoding, BLEU/chrF/ROUGE."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest

from kerasllm import cli
from kerasllm.core.errors import UserError
from kerasllm.data.parallel import load_pairs

WORDS = "red blue green cat dog sun moon tree".split()
TINY = ["--set", "data.tokenizer=word", "--set", "data.vocab_size=50", "--set", "data.sequence_length=10",
        "--set", "seq2seq.target_length=10", "--set", "train.batch_size=32", "--set", "train.warmup_steps=10",
        "--set", "train.sample_length=0"]


def reverse_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 5))]
        pairs.append((" ".join(words), " ".join(reversed(words))))
    return pairs


class Data:
    """DataConfig-like settings for `load_pairs`."""

    def __init__(self, **values):
        self.source_lang, self.target_lang, self.source_field, self.target_field = "", "", "source", "target"
        self.__dict__.update(values)


def invoke(runner, *args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture(scope="module")
def reverse_run(tmp_path_factory, runner):
    folder = tmp_path_factory.mktemp("reverse")
    (folder / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in reverse_pairs(2000)))
    out = folder / "run"
    result = invoke(runner, "train", "transformer-seq2seq", "--data", folder / "pairs.tsv", "--out", out, "--quiet", "--epochs", "4",
                    *TINY)
    assert result.exit_code == 0, result.output
    return out


def loaded(run_dir):
    from kerasllm import runs
    from kerasllm.export.saving import load_model

    return runs.load_run(run_dir), load_model(run_dir / "model.keras")


# --- sources ---------------------------------------------------------------------------------

def test_pair_files_language_folders_tsv_and_jsonl(tmp_path):
    pairs = reverse_pairs(20)
    for split, chunk in (("train", pairs[:12]), ("val", pairs[12:16]), ("test_2016_flickr", pairs[16:])):
        (tmp_path / f"{split}.en.gz").write_bytes(gzip.compress("".join(s + "\n" for s, _ in chunk).encode()))
        (tmp_path / f"{split}.de").write_text("".join(t + "\n" for _, t in chunk))
    split = load_pairs(str(tmp_path), Data(source_lang="en", target_lang="de"))
    assert (len(split.train), len(split.validation), len(split.test)) == (12, 4, 4)
    assert split.train.references[0] == [pairs[0][1]]
    files = load_pairs(f"{tmp_path / 'train.en.gz'},{tmp_path / 'train.de'}", Data(), 0.25)
    assert len(files.train) + len(files.validation) == 12
    with pytest.raises(UserError, match="has the languages de, en; set the direction with --set seq2seq.source_lang=de "
                                        "--set seq2seq.target_lang=en"):
        load_pairs(str(tmp_path), Data(source_lang="fr", target_lang="de"))


def test_pair_sources_that_would_mislead_are_one_line(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\n")
    with pytest.raises(UserError, match=r"--data .*a.en, names one file; pass two line-aligned files"):
        load_pairs(f"{tmp_path / 'a.en'},", Data())
    with pytest.raises(UserError, match="as both the source and the target, so the model would learn to copy"):
        load_pairs(f"{tmp_path / 'a.en'},{tmp_path / 'a.en'}", Data())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.md").write_text("x")
    with pytest.raises(UserError) as error:
        load_pairs(str(empty), Data())
    assert "no pair of <split>.<lang> files (such as train.en and train.de)" in str(error.value) and "e.g. )" not in str(error.value)
    (tmp_path / "train.de").write_text("eins\nzwei\n")
    (tmp_path / "train.en").write_text("one\ntwo\n")
    with pytest.raises(UserError, match="are both en, so the model would learn to copy"):
        load_pairs(str(tmp_path), Data(source_lang="en", target_lang="en"))


def test_jsonl_lists_are_joined_and_references_expanded(tmp_path):
    rows = [{"source": ["First sentence.", "Second one."], "target": ["tldr a", "tldr b"]},
            {"source": "Plain text.", "target": "tldr c"}] * 5
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    split = load_pairs(str(tmp_path / "train.jsonl"), Data(), 0.2)
    everything = split.train.sources + split.validation.sources
    assert "First sentence. Second one." in everything
    sources, targets = split.train.training_pairs("expand")
    assert len(targets) == sum(len(r) for r in split.train.references) > len(split.train)
    assert len(split.train.training_pairs("first")[1]) == len(split.train)


def test_pair_files_say_their_languages_and_a_config_may_not_contradict_them(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\ndrei\n")
    (tmp_path / "b.de").write_text("x\ny\nz\n")
    (tmp_path / "plain.src").write_text("one\ntwo\nthree\n")
    (tmp_path / "plain.tgt").write_text("eins\nzwei\ndrei\n")
    pair = f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}"
    record = load_pairs(pair, Data(), 0.34).record
    assert (record["source_lang"], record["target_lang"]) == ("en", "de") and "languages_note" not in record
    assert load_pairs(pair, Data(source_lang="en"), 0.34).record["target_lang"] == "de"
    with pytest.raises(UserError, match="seq2seq.source_lang is xx but the source file a.en is en; drop the setting"):
        load_pairs(pair, Data(source_lang="xx"), 0.34)
    with pytest.raises(UserError, match="seq2seq.target_lang is fr but the target file a.de is de"):
        load_pairs(pair, Data(source_lang="en", target_lang="fr"), 0.34)
    with pytest.raises(UserError, match="names two de files .* so the model would learn to copy"):
        load_pairs(f"{tmp_path / 'a.de'},{tmp_path / 'b.de'}", Data(), 0.34)
    # older runs' configs hold the recipes' old default pt → en for every local pair file: the files win, with a note
    legacy = load_pairs(pair, Data(source_lang="pt", target_lang="en"), 0.34).record
    assert (legacy["source_lang"], legacy["target_lang"]) == ("en", "de") and "old default" in legacy["languages_note"]
    from kerasllm.tasks.seq2seq import Seq2Seq

    assert legacy["languages_note"] in Seq2Seq().notes(legacy)
    # suffixes that name sides, not languages: the config's languages (here none) are recorded
    plain = load_pairs(f"{tmp_path / 'plain.src'},{tmp_path / 'plain.tgt'}", Data(), 0.34).record
    assert (plain["source_lang"], plain["target_lang"]) == ("", "")


@pytest.mark.parametrize(("files", "message"), [
    ({"a.en": "one\ntwo\n", "a.de": "eins\n"}, "has 2 lines but"),
    ({"a.en": "one\n\n", "a.de": "eins\nzwei\n"}, "pair 2 has an empty source"),
    ({"a.en": "one\ntwo\n", "a.de": "eins\n \n"}, "pair 2 has an empty target"),
])
def test_bad_pair_files_are_one_line_errors(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message):
        load_pairs(f"{tmp_path / 'a.en'},{tmp_path / 'a.de'}", Data())


def test_a_jsonl_line_without_the_field_is_one_line(runner, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"source": "a", "target": "b"}\n{"source": "c", "summary": "d"}\n')
    result = invoke(runner, "train", "transformer-seq2seq", "--data", tmp_path / "d.jsonl", "--out", tmp_path / "x")
    assert result.exit_code == 2 and "line 2 has no field 'target'" in result.output and not (tmp_path / "x").exists()


def test_tfds_translation_set_with_mock_data(tmp_path):
    from tests.conftest import mock_tfds

    with mock_tfds("ted_hrlr_translate/pt_to_en", {"train": 8, "validation": 8, "test": 8}, tmp_path):
        split = load_pairs("tfds:ted_hrlr_translate/pt_to_en", Data(source_lang="pt", target_lang="en"))
        inferred = load_pairs("tfds:ted_hrlr_translate/pt_to_en", Data())  # the config name says pt → en
        with pytest.raises(UserError, match="are both en, so the model would learn to copy"):
            load_pairs("tfds:ted_hrlr_translate/pt_to_en", Data(source_lang="en", target_lang="en"))
    assert (len(split.train), len(split.validation), len(split.test)) == (8, 8, 8)
    assert (inferred.record["source_lang"], inferred.record["target_lang"]) == ("pt", "en")


# --- metrics ---------------------------------------------------------------------------------

def test_bleu_of_a_reference_is_100_and_of_nothing_0_and_rouge_takes_the_best_reference():
    from kerasllm.evaluation import text_scores

    references = [["the cat sat on the mat"], ["a dog runs in the park"]]
    perfect = text_scores(["the cat sat on the mat", "a dog runs in the park"], references, rouge=True)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100) and perfect["rouge1"] == pytest.approx(100)
    assert text_scores(["", ""], references)["bleu"] == 0
    best = text_scores(["a dog runs"], [["something else entirely", "a dog runs"]], rouge=True)
    assert best["rouge1"] == pytest.approx(100) and "nrefs:2" in best["bleu_signature"]


# --- the model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    from kerasllm.data import DataInfo
    from kerasllm.zoo.transformer_seq2seq import TransformerSeq2SeqConfig, build

    return build(TransformerSeq2SeqConfig(num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=32, max_sequence_length=16,
                                          dropout=0.0), DataInfo(vocab_size=30, num_classes=25, sequence_length=10))


def test_the_decoder_cannot_see_future_target_tokens(model):
    source = np.asarray([[5, 6, 7, 3, 0, 0]])
    target = np.asarray([[2, 8, 9, 10, 11, 12]])
    changed = target.copy()
    changed[0, 4] = 20
    a = np.asarray(model({"source": source, "target_in": target}))
    b = np.asarray(model({"source": source, "target_in": changed}))
    np.testing.assert_allclose(a[0, :4], b[0, :4], atol=1e-6)
    assert np.abs(a[0, 4:] - b[0, 4:]).max() > 1e-4


def test_padding_does_not_change_the_outputs(model):
    source, target = np.asarray([[5, 6, 7, 3]]), np.asarray([[2, 8, 9]])
    short = np.asarray(model({"source": source, "target_in": target}))
    padded = np.asarray(model({"source": np.pad(source, ((0, 0), (0, 5))), "target_in": np.pad(target, ((0, 0), (0, 4)))}))
    np.testing.assert_allclose(short[0], padded[0, :3], atol=1e-5)


def test_cached_and_uncached_decoding_agree(model):
    from kerasllm.tasks.seq2seq_decoding import RecomputeDecoder
    from kerasllm.zoo.transformer_seq2seq import Seq2SeqCacheDecoder

    sources = np.asarray([[5, 6, 7, 3, 0, 0], [9, 3, 0, 0, 0, 0]], np.int32)
    cached, recomputed = Seq2SeqCacheDecoder(model).bind(sources), RecomputeDecoder(model, 12).bind(sources)
    a, state_a = cached.start([[2], [2]])
    b, state_b = recomputed.start([[2], [2]])
    for tokens in ([8, 9], [10, 4], [11, 12]):
        np.testing.assert_allclose(a, b, atol=1e-4)
        a, state_a = cached.step(state_a, np.asarray(tokens))
        b, state_b = recomputed.step(state_b, np.asarray(tokens))
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_beam_width_one_equals_greedy_and_beams_score_at_least_as_well(reverse_run):
    from kerasllm.tasks.seq2seq import pack_sources
    from kerasllm.tasks.seq2seq_decoding import decode, seq2seq_decoder

    run, model = loaded(reverse_run)
    tokenizer = run.artifacts["tokenizer"]
    rows, _ = pack_sources(tokenizer, ["red cat sun", "dog tree moon blue", "green"], 10)
    decoder = seq2seq_decoder(model, run.spec, 10)
    assert decode(decoder, rows, tokenizer, 10, beam=1) == decode(decoder, rows, tokenizer, 10)
    assert len(decode(decoder, rows, tokenizer, 10, beam=3)) == 3
    for beam in (0, 2):  # `evaluate --beam` shows how far decoding got: after each batch of sources
        seen: list = []
        decode(decoder, rows, tokenizer, 10, beam=beam, batch_size=2, on_progress=lambda *done, seen=seen: seen.append(done))
        assert seen == ([(2, 3), (3, 3)] if beam == 0 else [(1, 3), (2, 3), (3, 3)])


@pytest.mark.slow
def test_a_tiny_model_learns_to_reverse_sequences(reverse_run):
    run, model = loaded(reverse_run)
    pairs = reverse_pairs(100, seed=7)
    hypotheses = run.task.translate(model, run, [s for s, _ in pairs])
    exact = np.mean([h == t for h, (_, t) in zip(hypotheses, pairs)])
    assert exact >= 0.95, list(zip(hypotheses[:5], pairs[:5]))


@pytest.mark.slow
def test_evaluate_generate_and_export_through_the_cli(runner, reverse_run, tmp_path):
    results = json.loads(invoke(runner, "evaluate", reverse_run, "--beam", "2", "--json").output)
    assert results["bleu"] > 90 and results["decoding"] == "beam 2" and len(results["samples"]) == 3
    assert "BLEU" not in results["bleu_signature"] and "tok:13a" in results["bleu_signature"]
    lines = tmp_path / "lines.txt"
    lines.write_text("red cat\nsun moon tree\n")
    result = invoke(runner, "generate", reverse_run, "--file", lines)
    assert result.exit_code == 0 and result.output.splitlines()[-2:] == ["cat red", "tree moon sun"]
    exported = invoke(runner, "export", reverse_run, "--format", "savedmodel", "--out", tmp_path / "saved")
    assert exported.exit_code == 0 and "max |diff|" in exported.output, exported.output
    assert "signature `translate`: same outputs as `kerasllm`" in exported.output  # checked on 16 validation sources
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tmp_path / "saved"))  # text in, text out: the tokenizers are in the graph
    translated = loaded.translate(tf.constant(["red cat", "sun moon tree"])).numpy()
    assert [text.decode() for text in translated] == ["cat red", "tree moon sun"]


@pytest.mark.slow
def test_lstm_seq2seq_trains_and_translates(runner, tmp_path):
    (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in reverse_pairs(200)))
    out = tmp_path / "lstm"
    result = invoke(runner, "train", "lstm-seq2seq", "--data", tmp_path / "pairs.tsv", "--out", out, "--quiet", "--epochs", "1",
                    "--set", "model_args.units=16", "--set", "model_args.embedding_dim=8", *TINY)
    assert result.exit_code == 0, result.output
    results = json.loads(invoke(runner, "evaluate", out, "--json").output)
    assert 0 <= results["bleu"] <= 100 and results["pairs"] == 20
    exported = invoke(runner, "export", out, "--format", "savedmodel", "--out", tmp_path / "saved")
    assert exported.exit_code == 0 and "signature `translate`: same outputs" in exported.output, exported.output


def test_parameter_counts_match_the_built_models():
    from kerasllm.data import DataInfo
    from kerasllm.zoo import lstm_seq2seq, transformer_seq2seq

    info = DataInfo(vocab_size=40, num_classes=30, sequence_length=8)
    hparams = transformer_seq2seq.TransformerSeq2SeqConfig(num_layers=2, hidden_dim=16, num_heads=2, intermediate_dim=24,
                                                           max_sequence_length=12)
    assert transformer_seq2seq.build(hparams, info).count_params() == transformer_seq2seq.count_params(hparams, 40, 30)
    lstm = lstm_seq2seq.LSTMSeq2SeqConfig(embedding_dim=6, units=5)
    assert lstm_seq2seq.build(lstm, info).count_params() == lstm_seq2seq.count_params(lstm, 40, 30)
    small = transformer_seq2seq.TransformerSeq2SeqConfig(**transformer_seq2seq.PRESETS["small"])
    assert transformer_seq2seq.count_params(small) == 9_692_160


def test_the_next_step_hint_uses_a_source_from_the_runs_own_data(tmp_path):
    from kerasllm import tasks
    from kerasllm.core import files
    from kerasllm.tasks.seq2seq import example_prompt

    abstract = "We propose a method for training deep networks with loss scaling chosen automatically, which " * 3
    shown = example_prompt(abstract)
    assert len(shown) <= 100 and abstract.startswith(shown) and not shown.endswith(" ")
    files.write_json(tmp_path / files.DATA_FILE, {"example_source": shown})
    (_, hint, _) = tasks.get("seq2seq").usage(tmp_path)
    assert hint == f"kerasllm generate {tmp_path} --prompt '{shown}'" and "A man rides" not in hint
    (_, hint, _) = tasks.get("seq2seq").usage(tmp_path / "elsewhere")
    assert hint.endswith("--prompt 'SOURCE TEXT'")
