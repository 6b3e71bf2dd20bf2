"""Every private Keras / keras-hub API kerasllm uses (kerasllm/core/compat.py), called on a tiny model.

A Keras release that renames or changes one fails here, with the function's name, instead of deep inside a run.
"""

import keras
import numpy as np

from kerasllm.core import compat  # noqa: E402


def tiny_model():
    x = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(x)
    return keras.Model(x, keras.layers.Dropout(0.5, seed=1)(hidden))


def test_the_checked_versions_are_the_installed_major_minor_or_older():
    import keras_hub

    def major_minor(version):
        return tuple(int(part) for part in version.split(".")[:2])

    assert major_minor(compat.KERAS_CHECKED) <= major_minor(keras.__version__)
    assert major_minor(compat.KERAS_HUB_CHECKED) <= major_minor(keras_hub.__version__)


def test_nested_layers_and_owned_variables():
    model = tiny_model()
    names = [layer.name for layer in compat.nested_layers(model)]
    assert names[0] == model.name and "hidden" in names
    owners = [layer.name for layer in compat.nested_layers(model) if compat.owns_variables(layer)]
    assert owners == ["hidden"]


def test_seed_states_are_the_dropout_generators():
    states = compat.seed_states(tiny_model())
    assert len(states) == 1 and tuple(states[0].shape) == (2,)


def test_lora_base_kernel_is_the_kernel_without_adapters():
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.ones((2, 3), "float32"))
    base = keras.ops.convert_to_numpy(compat.lora_base_kernel(layer))
    merged = keras.ops.convert_to_numpy(layer.kernel)
    assert base.shape == merged.shape == (4, 3) and not np.allclose(base, merged)


def test_input_signature_names_the_inputs():
    (spec,) = compat.input_signature(tiny_model())
    assert list(spec.shape) == [None, 4]


def test_legacy_h5_loader_builds_a_model_from_its_config():
    model_from_config, load_weights = compat.legacy_h5()
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "in"}},
        {"class_name": "Dense", "config": {"units": 2, "name": "d"}}]}}
    model = model_from_config(config, True)
    assert model.output_shape == (None, 2) and callable(load_weights)


def test_preset_config_files_are_keras_hubs():
    from keras_hub.src.utils import preset_utils

    assert compat.PRESET_CONFIG_FILES == (preset_utils.CONFIG_FILE, preset_utils.METADATA_FILE)
    assert callable(compat.preset_file)


def test_clip_across_replicas_replaces_the_optimizers_clipping():
    optimizer = keras.optimizers.SGD(0.1, global_clipnorm=1.0)
    original = optimizer._clip_gradients
    compat.clip_across_replicas(optimizer)
    assert optimizer._clip_gradients is not original
    # outside a replica context it clips as Keras does: to the global norm
    clipped = optimizer._clip_gradients([keras.ops.convert_to_tensor(np.full((4,), 3.0, "float32"))])
    assert np.isclose(np.linalg.norm(keras.ops.convert_to_numpy(clipped[0])), 1.0, atol=1e-5)


def test_reseed_makes_a_random_layers_draws_depend_on_the_seed_alone():
    layer = keras.layers.RandomTranslation(0.2, 0.2, fill_mode="constant")
    images = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    compat.reseed(layer, 7, 3)
    first = keras.ops.convert_to_numpy(layer(images, training=True))
    layer(images, training=True)  # the generator moves on
    compat.reseed(layer, 7, 3)
    again = keras.ops.convert_to_numpy(layer(images, training=True))
    np.testing.assert_array_equal(first, again)


def test_align_trace_names_moves_tensorflows_counter_to_a_multiple():
    from tensorflow.python.framework import ops

    ops.uid()
    compat.align_trace_names()
    assert (ops.uid() - 1) % compat.TRACE_NAME_STEP == 0  # the next name after the aligned one


def test_typer_private_apis_are_there():
    """The flag-type patch (`compat.hide_flag_types`) and the command context (`compat.current_command_context`)."""
    import typer
    import typer.core
    from typer.testing import CliRunner

    compat.hide_flag_types()
    compat.hide_flag_types()  # twice patches once
    assert getattr(typer.core.TyperOption.display_type_rich, "kerasllm_patched", False)
    seen = []
    app = typer.Typer()

    @app.command()
    def one(flag: bool = typer.Option(False, "--flag")):
        seen.append(compat.current_command_context().params)

    assert CliRunner().invoke(app, ["--flag"]).exit_code == 0 and seen == [{"flag": True}]
    assert compat.current_command_context() is None
