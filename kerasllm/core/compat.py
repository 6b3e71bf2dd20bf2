"""Every use of a private Keras or keras-hub API, in one place.

Each function says why no public API does the job and which version it was checked
against (`KERAS_CHECKED`, `KERAS_HUB_CHECKED`); `tests/core/test_compat.py` calls each one on
a tiny model, so a Keras release that renames or changes one fails there, loudly,
instead of deep inside a training run. Keras and keras-hub are imported inside the
functions: they are heavy third-party libraries, and this floor is imported by
modules that `kerasllm list` loads.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

KERAS_CHECKED = "3.15.1"
KERAS_HUB_CHECKED = "0.32.0"


def nested_layers(layer) -> list:
    """`layer` and every layer inside it, depth first.

    Keras 3 has no public recursive walk (`Model.layers` lists only the top level, and a custom layer's
    sub-layers are tracked privately); `Layer._flatten_layers` is what Keras itself uses. Checked on Keras 3.15.1.
    """
    return list(layer._flatten_layers(include_self=True, recursive=True))


def owns_variables(layer) -> bool:
    """Whether `layer` holds variables itself (not only through sub-layers): `_trainable_variables` and
    `_non_trainable_variables` are the layer's own lists (`layer.weights` includes the sub-layers'). Checked on 3.15.1."""
    return bool(layer._trainable_variables or layer._non_trainable_variables)


def seed_states(model) -> list:
    """The state variables of every `SeedGenerator` in the model (dropout and other random layers), in a fixed order.

    `save_weights` leaves them out and Keras lists a layer's generators only in `Layer._seed_generators`;
    a checkpoint keeps them so a resumed run draws the same dropout masks. Checked on Keras 3.15.1.
    """
    return [generator.state for layer in nested_layers(model) for generator in getattr(layer, "_seed_generators", [])]


def reseed(layer, seed, counter) -> None:
    """Set a random preprocessing layer's generator to the state (seed, counter) before it draws (inside tf.data on the
    TensorFlow backend): its draws then depend on them alone. Keras keeps the layer's `SeedGenerator` in the
    undocumented attribute `generator`, and its random ops take no tensor seed. Checked on Keras 3.15.1."""
    import tensorflow as tf

    state = layer.generator.state
    state.assign(tf.cast(tf.stack([tf.cast(seed, tf.int64), tf.cast(counter, tf.int64)]), state.dtype))


def lora_base_kernel(layer):
    """The frozen kernel under a LoRA-enabled Dense/EinsumDense (`layer.kernel` returns base + adapters merged;
    `_kernel` is the base alone, which un-merging a checkpoint's kernels must assign). Checked on Keras 3.15.1."""
    return layer._kernel


def input_signature(model):
    """The `tf.TensorSpec`s of a model's inputs, as `model.export` computes them (`keras.src.export`; no public
    equivalent returns them for an `ExportArchive` endpoint). Checked on Keras 3.15.1."""
    from keras.src.export.saved_model import get_input_signature

    return get_input_signature(model)


def legacy_h5():
    """Keras' own loader for tf.keras 2.x whole-model `.h5` files, which `keras.saving.load_model` runs without a way
    to migrate stale layer arguments (keras#20750): returns (model_from_config(config, safe_mode),
    load_weights(h5_group, model)). Checked on Keras 3.15.1."""
    from keras.src.legacy.saving import legacy_h5_format, saving_options, saving_utils
    from keras.src.saving import serialization_lib

    def model_from_config(config: dict, safe_mode: bool):
        with saving_options.keras_option_scope(use_legacy_config=True), serialization_lib.SafeModeScope(safe_mode):
            return saving_utils.model_from_config(config)

    return model_from_config, legacy_h5_format.load_weights_from_hdf5_group


def preset_file(preset: str, name: str) -> str:
    """A local copy of one file of a keras-hub preset (`config.json`, `metadata.json`): keras-hub's
    `preset_utils.get_file` has no public alias. Checked on keras-hub 0.32.0."""
    from keras_hub.src.utils import preset_utils

    return preset_utils.get_file(preset, name)


PRESET_CONFIG_FILES = ("config.json", "metadata.json")  # keras-hub's preset_utils.CONFIG_FILE and METADATA_FILE


def hub_preset_handles() -> dict[str, str]:
    """{bare preset name: its handle} from the preset lists keras-hub ships (`keras_hub/src/models/*/*_presets.py`, plain
    dict literals), read without importing keras-hub, which imports TensorFlow: a name resolves, and offline fails, in
    a second or two. Empty when the layout has changed (checked on keras-hub 0.32.0: 70 files)."""
    import ast
    import importlib.util

    found = importlib.util.find_spec("keras_hub")
    handles = {}
    for folder in (found.submodule_search_locations or []) if found else []:
        for path in sorted(Path(folder).glob("src/models/*/*_presets.py")):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (OSError, SyntaxError, ValueError):
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                    try:
                        presets = ast.literal_eval(node.value)
                    except ValueError:
                        continue
                    handles.update({name: value["kaggle_handle"] for name, value in presets.items()
                                    if isinstance(value, dict) and isinstance(value.get("kaggle_handle"), str)})
    return handles


def hub_build_cache(causal_lm, token_ids):
    """A keras-hub causal LM's key/value cache for `token_ids` (batch, length), seeded from them: `CausalLM.generate`
    builds it with the private `_build_cache(token_ids) -> (hidden_states, cache)`, which `call_with_cache(ids, cache,
    index) -> (logits, hidden_states, cache)` then advances (GPT-2, Gemma, Llama, Mistral …; checked on keras-hub 0.32.0)."""
    return causal_lm._build_cache(token_ids)[1]


def clip_across_replicas(optimizer) -> None:
    """Make `global_clipnorm` clip the gradient of the global batch when several replicas train under `fit`.

    Keras clips inside `apply_gradients`, which tf.distribute runs on each replica before the gradients are summed
    across replicas: each replica's part was clipped to the norm on its own, so runs with clipping active diverged
    from one device at the same global batch (lstm-textgen, 40 steps at lr 1e-2 on 2 replicas: validation loss 2.843
    against 2.762; 2.5720 for both with clipping off). Here the replicas first sum their gradients to take the
    global norm, then scale their own part by the same factor. Keras exposes no hook for this but the private
    `Optimizer._clip_gradients` (checked on Keras 3.15.1). `fit` and kerasllm's custom loop both go through it;
    one replica, or the JAX backend (one global gradient), clip as Keras does.
    """
    import keras

    if not optimizer.global_clipnorm or keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    clip_locally, clip_norm = optimizer._clip_gradients, optimizer.global_clipnorm

    def clip(grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return clip_locally(grads)
        present = [tf.convert_to_tensor(g) for g in grads if g is not None]
        norm = tf.linalg.global_norm(context.all_reduce(tf.distribute.ReduceOp.SUM, present))
        factor = tf.minimum(1.0, clip_norm / tf.maximum(norm, 1e-12))
        return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]

    optimizer._clip_gradients = clip


def scale_loss_for_replicas(loss):
    """A loss computed outside Keras' compiled loss, scaled as that one is for a tf.distribute step (÷ the replicas:
    the replicas' gradients are summed). Keras' `Distiller.compute_loss` returns its total unscaled, so two replicas
    would take twice the step; Keras does the scaling in the private `scale_loss_for_distribution` (checked on Keras
    3.15.1; a no-op on one replica and on JAX)."""
    from keras.src.losses.loss import scale_loss_for_distribution

    return scale_loss_for_distribution(loss)


CALIBRATED = ("gptq", "awq")  # Keras' quantization modes calibrated on data, whose layers need the care below


def requantize(layer, policy) -> None:
    """Give a float layer the quantized variables of `policy` (int8, int4, float8, gptq/BITS/GROUP, awq/BITS/GROUP …),
    for the saved weights to load into. Keras refuses to set a GPTQ or AWQ policy on a built layer ("requires a
    calibration dataset"), so such a layer is quantized with a config of its bits and group size and no data, and its
    float kernel dropped, as calibration drops it; `load_own_variables` then marks it calibrated (checked on Keras
    3.15.1)."""
    if policy.quantization_mode not in CALIBRATED:
        layer.dtype_policy = policy
        return
    from keras.quantizers import AWQConfig, GPTQConfig

    make = GPTQConfig if policy.quantization_mode == "gptq" else AWQConfig
    config = make(dataset=[], tokenizer=None, weight_bits=policy.weight_bits, group_size=policy.group_size)
    layer.quantize(policy.quantization_mode, config=config)
    del layer._kernel  # as calibration ends: the float kernel goes, and the saved layer has none


def calibrated_zero_points(model) -> dict:
    """{layer path: kernel_zero} of the GPTQ and AWQ layers in `model`: Keras 3.15.1's `Dense.save_own_variables` skips
    such a layer's `kernel_zero` (its int4 branch keeps it only for a merged LoRA), so the saved file cannot load
    ("expected 5 variables, but received 4"); kerasllm saves them beside the weights."""
    return {layer.path: np.asarray(layer.kernel_zero.numpy()) for layer in nested_layers(model)[1:]
            if getattr(layer, "quantization_mode", None) in CALIBRATED and hasattr(layer, "kernel_zero")}


@contextlib.contextmanager
def zero_points_apart(model, zeros: dict):
    """Load weights into a model whose GPTQ or AWQ layers' files lack `kernel_zero`: while the block runs, each such
    layer reads its saved variables with its zero points put back in their place (`zeros`, saved beside the weights)."""
    patched = []
    for layer in nested_layers(model)[1:]:
        mode = getattr(layer, "quantization_mode", None)
        if mode not in CALIBRATED or layer.path not in zeros:
            continue
        order = [name for name in layer.variable_serialization_spec[mode] if not (name == "bias" and layer.bias is None)]
        at, original, saved = order.index("kernel_zero"), layer.load_own_variables, len(order) - 1

        def load(store, at=at, original=original, zero=zeros[layer.path], saved=saved):
            values = [store[str(i)] for i in range(saved)]
            original({str(i): value for i, value in enumerate([*values[:at], zero, *values[at:]])})

        layer.load_own_variables = load
        patched.append(layer)
    try:
        yield
    finally:
        for layer in patched:
            del layer.load_own_variables


@contextlib.contextmanager
def calibration_samples(samples):
    """Keras' GPTQ and AWQ with these calibration rows (samples, length) as they are, and with the statistics they
    calibrate on really gathered.

    1. `get_dataloader` cuts windows at an offset from `hash(("gptq-calib", seed))`, which string hashing makes
       different in every process (checked on Keras 3.15.1), so the same command gave different models. AWQ imports
       the function by name, so both are patched.
    2. Both gather each layer's input statistics (GPTQ's Hessian, AWQ's activation magnitudes) by patching
       `layer.call` while a block runs on the rows. But `model.quantize` gives the layers their GPTQ or AWQ dtype
       policy first, and `Layer.__call__` runs `quantized_call`, never `call`, for a layer with a quantization mode
       (checked on Keras 3.15.1): nothing was gathered, every AWQ scale stayed 1.0 and GPTQ's Hessian 0, so both wrote
       the same round-to-nearest kernels. The statistics are gathered here from `quantized_call` (and `call`).
    """
    from keras.src.quantizers import awq_core, gptq_core

    saved = (gptq_core.get_dataloader, gptq_core.stream_hessians, awq_core.stream_activations)
    rows = lambda *args, **kwargs: np.asarray(samples, np.int32)[:, None, :]
    gptq_core.get_dataloader = awq_core.get_dataloader = rows
    gptq_core.stream_hessians = _streaming("update_hessian_with_batch")
    awq_core.stream_activations = _streaming("update_activation_magnitudes")
    try:
        yield
    finally:
        gptq_core.get_dataloader = awq_core.get_dataloader = saved[0]
        gptq_core.stream_hessians, awq_core.stream_activations = saved[1], saved[2]


def _streaming(update: str):
    """Keras' `stream_hessians` / `stream_activations` (layers_map, objects), hooked on the calls a quantized layer
    really makes: each input, flattened to (-1, the layer's input width), goes to `objects[name].<update>`."""

    @contextlib.contextmanager
    def stream(layers_map, objects):
        from keras import ops

        def hook(name, original):
            def call(*args, **kwargs):
                inputs = args[0] if args else kwargs["inputs"]
                getattr(objects[name], update)(ops.reshape(inputs, (-1, objects[name].rows)))
                return original(*args, **kwargs)

            return call

        patched = []
        try:
            for name, layer in layers_map.items():
                for method in ("call", "quantized_call"):
                    patched.append((layer, method, vars(layer).get(method)))
                    setattr(layer, method, hook(name, getattr(layer, method)))
            yield
        finally:
            for layer, method, own in reversed(patched):
                if own is None:
                    delattr(layer, method)  # the class's method again
                else:
                    setattr(layer, method, own)

    return stream


TRACE_NAME_STEP = 1 << 16


def align_trace_names() -> None:
    """Move TensorFlow's naming counter to its next multiple of 65,536 (TensorFlow backend; elsewhere nothing).

    TensorFlow names each traced function `__inference_<name>_<uid>`, uid a process-wide counter, and its persistent
    XLA compilation cache keys a compiled program by that name. A resumed run creates a few more objects than a new
    one before it traces its steps (the checkpoint's restore), so the same program would get another name and be
    compiled again. Both call this before their first evaluation and before the loop, so from each of those points
    on they trace the same functions under the same names (the counter only names things; ~16 ms).
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    try:
        from tensorflow.python.framework import ops
    except ImportError:  # a TensorFlow without it: programs are compiled again, as without the cache
        return
    while ops.uid() % TRACE_NAME_STEP:
        pass


TYPER_CHECKED = "0.29.2"


def hide_flag_types() -> None:
    """Typer 0.29 shows every on/off flag as `--json <bool>` in the help (even `--help`): a flag takes no value, so it
    gets no type. No public setting does this: `typer.core.TyperOption.display_type_rich` is Typer's own (not a
    documented API; checked on `TYPER_CHECKED`). A Typer without it is left as it is; called twice, it patches once."""
    import typer.core

    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "kerasllm_patched", False):
        return

    def flag_type(self, ctx):
        return None if self.is_flag and not self.count else shown(self, ctx)

    flag_type.kerasllm_patched = True
    option.display_type_rich = flag_type


def current_command_context():
    """The running command's Typer (click) context, or None outside a command. Typer 0.29 carries its own copy of
    click (`typer._click`, private; checked on `TYPER_CHECKED`), whose context stack is not click's; an older Typer
    uses click itself."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # Typer before it carried click
        from click import get_current_context
    return get_current_context(silent=True)


def one_line_usage_errors(show) -> None:
    """A bad option value or a missing argument (Typer's usage errors, exit code 2) as one line, `show(line)`, instead
    of Typer's usage line, help hint and boxed message. Typer calls `typer.rich_utils.rich_format_error(error)` for them
    (not a documented API; checked on `TYPER_CHECKED`); a Typer without it is left as it is."""
    import typer.rich_utils as rich_utils

    shown = getattr(rich_utils, "rich_format_error", None)
    if shown is None or getattr(shown, "kerasllm_patched", False):
        return

    def one_line(error) -> None:
        if type(error).__name__ == "NoArgsIsHelpError":  # `kerasllm` alone: the help, as Typer prints it
            return shown(error)
        context = getattr(error, "ctx", None)
        hint = f"; see `{context.command_path} --help`" if context is not None else ""
        show(f"{error.format_message().rstrip('.')}{hint}")

    one_line.kerasllm_patched = True
    rich_utils.rich_format_error = one_line
