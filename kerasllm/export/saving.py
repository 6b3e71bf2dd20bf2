"""Loading models: run folders, `.keras`, and `.h5` (Keras 3 or tf.keras 2.x).

Keras 3 refuses many `.h5` files that tf.keras 2 wrote, because their layer configs
carry arguments Keras 3 dropped (`LSTM(time_major=False)`, keras#20750). The
legacy loader here rebuilds such a model from its config, dropping exactly the
arguments Keras 3 names as unrecognized, then loads the weights by layer.

Everything loads in Keras safe mode (no arbitrary code from Lambda layers) unless
`unsafe=True`.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from kerasllm.core import compat
from kerasllm.core.errors import UserError
from kerasllm.core.files import MODEL_FILE, is_run_dir

# Lazy imports: Keras, keras-hub and h5py are imported inside functions: `kerasllm --help` and `kerasllm list` load
# this module and must not load them.

# Inside a `.keras` archive: {layer path: dtype policy} of the quantized layers. Keras 3.15 saves a quantized layer's
# policy in its own config, so a layer that another layer builds (the zoo's blocks, even Keras' MultiHeadAttention)
# comes back in float and its quantized weights do not load; this map lets `load_model` quantize those layers first.
QUANTIZED_LAYERS = "kerasllm-quantized-layers.json"
# {layer path: kernel_zero} of GPTQ and AWQ layers, which Keras 3.15.1's Dense.save_own_variables leaves out of the
# weights (the name is from when GPTQ was the only such mode)
ZERO_POINTS = "kerasllm-gptq-zero-points.npz"
UNRECOGNIZED = re.compile(r"Unrecognized keyword arguments passed to (\w+): (\{.*\})")
SUFFIXES = (".keras", ".h5", ".hdf5")


def model_path(path: Path) -> Path:
    """The model file behind a run folder or a file path, checked to exist."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a run folder, a .keras or a .h5 file")
    if path.is_dir():
        if not is_run_dir(path):
            raise UserError(f"{path} is a folder but not a run folder; pass a run folder, a .keras or a .h5 file")
        path = path / MODEL_FILE
        if not path.is_file():
            raise UserError(f"{path.parent} has no complete {MODEL_FILE} (training did not finish); "
                            f"finish it with `kerasllm train --resume {path.parent}`")
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path} is not a model file; pass a run folder, a .keras or a .h5 file")
    return path


def is_complete(path: Path) -> bool:
    """Whether a `.keras` file is there and whole (a zip archive whose central directory reads), without loading it."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


def _opens_as_zip(path: Path) -> bool:
    """Whether a zip archive's directory reads (a cut-short file has lost it); cheaper than `is_complete`, which also
    checks every entry's CRC: Keras reads the entries next and names a damaged one itself."""
    try:
        with zipfile.ZipFile(path):
            return True
    except (zipfile.BadZipFile, OSError):
        return False


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _safety_error(error: Exception, path: Path) -> UserError | None:
    if "safe_mode" in str(error) or "unsafe" in str(error).lower():
        return UserError(f"{path} contains code (e.g. a Lambda layer) that safe mode will not run; pass --unsafe if you trust the file")
    return None


def quantized_layers(model) -> dict:
    """{layer path: serialized dtype policy} for every quantized layer in `model`, nested ones included."""
    import keras

    return {layer.path: keras.dtype_policies.serialize(layer.dtype_policy) for layer in compat.nested_layers(model)[1:]
            if getattr(layer, "quantization_mode", None)}


def quantization_modes(model) -> list[str]:
    """The quantization modes in `model` (`int8`, `int4`, …), in a fixed order; empty for a float model."""
    return sorted({layer.quantization_mode for layer in compat.nested_layers(model)[1:] if getattr(layer, "quantization_mode", None)})


def save_model(model, path: Path) -> None:
    """A `.keras` file written beside (`.<name>.partial.keras`) and renamed: never half a file. A quantized model's
    layer map goes into the archive (`QUANTIZED_LAYERS`)."""
    path = Path(path)
    partial = path.with_name(f".{path.stem}.partial.keras")
    try:
        model.save(partial)
        quantized = quantized_layers(model)
        if quantized:
            with zipfile.ZipFile(partial, "a") as archive:
                archive.writestr(QUANTIZED_LAYERS, json.dumps(quantized, indent=1))
                zeros = compat.calibrated_zero_points(model)
                if zeros:
                    buffer = io.BytesIO()
                    np.savez(buffer, **zeros)
                    archive.writestr(ZERO_POINTS, buffer.getvalue())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        hint = f"then `kerasllm train --resume {path.parent}`" if is_run_dir(path.parent) else "or choose another path"
        raise UserError(f"cannot write {path} ({error.strerror or error}); make its folder writable, {hint}") from error


def _load_quantized(path: Path, quantized: dict, unsafe: bool):
    """The model in float from the archive's config, its quantized layers quantized again (their variables made in the
    saved shapes), then the saved weights."""
    import keras

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        zeros = dict(np.load(io.BytesIO(archive.read(ZERO_POINTS)))) if ZERO_POINTS in archive.namelist() else {}
    model = keras.saving.deserialize_keras_object(config, safe_mode=not unsafe)
    layers = {layer.path: layer for layer in compat.nested_layers(model)}
    for layer_path, policy in quantized.items():
        if layer_path not in layers:
            raise UserError(f"{path} names a quantized layer {layer_path} that its model does not have; compress the source again")
        if not layers[layer_path].quantization_mode:  # a top-level layer comes back quantized from its own config
            compat.requantize(layers[layer_path], keras.dtype_policies.deserialize(policy))  # builds the quantized variables
    with compat.zero_points_apart(model, zeros):
        model.load_weights(path)
    return model


def load_model(path: Path, *, unsafe: bool = False, on_note=None):
    """An uncompiled Keras model from a run folder, `.keras` or `.h5` file; errors are `UserError`s.

    Commands compile with the task's loss and metrics themselves. A tf.keras 2.x `.h5` is migrated; `on_note(line)`
    hears each argument that was dropped.
    """
    import keras
    import keras_hub  # noqa: F401  registers keras-hub's layers and backbones for deserialization

    import kerasllm.zoo.layers  # noqa: F401  registers the zoo's custom layers for deserialization (imported here: it loads Keras)

    path = model_path(path)
    hint = (f"if training was interrupted, `kerasllm train --resume {path.parent}` rebuilds it"
            if is_run_dir(path.parent) else "check that the file is a complete Keras model")
    whole = _opens_as_zip(path) if path.suffix == ".keras" else _is_hdf5(path)
    if not whole:  # Keras says "File not found" for a file that is there but cut short
        kind = "a .keras file (a zip archive)" if path.suffix == ".keras" else "an HDF5 file"
        raise UserError(f"{path} is not a complete model file: its {path.stat().st_size:,} bytes do not read as {kind}, "
                        f"so it was cut short or is another kind of file; {hint}")
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                quantized = json.loads(archive.read(QUANTIZED_LAYERS)) if QUANTIZED_LAYERS in archive.namelist() else None
            if quantized:
                return _load_quantized(path, quantized, unsafe)
            return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
        model, dropped, version = load_h5(path, unsafe=unsafe)
        for name in dropped if on_note else ():
            on_note(f"migrated tf.keras {version} file: dropped {name} (not used by Keras 3)")
        return model
    except UserError:
        raise
    except Exception as error:  # Keras raises many types for a bad file
        raise _safety_error(error, path) or UserError(
            f"cannot load {path}: {(str(error).splitlines() or [type(error).__name__])[0][:200]}; {hint}"
        ) from error


def check_model_fits(model, run) -> None:
    """Refuse a model file that is not the run's model (another model type copied into the folder)."""
    try:
        sample = run.task.export_sample(model, run, batch=1)
        outputs = np.asarray(model.predict(sample, verbose=0))
    except Exception as error:  # wrong input rank or dtype, vocabulary too small, ...
        raise UserError(f"{run.model_path} does not fit this run's {run.spec.name} setup ({str(error).splitlines()[0][:120]}); "
                        f"restore the run's own model or `kerasllm train --resume {run.path}`") from error
    expected = run.data_record.get("classes") or run.data_record.get("vocab_size")
    if expected and outputs.shape[-1] != expected:
        raise UserError(f"{run.model_path} gives {outputs.shape[-1]} outputs but this run's {run.spec.name} has {expected}; "
                        "restore the run's own model.keras")


def _read_h5_config(path: Path) -> tuple[dict, str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
            version = f.attrs.get("keras_version", b"")
    except OSError as error:
        raise UserError(f"{path} is not a readable HDF5 file (corrupt or truncated); re-save or re-download it") from error
    if config is None:
        raise UserError(f"{path} holds weights only, no model config; load it into a built model, or save the whole model")
    decode = lambda value: value.decode("utf-8") if hasattr(value, "decode") else str(value)
    return json.loads(decode(config)), decode(version)


def _drop_arguments(config, class_name: str, names: set[str]) -> int:
    """Remove `names` from every layer config of `class_name` (recursively); count removals."""
    dropped = 0
    if isinstance(config, dict):
        if config.get("class_name") == class_name and isinstance(config.get("config"), dict):
            for name in names & set(config["config"]):
                del config["config"][name]
                dropped += 1
        for value in config.values():
            dropped += _drop_arguments(value, class_name, names)
    elif isinstance(config, list):
        for value in config:
            dropped += _drop_arguments(value, class_name, names)
    return dropped


def load_h5(path: Path, *, unsafe: bool = False) -> tuple:
    """Load a whole-model `.h5`, migrating tf.keras 2.x configs that Keras 3 rejects.

    Returns (the uncompiled model, the `Class.argument`s that were dropped, the Keras version that wrote the file).
    """
    model_from_config, load_weights = compat.legacy_h5()
    config, version = _read_h5_config(path)
    dropped: list[str] = []
    for _ in range(50):  # one round per layer class with stale arguments
        try:
            model = model_from_config(config, not unsafe)
            break
        except (TypeError, ValueError) as error:
            match = UNRECOGNIZED.search(str(error))
            if not match:
                raise
            class_name, names = match.group(1), set(ast.literal_eval(match.group(2)))
            if not _drop_arguments(config, class_name, names):
                raise
            dropped += [f"{class_name}.{name}" for name in sorted(names)]
    import h5py

    with h5py.File(path, "r") as f:
        load_weights(f["model_weights"] if "model_weights" in f else f, model)
    return model, dropped, version
