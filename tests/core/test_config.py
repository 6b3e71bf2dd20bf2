import dataclasses
import json

import pytest

from kerasllm import catalog
from kerasllm.core import config as config_lib
from kerasllm.core.errors import UserError

SPEC = catalog.model("lstm-textgen")


def test_defaults_come_from_the_builder_and_its_recipe():
    config = config_lib.resolve(SPEC)
    assert config.model_args.units == 256
    assert (config.train.epochs, config.train.learning_rate) == (6, 1e-2)  # lstm-textgen recipe
    assert config.data.source == "builtin:python-docs"


def test_file_then_set_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model_args: {units: 32, embedding_dim: 16}\ntrain: {epochs: 4, learning_rate: 0.01}\n")
    config = config_lib.resolve(SPEC, path, ["model_args.units=48", "epochs=9"])
    assert (config.model_args.units, config.model_args.embedding_dim) == (48, 16)  # --set beats file, file beats default
    assert (config.train.epochs, config.train.learning_rate) == (9, 0.01)


def test_json_config_and_typed_values(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "lstm-textgen", "runtime": {"jit_compile": True}}))
    config = config_lib.resolve(SPEC, path, ["train.learning_rate=1e-3", "train.clip_norm=2", "runtime.deterministic=true",
                                             "data.source=123"])
    assert config.runtime.jit_compile is True and config.runtime.deterministic is True
    assert config.train.learning_rate == 0.001 and config.train.clip_norm == 2.0
    assert config.data.source == "123"


@pytest.mark.parametrize("override, message", [
    ("model_args.unitz=3", "unknown config key model_args.unitz; valid keys in model_args: embedding_dim, units"),
    ("train.epochs=three", "train.epochs must be int"),
    ("train.epochs=2.5", "train.epochs must be int"),
    ("runtime.jit_compile=3", "runtime.jit_compile must be bool"),
    ("nonsense=1", "'nonsense' is not a config key; valid keys: model_args.embedding_dim"),
    ("bogus.epochs=1", "unknown config section 'bogus'"),
    ("epochs", "--set expects key=value"),
    ("train.optimizer=lion", "train.optimizer must be adamw, adam or sgd"),
    ("model_args.dropout=1.5", "model_args.dropout must be in [0, 1)"),
])
def test_bad_overrides_are_rejected_with_the_valid_keys(override, message):
    with pytest.raises(UserError) as error:
        config_lib.resolve(SPEC, None, [override])
    assert message in str(error.value)


def test_list_fields_are_typed():
    from dataclasses import dataclass, field

    @dataclass
    class WithList:
        sizes: list[int] = field(default_factory=lambda: [1])

    instance = WithList()
    config_lib._update(instance, {"sizes": [3, 4]}, "model_args")
    assert instance.sizes == [3, 4]
    with pytest.raises(UserError, match="must be a list of int"):
        config_lib._update(instance, {"sizes": 3}, "model_args")
    with pytest.raises(UserError, match="must be int"):
        config_lib._update(instance, {"sizes": ["a"]}, "model_args")


def test_config_file_for_another_model_and_bad_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: cnn-classifier\n")
    with pytest.raises(UserError, match="config file is for model 'cnn-classifier'"):
        config_lib.resolve(SPEC, path)
    path.write_text("optimizer: {lr: 1}\n")
    with pytest.raises(UserError, match="unknown config section 'optimizer'"):
        config_lib.resolve(SPEC, path)
    path.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="cannot parse config file"):
        config_lib.resolve(SPEC, path)
    with pytest.raises(UserError, match="does not exist"):
        config_lib.resolve(SPEC, tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    config = config_lib.resolve(SPEC, None, ["model_args.units=12", "train.seed=7", "data.tokenizer=word"])
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    again = config_lib.resolve(SPEC, tmp_path / "config.yaml")
    assert again.to_dict() == config.to_dict()


def test_configs_of_kerasllm_0_1_runs_still_load(tmp_path):
    (tmp_path / "config.yaml").write_text("model: lstm-textgen\ndata: {level: word, max_vocab: 500}\n")
    config = config_lib.resolve(SPEC, tmp_path / "config.yaml")
    assert (config.data.tokenizer, config.data.vocab_size) == ("word", 500)
    assert config_lib.resolve(SPEC, None, ["data.level=char"]).data.tokenizer == "char"


@pytest.mark.parametrize("override, message", [
    ("train.early_stopping_patience=-1", "early_stopping_patience"), ("train.warmup_steps=-5", "warmup_steps"),
    ("train.seed=-1", "train.seed"), (f"train.seed={2**32}", "train.seed"), ("train.learning_rate=.nan", "learning_rate"),
    ("train.keep_checkpoints=-1", "keep_checkpoints"), ("data.source=", "data.source is empty"),
    ("data.tokenizer=bpe", "data.tokenizer"), ("runtime.loop=eager", "runtime.loop"), ("runtime.strategy=tpus", "runtime.strategy"),
])
def test_values_are_validated(override, message):
    with pytest.raises(UserError, match=message):
        config_lib.resolve(SPEC, None, [override])


def test_local_data_paths_are_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "text.txt").write_text("hello")
    assert config_lib.resolve(SPEC, None, ["data.source=text.txt"]).data.source == str(tmp_path / "text.txt")
    assert config_lib.resolve(SPEC, None, ["data.source=tfds:tiny_shakespeare"]).data.source == "tfds:tiny_shakespeare"


def test_tasks_own_their_sections_and_old_flat_keys_still_work():
    seq2seq = catalog.model("transformer-seq2seq")
    assert set(seq2seq.sections) == {"seq2seq"} and set(catalog.model("lstm-classifier").sections) == {"classification"}
    assert set(catalog.model("transformer-classifier").sections) == {"classification"}  # mlm's task declares none
    assert SPEC.sections == {}
    config = config_lib.resolve(seq2seq, None, ["seq2seq.target_lang=de", "data.source_lang=en", "train.label_smoothing=0.2"])
    assert (config.seq2seq.source_lang, config.seq2seq.target_lang, config.seq2seq.label_smoothing) == ("en", "de", 0.2)
    assert config.seq2seq.target_length == 64  # the model's recipe
    assert config.notes == ["data.source_lang is now seq2seq.source_lang (the old key still works)",
                            "train.label_smoothing is now seq2seq.label_smoothing (the old key still works)"]
    saved = config.to_dict()
    assert saved["seq2seq"]["source_lang"] == "en" and "source_lang" not in saved["data"]
    assert config_lib.from_dict(seq2seq, saved) == config  # a run's own config.yaml reads back


def test_an_old_config_file_with_flat_keys_loads(tmp_path):
    old = {"model": "lstm-textgen", "data": {"source": "x.txt", "source_lang": "", "long_pairs": "truncate"},
           "train": {"label_smoothing": 0.0, "class_weight": "none"}}  # what every config.yaml held before
    config = config_lib.apply_file(config_lib.default_config(SPEC), old)
    assert config.notes == [] and config.data.source == "x.txt"
    with pytest.raises(UserError, match="train.class_weight is now classification.class_weight, and lstm-textgen has no "
                                        "classification section; drop it"):
        config_lib.apply_file(config_lib.default_config(SPEC), {"train": {"class_weight": "balanced"}})
    with pytest.raises(UserError, match="data.source_lang is now seq2seq.source_lang, and lstm-textgen has no seq2seq section"):
        config_lib.resolve(SPEC, None, ["data.source_lang=en"])
    with pytest.raises(UserError, match="unknown config section 'seq2seq'; valid sections for lstm-textgen: model, model_args, "
                                        "data, train, runtime, finetune$"):
        config_lib.apply_file(config_lib.default_config(SPEC), {"seq2seq": {"source_lang": "en"}})


def test_a_section_checks_its_own_values():
    with pytest.raises(UserError, match=r"seq2seq.long_pairs must be truncate or drop"):
        config_lib.resolve(catalog.model("lstm-seq2seq"), None, ["seq2seq.long_pairs=keep"])
    with pytest.raises(UserError, match=r"seq2seq.target_length must be 0 \(= data.sequence_length\) or at least 3"):
        config_lib.resolve(catalog.model("lstm-seq2seq"), None, ["seq2seq.target_length=2"])
    with pytest.raises(UserError, match="classification.class_weight must be none or balanced"):
        config_lib.resolve(catalog.model("lstm-classifier"), None, ["classification.class_weight=heavy"])


def test_a_plugin_task_declares_its_own_section():
    from dataclasses import dataclass

    from kerasllm import tasks
    from kerasllm.tasks.base import Task

    @dataclass
    class DanceConfig:
        tempo: int = 120

    class Dance(Task):
        name = "dance"
        config_sections = {"dance": DanceConfig}

    with tasks.TASKS.registered("dance", Dance()):
        spec = catalog.with_sections(dataclasses.replace(SPEC, name="dancer", task="dance"))
        config = config_lib.resolve(spec, None, ["dance.tempo=90", "tempo=100"])
    assert config.dance.tempo == 100 and config.to_dict()["dance"] == {"tempo": 100}


def test_finetune_resolves_through_the_one_pipeline():
    """What a base hands on comes after the preset and before --set: the user's settings win."""
    inherited = {"model_args": {"units": 24}, "data": {"sequence_length": 20, "tokenizer": "word"}}
    config = config_lib.resolve(SPEC, None, ["data.sequence_length=30", "train.epochs=1"], inherited=inherited)
    assert (config.model_args.units, config.data.sequence_length, config.data.tokenizer, config.train.epochs) == (24, 30, "word", 1)


def test_a_runs_config_records_its_teacher_from_its_folder_and_reads_it_back_absolute(tmp_path):
    """#33: config.yaml names a source in the same runs folder as `../NAME/…`; read back, it is absolute again."""
    run_dir, teacher = tmp_path / "runs" / "student", tmp_path / "runs" / "teacher" / "model.keras"
    run_dir.mkdir(parents=True)
    config = config_lib.default_config(SPEC)
    config.finetune.teacher = str(teacher)
    (run_dir / "config.yaml").write_text(config.to_yaml(run_dir))
    assert "teacher: ../teacher/model.keras" in (run_dir / "config.yaml").read_text()
    assert config_lib.read_config_file(run_dir / "config.yaml")["finetune"]["teacher"] == str(teacher)
    assert f"teacher: {teacher}" in config.to_yaml()  # not written into a run folder: as it is
