import sys
import textwrap
from importlib import metadata

import pytest

from kerasllm import catalog, tasks
from kerasllm.core import registry
from kerasllm.core.errors import UserError
from kerasllm.core.spec import ModelSpec
from kerasllm.zoo import cnn_classifier, lstm_textgen


def test_registered_names_are_pinned():
    assert catalog.names() == ["cnn-classifier", "hub-causal-lm", "hub-classifier", "lstm-classifier", "lstm-seq2seq", "lstm-textgen",
                                "transformer-classifier", "transformer-lm", "transformer-seq2seq"]


def test_spec_declares_task_hparams_and_default_data():
    spec = catalog.model("lstm-textgen")
    assert spec.task == "text-generation"
    assert spec.default_data == "builtin:python-docs"
    assert spec.hparams().units == 256


def test_duplicate_name_is_an_error():
    reg = catalog.new_registry()
    catalog.register(reg, lstm_textgen.SPEC)
    with pytest.raises(ValueError, match="already registered"):
        catalog.register(reg, lstm_textgen.SPEC)


def test_unknown_name_lists_known_names_with_did_you_mean():
    with pytest.raises(UserError, match=r"did you mean 'lstm-textgen'\?.*known models: cnn-classifier, hub-causal-lm, hub-classifier, lstm-classifier"):
        catalog.model("lstm-textgn")


def test_unknown_task_is_rejected():
    spec = ModelSpec("x", "dancing", lstm_textgen.LSTMTextGeneratorConfig, lstm_textgen.build, "", "", lambda h: 0)
    with pytest.raises(ValueError, match="unknown task 'dancing'"):
        catalog.register(catalog.new_registry(), spec)


def test_plugin_registers_through_the_entry_point_lookup(tmp_path, monkeypatch):
    """A fake installed distribution (a .dist-info folder on sys.path) found by importlib.metadata."""
    (tmp_path / "my_zoo_plugin.py").write_text(textwrap.dedent("""
        import dataclasses
        from kerasllm.core.spec import ModelSpec
        from kerasllm.zoo import cnn_classifier, lstm_textgen

        def specs():
            return [dataclasses.replace(lstm_textgen.SPEC, name="plugin-lstm", description="from a plugin")]
    """))
    dist = tmp_path / "my_zoo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-zoo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[kerasllm.zoo]\nplugin = my_zoo_plugin:specs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = [ep for ep in metadata.entry_points(group=catalog.ENTRY_POINT_GROUP) if ep.name == "plugin"]
    assert found, "the fake distribution's entry point was not found"
    reg = catalog.new_registry()
    catalog.load_entry_points(reg, found)
    assert reg.get("plugin-lstm").description == "from a plugin"
    sys.modules.pop("my_zoo_plugin", None)


def test_plugin_returning_the_wrong_type_is_rejected():
    class EntryPoint:
        name = "bad"

        def load(self):
            return lambda: "not a spec"

    with pytest.raises(TypeError, match="not ModelSpec"):
        catalog.load_entry_points(catalog.new_registry(), [EntryPoint()])


@pytest.mark.parametrize("hparams", [lstm_textgen.LSTMTextGeneratorConfig(), lstm_textgen.LSTMTextGeneratorConfig(units=24, num_layers=2, embedding_dim=7)])
def test_count_params_matches_the_built_model(hparams):
    from kerasllm.data import DataInfo

    model = lstm_textgen.build(hparams, DataInfo(vocab_size=50))
    assert lstm_textgen.count_params(hparams, 50) == model.count_params()


@pytest.mark.parametrize("hparams", [cnn_classifier.CNNClassifierConfig(), cnn_classifier.CNNClassifierConfig(width=8, depth=2, convs_per_block=1, channels=3)])
def test_cnn_count_params_matches_the_built_model(hparams):
    from kerasllm.data import DataInfo

    model = cnn_classifier.build(hparams, DataInfo(num_classes=7, image_size=16, channels=hparams.channels or 1))
    assert cnn_classifier.count_params(hparams, num_classes=7) == model.count_params()


def test_cnn_default_parameter_count_is_pinned():
    # Blocks of 16, 32, 64 filters (2 bias-free convs + BatchNorm each) on 1 channel, 10 classes.
    assert cnn_classifier.count_params(cnn_classifier.CNNClassifierConfig()) == 73_114


def test_default_size_parameter_count_is_pinned():
    # Embedding 100×64 + LSTM 4·(64·256 + 256·256 + 256) + Dense 256·100 + 100, for a 100-token vocabulary.
    assert lstm_textgen.count_params(lstm_textgen.LSTMTextGeneratorConfig(), vocab_size=100) == 360_804


def test_one_registry_type_serves_models_and_tasks():
    assert type(catalog.models()) is type(tasks.TASKS) is registry.Registry
    with pytest.raises(UserError, match=r"unknown task 'seq2sq'; did you mean 'seq2seq'\? known tasks: "):
        tasks.get("seq2sq")


def test_a_registered_block_restores_the_registry():
    shapes = registry.Registry("shape")
    with shapes.registered("square", 4):
        assert shapes.get("square") == 4 and "square" in shapes
    assert shapes.names() == []
    with pytest.raises(UserError, match="unknown shape 'square'; known shapes: $"):
        shapes.get("square")


def test_the_default_objective_is_the_tasks_own():
    classifier = catalog.model("transformer-classifier")
    assert catalog.task_for(classifier).name == "text-classification"
    assert catalog.task_for(classifier, "classify").name == "text-classification"
    assert catalog.task_for(classifier, "mlm").name == "masked-lm"
    assert catalog.task_for(catalog.model("transformer-lm"), "causal-lm").name == "text-generation"
    with pytest.raises(UserError, match="transformer-lm has no objective 'mlm'; its objectives: causal-lm, chat$"):
        catalog.task_for(catalog.model("transformer-lm"), "mlm")
