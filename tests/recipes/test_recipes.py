"""The recipes floor: the trainer takes the hooks the registered recipes give it, and a new method plugs in without an
edit to the trainer."""

import json

from kerasllm import catalog
from kerasllm.core import config as config_lib
from kerasllm.recipes import runner
from kerasllm.train.hooks import Hook
from tests.conftest import TINY


class ProbeHook(Hook):
    """A throwaway method: it sees the model before compiling and adds a line to the run's summary."""

    def __init__(self, config, parent=None):
        self.seed, self.parent, self.seen = config.train.seed, parent, []

    def before_compile(self, model, context):
        self.seen.append(model.name)

    def summary(self, model):
        return {"probe": {"seed": self.seed, "parent": self.parent, "compiled": self.seen}}


def test_the_trainer_imports_no_recipe():
    from pathlib import Path

    import kerasllm.train

    source = "\n".join(path.read_text() for path in Path(kerasllm.train.__file__).parent.glob("*.py"))
    assert "kerasllm.recipes" not in source.replace("`kerasllm.recipes", "")  # docstrings may name the floor above


def test_the_built_in_recipes_are_chosen_by_the_config_in_order():
    assert runner.RECIPES.names() == ["distill", "finetune", "prune"]
    plain = config_lib.resolve(catalog.model("lstm-textgen"), None, [])
    assert runner.hooks_for(plain).hooks == []
    pruned = config_lib.resolve(catalog.model("lstm-textgen"), None, ["finetune.base=/runs/base/model.keras", "finetune.sparsity=0.5"])
    assert [type(hook).__name__ for hook in runner.hooks_for(pruned).hooks] == ["FinetuneHook", "PruneHook"]


def test_a_new_recipe_is_registered_like_a_plugin_and_trains_through_the_unchanged_trainer(corpus_file, tmp_path):
    probe = runner.Recipe("probe", lambda config: config.train.seed == 4242, "tests.recipes.test_recipes:ProbeHook", order=50)
    config = config_lib.resolve(catalog.model("lstm-textgen"), None, [*TINY, f"data.source={corpus_file}", "train.seed=4242",
                                                                      "train.epochs=1", "train.sample_length=0"])
    with runner.RECIPES.registered("probe", probe):
        assert [type(hook).__name__ for hook in runner.hooks_for(config).hooks] == ["ProbeHook"]
        runner.train(config, tmp_path / "run", progress="quiet")
    assert "probe" not in runner.RECIPES
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # its constructor took only what it names; it saw the built model once, before compiling
    assert metrics["probe"] == {"seed": 4242, "parent": None, "compiled": [metrics["probe"]["compiled"][0]]}
