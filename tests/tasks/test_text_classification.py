"""Text classification: labelled-text formats, label mapping, the classifiers, masked-LM pretraining and fine-tuning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import yaml

from kerasllm import cli
from kerasllm.core.errors import UserError
from kerasllm.data.labelled import LOCAL_FORMATS, load_labelled
from kerasllm.tasks.text_classification import ClassLabels
from tests.commands.test_cli import assert_user_error

GOOD = ["great", "wonderful", "funny", "moving", "brilliant", "charming"]
BAD = ["dull", "boring", "awful", "tedious", "clumsy", "flat"]
FILLER = ["the", "film", "is", "a", "story", "with", "acting", "and", "plot", "this", "movie", "quite"]
TINY_TRANSFORMER = ["--set", "model_args.num_layers=1", "--set", "model_args.hidden_dim=16", "--set", "model_args.num_heads=2",
                    "--set", "model_args.intermediate_dim=32", "--set", "data.sequence_length=16", "--set", "train.batch_size=8",
                    "--set", "train.steps_per_epoch=4", "--set", "data.vocab_size=120", "--set", "train.warmup_steps=1",
                    "--set", "runtime.jit_compile=false"]
TINY_LSTM = ["--set", "model_args.units=8", "--set", "model_args.embedding_dim=8", "--set", "data.sequence_length=16",
             "--set", "train.batch_size=8", "--set", "train.steps_per_epoch=3", "--set", "train.warmup_steps=1"]


def sentence(rng: random.Random, label: int) -> str:
    words = rng.sample(FILLER, 5) + rng.sample(GOOD if label else BAD, 2)
    rng.shuffle(words)
    return " ".join(words)


def write_sst(folder, name="toy", sizes=(160, 32, 32), seed=0):
    """An SST-style split family `name.train/.dev/.test` of '<label> <sentence>' lines."""
    rng = random.Random(seed)
    for split, size in zip(("train", "dev", "test"), sizes):
        lines = [f"{label} {sentence(rng, label)}" for label in (i % 2 for i in range(size))]
        (folder / f"{name}.{split}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / name


@pytest.fixture(scope="module")
def sst(tmp_path_factory):
    return write_sst(tmp_path_factory.mktemp("sst"))


def invoke(runner, *args):
    return runner.invoke(cli.app, [str(a) for a in args])


# --- formats ---------------------------------------------------------------------------------

def test_csv_tsv_jsonl_and_sst_files_give_the_same_examples(tmp_path):
    rows = [("a fine film", "pos"), ("a dull film, sadly", "neg"), ("great fun", "pos"), ("boring", "neg")] * 5
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    (tmp_path / "d.tsv").write_text("label\ttext\n" + "".join(f"{label}\t{t}\n" for t, label in rows))
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    (tmp_path / "d.sst").write_text("".join(f"{label} {t}\n" for t, label in rows))
    loaded = [load_labelled(str(tmp_path / name), 0.25) for name in ("d.csv", "d.tsv", "d.jsonl", "d.sst")]
    for split in loaded:
        assert (len(split.train), len(split.validation)) == (15, 5)
        assert split.train.texts == loaded[0].train.texts and split.train.labels == loaded[0].train.labels
        assert "seeded random" in split.record["split"]


def test_split_prefix_uses_the_dev_and_test_files(sst):
    split = load_labelled(str(sst))
    assert (len(split.train), len(split.validation), len(split.test)) == (160, 32, 32)
    assert split.record["split"] == "the source's validation (dev) split is validation"


def test_two_text_columns_make_sentence_pairs(tmp_path):
    (tmp_path / "nli.csv").write_text("premise,hypothesis,label\n" + "a man sleeps,a person rests,entail\n" * 4
                                      + "a dog runs,a cat sleeps,contradict\n" * 4)
    split = load_labelled(str(tmp_path / "nli.csv"), 0.25, text_column="premise,hypothesis")
    assert split.train.texts[0] in (("a man sleeps", "a person rests"), ("a dog runs", "a cat sleeps"))
    assert split.record["sentence_pairs"] is True


def test_class_folders_and_train_test_folders(tmp_path):
    for split in ("train", "test"):
        for label, text in (("neg", "dull and slow"), ("pos", "bright and fun")):
            folder = tmp_path / "imdb" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                (folder / f"{i}.txt").write_text(f"{text} {i}")
    split = load_labelled(str(tmp_path / "imdb"), 0.25)
    assert split.class_names == ["neg", "pos"] and len(split.test) == 8 and len(split.train) + len(split.validation) == 8


@pytest.mark.parametrize(("content", "options", "message"), [
    ("text,label\nfine,pos\n", {"label_column": "sentiment"}, "no label column 'sentiment'; its columns: text, label"),
    ("text,label\nfine,pos\n,neg\n", {}, "row 3 has an empty text in column 'text'"),
    ("text,label\nfine,pos\nbad,neg,extra\n", {}, "row 3 has 3 columns but the header has 2"),
    ("review,stars,label\nfine,5,pos\n", {"text_column": "body"}, "no text column 'body'"),
])
def test_bad_tables_are_one_line_errors(tmp_path, content, options, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(UserError, match=message):
        load_labelled(str(tmp_path / "bad.csv"), **options)


def test_tfds_text_classification_sets_load_with_mock_data(tmp_path):
    from tests.conftest import mock_tfds

    with mock_tfds("imdb_reviews", {"train": 8, "test": 8, "unsupervised": 8}, tmp_path):
        split = load_labelled("tfds:imdb_reviews", 0.25)
    assert split.class_names == ["neg", "pos"] and len(split.train) == 6 and len(split.test) == 8
    with mock_tfds("glue/sst2", {"train": 8, "validation": 8, "test": 8}, tmp_path):
        split = load_labelled("tfds:glue/sst2")
    assert len(split.validation) == 8 and all(isinstance(text, str) for text in split.train.texts)


def test_default_imdb_offline_names_the_local_formats(monkeypatch):
    import kerasllm.data.tfds as tfds_source

    def offline(name):
        raise UserError(f"could not download tfds:{name}: no network; check the network")

    monkeypatch.setattr(tfds_source, "prepared_info", offline)
    with pytest.raises(UserError) as error:
        load_labelled("tfds:imdb_reviews")
    assert LOCAL_FORMATS in str(error.value) and "\n" not in str(error.value)


# --- labels ----------------------------------------------------------------------------------

def test_label_mapping_round_trips_named_and_integer_labels(tmp_path):
    integers = ClassLabels.from_labels(["10", "2", "2", "0"])
    assert integers.class_names == ["0", "2", "10"] and integers.integer_labels
    integers.save(tmp_path)
    loaded = ClassLabels.load(tmp_path)
    assert loaded.class_names == integers.class_names and loaded.integer_labels
    assert list(loaded.ids(["10", "0"], "x")) == [2, 0]
    named = ClassLabels.from_labels(["pos", "neg"])
    assert named.class_names == ["neg", "pos"] and not named.integer_labels
    with pytest.raises(UserError, match="label 'meh' in the test split was not among the training labels"):
        named.ids(["pos", "meh"], "the test split")


def test_labels_are_values_not_spellings():
    """`1` and `1.0`, or `1` and `01`, once made a 3-way classifier of a binary task."""
    labels = ClassLabels.from_labels(["1", "1.0", "01", " 0", "0.0", "1"])
    assert labels.class_names == ["0", "1"] and labels.integer_labels
    assert list(labels.ids(["1.00", "00", "1"], "x")) == [1, 0, 1]
    assert ClassLabels.from_labels(["0.50", "0.5", "1.5"]).class_names == ["0.5", "1.5"]
    assert ClassLabels.from_labels(["pos", " pos ", "neg"]).class_names == ["neg", "pos"]


def test_plain_text_is_not_taken_for_label_lines(tmp_path):
    prose = tmp_path / "story.txt"
    prose.write_text("\n".join(f"Word{i} went to the market and came back." for i in range(40)))
    with pytest.raises(UserError, match=r"does not look like '<label> <text>' lines: their first words give 40 labels"):
        load_labelled(str(prose))


def test_the_label_column_is_never_read_as_text(tmp_path):
    table = tmp_path / "reviews.csv"
    table.write_text("text,label\na fine film,1\na dull film,0\ngreat,1\nbad,0\n")
    with pytest.raises(UserError, match="data.text_column names 'label', the label column .*: the model would read the answer"):
        load_labelled(str(table), text_column="text,label")


# --- models ----------------------------------------------------------------------------------

def test_classifier_parameter_counts_match_the_built_models():
    from kerasllm.data import DataInfo
    from kerasllm.zoo import lstm_classifier, transformer_classifier

    hparams = transformer_classifier.TransformerClassifierConfig(num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32)
    model = transformer_classifier.build(hparams, DataInfo(vocab_size=50, num_classes=3, sep_id=5))
    assert model.count_params() == transformer_classifier.count_params(hparams, 50, 3)
    assert model(np.zeros((2, 10), "int32")).shape == (2, 3)
    lstm = lstm_classifier.LSTMClassifierConfig(units=8, embedding_dim=4)
    assert lstm_classifier.build(lstm, DataInfo(vocab_size=50, num_classes=3)).count_params() == lstm_classifier.count_params(lstm, 50, 3)
    presets = {name: transformer_classifier.count_params(transformer_classifier.TransformerClassifierConfig(
        **{k: v for k, v in values.items() if "." not in k}), vocab_size=30522 if name == "base" else 8000)
        for name, values in transformer_classifier.PRESETS.items()}
    assert presets == {"tiny": 1_454_210, "small": 5_307_138, "base": 109_483_778}  # base: BERT-base's 109.5 M


def test_segment_ids_follow_the_first_separator():
    from kerasllm.zoo.layers import SegmentIds

    tokens = np.asarray([[4, 9, 9, 5, 8, 8, 5, 0, 0]])
    assert SegmentIds(5)(tokens).numpy().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1]]


# --- through the CLI -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, sst, runner):
    out = tmp_path_factory.mktemp("runs") / "lstm"
    result = invoke(runner, "train", "lstm-classifier", "--data", sst, "--out", out, "--quiet", "--epochs", "2", *TINY_LSTM)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_lstm_classifier_trains_evaluates_on_test_and_predicts(runner, lstm_run, sst, tmp_path):
    results = json.loads(invoke(runner, "evaluate", lstm_run, "--data", sst, "--json").output)
    assert results["data"].startswith("test split of") and results["examples"] == 32
    assert {"accuracy", "macro_f1", "per_class", "confusion_matrix"} <= set(results)
    lines = tmp_path / "lines.txt"
    lines.write_text("a great and funny film\n\nthe plot is dull and boring\n")
    rows = json.loads(invoke(runner, "predict", lstm_run, "a charming story", "--file", lines, "--json", "--top-k", "1").output)
    assert [row["text"] for row in rows] == ["a charming story", "a great and funny film", "the plot is dull and boring"]
    assert all(len(row["predictions"]) == 1 and row["predictions"][0]["class"] in ("0", "1") for row in rows)
    card = (lstm_run / "README.md").read_text()
    assert "Classes (2): 0 80, 1 80" in card and "kerasllm predict" in card


def test_an_image_file_is_not_classified_as_text(runner, lstm_run, tmp_path):
    image = tmp_path / "digit.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert_user_error(invoke(runner, "predict", lstm_run, image), f"{image} is an image file, and lstm-classifier classifies text")


def test_a_label_first_seen_at_evaluation_is_one_line(runner, lstm_run, tmp_path):
    (tmp_path / "new.sst").write_text("0 dull film\n2 a film\n1 great film\n")
    result = invoke(runner, "evaluate", lstm_run, "--data", tmp_path / "new.sst")
    assert result.exit_code == 2 and "label '2'" in result.output and "not among the training labels" in result.output


@pytest.fixture(scope="module")
def mlm_base(tmp_path_factory, sst, runner):
    corpus = tmp_path_factory.mktemp("corpus") / "sentences.txt"
    corpus.write_text("\n".join(line.partition(" ")[2] for line in sst.with_suffix(".train").read_text().splitlines()))
    out = tmp_path_factory.mktemp("runs") / "mlm"
    result = invoke(runner, "train", "transformer-classifier", "--objective", "mlm", "--data", corpus, "--out", out, "--quiet",
                    "--epochs", "1", *TINY_TRANSFORMER)
    assert result.exit_code == 0, result.output
    return out


def backbone_weights(model):
    return {w.path: np.array(w) for w in model.get_layer("backbone").weights}


def load(path):
    from kerasllm.export.saving import load_model

    return load_model(path)


@pytest.mark.slow
def test_mlm_pretraining_reports_masked_token_metrics(mlm_base):
    metrics = json.loads((mlm_base / "metrics.json").read_text())
    assert set(metrics["after_training"]) == {"loss", "perplexity", "accuracy"}
    assert metrics["after_training"]["loss"] < metrics["before_training"]["loss"]
    assert yaml.safe_load((mlm_base / "config.yaml").read_text())["train"]["objective"] == "mlm"


@pytest.mark.slow
def test_freeze_leaves_the_base_unchanged_and_records_the_lineage(runner, mlm_base, sst, tmp_path):
    out = tmp_path / "freeze"
    result = invoke(runner, "finetune", mlm_base / "model.keras", "--data", sst, "--method", "freeze", "--out", out, "--epochs", "1",
                    "--set", "train.steps_per_epoch=4")
    assert result.exit_code == 0, result.output
    assert "trainable parameters: 34 of" in result.output  # the head: 16 × 2 + 2
    base, tuned = backbone_weights(load(mlm_base)), backbone_weights(load(out))
    assert base.keys() == tuned.keys() and all(np.array_equal(base[k], tuned[k]) for k in base)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parent"]["task"] == "masked-lm" and len(metrics["parent"]["sha256"]) == 64
    assert f"Started from `{mlm_base / 'model.keras'}`" in (out / "README.md").read_text()


@pytest.mark.slow
def test_unfreeze_after_trains_the_whole_model_later(runner, mlm_base, sst, tmp_path):
    out = tmp_path / "unfreeze"
    result = invoke(runner, "finetune", mlm_base, "--data", sst, "--method", "freeze", "--unfreeze-after", "1", "--out", out,
                    "--epochs", "2", "--set", "train.steps_per_epoch=4", "--quiet")
    assert result.exit_code == 0, result.output
    model, base = load(out), backbone_weights(load(mlm_base))
    model.load_weights(out / "checkpoints" / "step-00000004" / "model.weights.h5")  # after the frozen epoch
    assert all(np.array_equal(base[k], v) for k, v in backbone_weights(model).items())
    model.load_weights(out / "checkpoints" / "step-00000008" / "model.weights.h5")  # after the unfrozen one
    assert any(not np.array_equal(base[k], v) for k, v in backbone_weights(model).items())
    assert json.loads((out / "metrics.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_lora_trains_only_adapters_and_the_merged_model_reproduces_them(runner, mlm_base, sst, tmp_path):
    from kerasllm import runs
    from kerasllm.catalog import model as get
    from kerasllm.core.config import from_dict, read_config_file
    from kerasllm.recipes import finetune as finetuning
    from kerasllm.recipes.finetune import transfer_weights

    out = tmp_path / "lora"
    result = invoke(runner, "finetune", mlm_base, "--data", sst, "--method", "lora", "--lora-rank", "2", "--out", out,
                    "--epochs", "1", "--set", "train.steps_per_epoch=4")
    assert result.exit_code == 0, result.output
    merged = load(out)
    assert not finetuning.uses_lora(merged)  # a plain model: no LoRA internals
    base, tuned = backbone_weights(load(mlm_base)), backbone_weights(merged)
    changed = sorted(k for k in base if not np.array_equal(base[k], tuned[k]))
    assert changed and all(k.split("/")[-2] in ("query", "value") and k.endswith("kernel") for k in changed)
    # the adapter file on a freshly built base model gives the merged model's outputs
    spec = get("transformer-classifier")
    run = runs.load_run(out)
    config = from_dict(spec, read_config_file(out / "config.yaml"))
    from kerasllm.data import DataInfo

    info = DataInfo(vocab_size=run.artifacts["tokenizer"].vocab_size, sequence_length=16, num_classes=2, sep_id=5)
    rebuilt = spec.build(config.model_args, info)
    transfer_weights(load(mlm_base), rebuilt)
    finetuning.apply_method(rebuilt, config, spec)
    finetuning.apply_adapter(rebuilt, out / finetuning.ADAPTER_FILE)
    ids = run.task.export_sample(merged, run, batch=4)
    np.testing.assert_allclose(np.asarray(rebuilt(ids)), np.asarray(merged(ids)), atol=1e-5)
    counts = json.loads((out / "metrics.json").read_text())["parameter_counts"]
    assert counts["trainable_share"] < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_finetune_resume_is_exact(runner, mlm_base, sst, tmp_path, method):
    """A run killed after epoch 1 and resumed ends where a straight one does (LoRA: adapters restored unmerged;
    freeze: the optimizer replaced at the unfreezing epoch)."""
    import shutil

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ["--lora-rank", "2"] if method == "lora" else ["--unfreeze-after", "1"]
    result = invoke(runner, "finetune", mlm_base, "--data", sst, "--method", method, *extra, "--set", "train.steps_per_epoch=4",
                    "--quiet", "--out", straight, "--epochs", "2")
    assert result.exit_code == 0, result.output
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000008")
    (resumed / "model.keras").unlink()
    result = invoke(runner, "train", "--resume", resumed, "--quiet")
    assert result.exit_code == 0, result.output
    a, b = load(straight), load(resumed)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


@pytest.mark.slow
def test_base_tokenizer_mismatches_are_one_line_errors(runner, mlm_base, tmp_path):
    greek = tmp_path / "greek.sst"
    greek.write_text("".join(f"{i % 2} Η ταινία ήταν {'καλή' if i % 2 else 'κακή'} και μεγάλη\n" for i in range(40)))
    result = invoke(runner, "finetune", mlm_base, "--data", greek, "--out", tmp_path / "g")
    assert result.exit_code == 2 and "unknown to the base model's tokenizer" in result.output
    result = invoke(runner, "finetune", mlm_base, "--data", greek, "--set", "data.tokenizer=char", "--out", tmp_path / "h")
    assert result.exit_code == 2 and "the tokenizer is inherited from the base" in result.output
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()


# --- keras-hub presets -----------------------------------------------------------------------

def save_tiny_presets(folder):
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)  # the same tiny weights in every process, whatever ran before (the heavy tier's
    # export matrix once saw a hub-classifier's int8 TFLite copy agree on 83 % of top-1 outputs, alone on 90 % or more)

    words = sorted({w for w in GOOD + BAD + FILLER})
    bert = folder / "bert"
    keras_hub.models.BertBackbone(vocabulary_size=5 + len(words), num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                  max_sequence_length=32).save_to_preset(str(bert))
    keras_hub.models.BertTokenizer(vocabulary=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]).save_to_preset(str(bert))
    gpt2 = folder / "gpt2"
    vocabulary = {"<|endoftext|>": 0, "Ġ": 1}
    for word in words:
        for piece in (word, "Ġ" + word):
            vocabulary[piece] = len(vocabulary)
    merges = []
    for word in words:  # merge characters left to right into each word (and Ġ + word)
        for prefix in ("", "Ġ"):
            token = prefix + word[0] if prefix else word[0]
            chars = list(word[1:])
            for char in chars:
                merges.append(f"{token} {char}")
                token += char
                vocabulary.setdefault(token, len(vocabulary))
    for char in {c for w in words for c in w}:
        vocabulary.setdefault(char, len(vocabulary))
        vocabulary.setdefault("Ġ" + char, len(vocabulary))
        merges.append(f"Ġ {char}")
    merges = list(dict.fromkeys(merges))
    keras_hub.models.GPT2Backbone(vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16,
                                  max_sequence_length=32).save_to_preset(str(gpt2))
    keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(str(gpt2))
    return bert, gpt2


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    return save_tiny_presets(tmp_path_factory.mktemp("presets"))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "freeze", "lora"])
@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_finetune_a_local_keras_hub_preset(runner, presets, sst, tmp_path, which, method):
    preset = presets[0] if which == "bert" else presets[1]
    out = tmp_path / which
    rank = ["--lora-rank", "4"] if method == "lora" else []  # the tiny presets' heads are 4 wide
    result = invoke(runner, "finetune", preset, "--data", sst, "--method", method, "--out", out, "--epochs", "1", *rank,
                    "--set", "train.steps_per_epoch=3", "--set", "data.sequence_length=16", "--set", "train.batch_size=8")
    assert result.exit_code == 0, result.output
    assert "trainable parameters:" in result.output
    results = json.loads(invoke(runner, "evaluate", out, "--data", sst, "--json").output)
    assert results["examples"] == 32
    rows = json.loads(invoke(runner, "predict", out, "a funny and moving film", "--json").output)
    assert rows[0]["predictions"][0]["class"] in ("0", "1")
    assert json.loads((out / "metrics.json").read_text())["parent"]["kind"] == "preset"


def test_an_unreachable_preset_handle_is_one_line(runner, sst, tmp_path, monkeypatch):
    from kerasllm.core import network

    monkeypatch.setattr(network, "_reachable", {"www.kaggle.com": False})  # offline, whatever this machine has
    result = invoke(runner, "finetune", "kaggle://keras/bert/keras/bert_tiny_en_uncased/2", "--data", sst, "--out", tmp_path / "x")
    assert_user_error(result, "cannot reach www.kaggle.com to load the tokenizer of preset kaggle://keras/bert/keras/bert_tiny_en_uncased/2")
    assert "local preset folder" in result.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_language_model_fine_tunes_on_new_text_with_lora(runner, trained_transformer_lm, corpus_file, tmp_path):
    out = tmp_path / "lm-lora"
    result = invoke(runner, "finetune", trained_transformer_lm, "--data", corpus_file, "--method", "lora", "--lora-rank", "2",
                    "--out", out, "--epochs", "1", "--set", "train.steps_per_epoch=3")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parent"]["task"] == "text-generation" and metrics["parent"]["layers_new"] == []
    assert metrics["parameter_counts"]["trainable_share"] < 0.2
    generated = invoke(runner, "generate", out, "--prompt", "The ", "--max-length", "5", "--temperature", "0")
    assert generated.exit_code == 0, generated.output
    refused = invoke(runner, "finetune", trained_transformer_lm, "--data", corpus_file, "--method", "freeze", "--out", tmp_path / "f")
    assert refused.exit_code == 2 and "no head to train alone" in refused.output


@pytest.fixture(scope="module")
def trained_transformer_lm(tmp_path_factory, corpus_file, runner):
    out = tmp_path_factory.mktemp("runs") / "lm"
    result = invoke(runner, "train", "transformer-lm", "--data", corpus_file, "--out", out, "--quiet", "--epochs", "1",
                    "--set", "model_args.num_layers=1", "--set", "model_args.hidden_dim=16", "--set", "model_args.num_heads=2",
                    "--set", "data.sequence_length=16", "--set", "model_args.max_sequence_length=16", "--set", "train.batch_size=8",
                    "--set", "train.steps_per_epoch=3", "--set", "train.sample_length=0", "--set", "runtime.jit_compile=false",
                    "--set", "runtime.steps_per_execution=1")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_a_bare_model_file_base_is_one_line(runner, mlm_base, sst, tmp_path):
    import shutil

    shutil.copy(mlm_base / "model.keras", tmp_path / "copy.keras")
    result = invoke(runner, "finetune", tmp_path / "copy.keras", "--data", sst, "--out", tmp_path / "x")
    assert result.exit_code == 2 and "without a kerasllm run around it" in result.output


@pytest.mark.slow
def test_balanced_class_weights_are_recorded_and_used(runner, tmp_path):
    from kerasllm.tasks.text_classification import balanced_weights

    assert balanced_weights(np.asarray([0, 0, 0, 1]), 2).tolist() == pytest.approx([4 / 6, 2.0])
    rng = random.Random(1)
    (tmp_path / "skewed.sst").write_text("".join(f"{label} {sentence(rng, label)}\n" for label in [0] * 90 + [1] * 30))
    out = tmp_path / "weighted"
    result = invoke(runner, "train", "lstm-classifier", "--data", tmp_path / "skewed.sst", "--out", out, "--epochs", "1",
                    *TINY_LSTM)
    assert result.exit_code == 0 and "the classes are imbalanced" in result.output
    out = tmp_path / "balanced"
    result = invoke(runner, "train", "lstm-classifier", "--data", tmp_path / "skewed.sst", "--out", out, "--epochs", "1", "--quiet",
                    "--set", "classification.class_weight=balanced", *TINY_LSTM)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "data.json").read_text())
    counts = record["class_counts"]
    assert record["class_weights"] == pytest.approx([sum(counts.values()) / (2 * counts[c]) for c in ("0", "1")])
    assert "balanced class weights" in (out / "README.md").read_text()


@pytest.mark.slow
def test_evaluate_at_80_columns_keeps_a_long_path_whole(runner, lstm_run, tmp_path, monkeypatch):
    """#33: `evaluate` split a file path across lines at 80 columns (a classifier's confusion-matrix PNG, in a cell):
    the tables fit 80 columns, and each path is a line of its own, whole."""
    import shutil

    from rich.console import Console

    from kerasllm.commands import common

    run = tmp_path / ("a-folder-whose-name-alone-is-longer-than-a-terminal-is-wide-" * 2) / "classifier"
    shutil.copytree(lstm_run, run)
    monkeypatch.setattr(common, "console", Console(soft_wrap=True, width=80))
    result = invoke(runner, "evaluate", run)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    drawn = f"confusion matrix drawn in {run / 'confusion_matrix.png'}"
    assert drawn in lines and "accuracy" in result.stdout, result.stdout
    assert [line for line in lines if len(line) > 80 and not line.startswith("lstm-classifier on ")] == [drawn]
