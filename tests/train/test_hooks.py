"""Trainer hooks (kerasllm/train/hooks.py) and the fine-tuning hook's decisions, without training."""

from types import SimpleNamespace

import numpy as np
import pytest

from kerasllm import catalog
from kerasllm.core import config as config_lib
from kerasllm.recipes.finetune import FinetuneHook, transfer_weights
from kerasllm.train import hooks
from kerasllm.train.checkpoints import TrainState


class Recorder(hooks.Hook):
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def split_phases(self, phases):
        self.calls.append(self.name)
        return phases + [(self.name,)]

    def summary(self, model):
        return {self.name: True}


def test_hooks_run_in_order_and_combine():
    calls = []
    both = hooks.Hooks([Recorder("a", calls), Recorder("b", calls)])
    assert both.split_phases([]) == [("a",), ("b",)] and calls == ["a", "b"]
    assert both.summary(None) == {"a": True, "b": True}
    assert both.restores_optimizer(TrainState()) and both.step_offset(TrainState()) == 0
    assert hooks.NO_HOOKS.split_phases([(0, 3, 10, 0)]) == [(0, 3, 10, 0)]


def finetune_config(*overrides):
    spec = catalog.model("transformer-classifier")
    return config_lib.resolve(spec, None, ["finetune.base=/runs/base/model.keras", "train.epochs=3", *overrides])


def test_unfreezing_cuts_the_phases_and_restarts_the_optimizer_count():
    hook = FinetuneHook(finetune_config("finetune.method=freeze", "finetune.unfreeze_after=1"))
    hook.steps_per_epoch = 10
    assert hook.split_phases([(0, 3, 10, 0)]) == [(0, 1, 10, 0), (1, 3, 10, 0)]
    assert hook.split_phases([(0, 1, 4, 6)]) == [(0, 1, 4, 6)]  # the rest of epoch 0 ends before the cut
    assert hook.step_offset(TrainState(epoch=0)) == 0 and hook.step_offset(TrainState(epoch=2)) == 10
    assert not hook.restores_optimizer(TrainState(epoch=1))  # saved at the unfreezing epoch's end: the old optimizer
    assert hook.restores_optimizer(TrainState(epoch=1, step_in_epoch=3)) and hook.restores_optimizer(TrainState(epoch=2))


def test_other_methods_never_unfreeze():
    for method in ("full", "lora"):
        hook = FinetuneHook(finetune_config(f"finetune.method={method}"))
        assert hook.split_phases([(0, 3, 10, 0)]) == [(0, 3, 10, 0)] and hook.step_offset(TrainState(epoch=2)) == 0


def test_a_preset_base_records_the_spec_head_as_new():
    hook = FinetuneHook(finetune_config(), parent=None, parent_record={"path": "p", "kind": "preset", "sha256": ""})
    hook.head_layers = ("head",)
    assert hook.summary(None) == {"parent": {"path": "p", "kind": "preset", "sha256": "", "layers_copied": 0, "layers_new": ["head"]}}
    assert FinetuneHook(finetune_config()).summary(None) == {}


def test_transfer_weights_copies_matching_layers_and_skips_new_heads():
    import keras

    def model(classes):
        x = keras.Input((4,))
        hidden = keras.layers.Dense(3, name="body")(x)
        return keras.Model(x, keras.layers.Dense(classes, name="head")(hidden))

    parent, same, other = model(2), model(2), model(5)
    assert transfer_weights(parent, same) == (["body", "head"], [])
    assert transfer_weights(parent, other) == (["body"], ["head"])  # other shapes: a fresh head
    assert transfer_weights(parent, model(2), fresh=("head",)) == (["body"], ["head"])
    np.testing.assert_array_equal(other.get_layer("body").get_weights()[0], parent.get_layer("body").get_weights()[0])


def test_hooks_for_adds_the_finetune_hook_only_to_finetuning_runs():
    from kerasllm.recipes.runner import hooks_for

    plain = config_lib.resolve(catalog.model("lstm-textgen"), None, [])
    assert hooks_for(plain).hooks == []
    (hook,) = hooks_for(finetune_config(), parent=SimpleNamespace()).hooks
    assert isinstance(hook, FinetuneHook)


def test_bounds_are_checked_against_the_model_before_any_work():
    import keras

    from kerasllm import generation
    from kerasllm.core.errors import UserError
    from kerasllm.recipes.finetune import check_lora_rank

    query = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 2, 8), name="query")  # 16 wide, 2 heads of 8
    query.build((None, 5, 16))
    check_lora_rank([query], 8)  # Keras' adapters: A (16, 2, rank) and B (rank, 8), so above 8 the update gains no rank
    with pytest.raises(UserError, match=r"--lora-rank 100000 is more than the model's width at the adapted projections \(8\); "
                                        r"use a rank of at most 8"):
        check_lora_rank([query], 100000)
    value = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 1, 8), name="value")  # keras-hub's Gemma: (heads, 16, 8)
    value.build((None, 5, 16))
    check_lora_rank([value], 8)
    with pytest.raises(UserError, match="--beam 100000 is more than 256 beams"):
        generation.check_options(0.8, 0, 1.0, 10, beam_width=100000)
    with pytest.raises(UserError, match="--max-length 1000000 is more than 100,000 new tokens"):
        generation.check_options(0.8, 0, 1.0, 1_000_000)
    with pytest.raises(UserError, match=r"--beam 70 is more beams than the model has tokens \(65\); use at most 65"):
        generation.check_beam_fits(70, 65)


def test_unfreezing_tells_the_user_when_it_happens():
    """#33: `finetune --unfreeze-after N` printed nothing when it unfroze."""
    import contextlib

    import keras

    said, compiled = [], []
    hook = FinetuneHook(finetune_config("finetune.method=freeze", "finetune.unfreeze_after=1"))
    hook.steps_per_epoch, hook.unfreeze_epoch, hook.unfrozen = 10, 1, False
    x = keras.Input((4,))
    model = keras.Model(x, keras.layers.Dense(2, name="head", trainable=False)(x))
    context = SimpleNamespace(strategy=SimpleNamespace(scope=contextlib.nullcontext), recompile=lambda *args: compiled.append(args),
                              announce=said.append)
    assert hook.start_phase(model, 1, context) and compiled
    assert len(said) == 1 and "epoch 2: the whole model trains from here (--unfreeze-after 1)" in said[0]
