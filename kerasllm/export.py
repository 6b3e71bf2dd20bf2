"""Export a model to another format and check the copy computes the same outputs.

Formats: `keras` (.keras), `h5` (Keras 3's legacy HDF5), `savedmodel` (a TensorFlow
SavedModel with a `serve` signature, plus the task's own, e.g. seq2seq's `translate(string) -> string`) and `tflite` (through a SavedModel, because
`TFLiteConverter.from_keras_model` fails on Keras 3 models). After writing, the
export is loaded back and run on a sample batch; `max_abs_diff` must stay under
the tolerance or the export is reported as failed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm import compat
from kerasllm.errors import UserError
from kerasllm.files import EXPORT_DIR, check_replaceable, is_run_dir
from kerasllm.saving import load_model, quantized_layers, save_model

# Lazy imports: Keras and TensorFlow are imported inside functions: `kerasllm --help` and `kerasllm list` load this
# module and must not load them.

FORMATS = {"keras": ".keras", "h5": ".h5", "savedmodel": ".savedmodel", "tflite": ".tflite"}


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def default_out(source: Path, fmt: str) -> Path:
    source = Path(source)
    if source.is_dir():  # a run folder
        return source / EXPORT_DIR / f"model{FORMATS[fmt]}"
    return source.with_suffix(FORMATS[fmt])


def check_out(out: Path, fmt: str, source: Path, overwrite: bool) -> None:
    """Refuse an output that is the source, holds it, or is not an export kerasllm could have written."""
    out, source = Path(out), Path(source)
    if fmt != "savedmodel" and out.suffix != FORMATS[fmt]:
        raise UserError(f"--format {fmt} needs an output path ending in {FORMATS[fmt]}, got {out}")
    if out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the source model itself; choose another path")
    if is_run_dir(out.parent):  # a run's own files (model.keras, config.yaml, ...) are never replaced by an export
        raise UserError(f"--out {out} would write into the run folder {out.parent}, whose files are the run's own; "
                        f"export into {out.parent / EXPORT_DIR}/ (the default) or outside any run")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.is_dir():
        if fmt != "savedmodel" or not (out / "saved_model.pb").is_file() or is_run_dir(out):
            raise UserError(f"--overwrite replaces only an earlier export, and {out} is a folder that is not a SavedModel; "
                            "choose another --out")
    elif out.suffix != FORMATS[fmt]:
        raise UserError(f"--overwrite replaces only an earlier {fmt} export, and {out} is not one; choose another --out")
    check_replaceable(out, [source])


def sample_batch(model, length: int = 16, batch: int = 2, seed: int = 0) -> np.ndarray:
    """A batch that fits the model's input: token ids below the vocabulary size for models
    with an Embedding (tf.keras 2 files may declare their ids as float32), else raw pixel values."""
    import keras

    rng = np.random.default_rng(seed)
    spec = model.inputs[0]
    shape = [batch] + [length if dim is None else dim for dim in spec.shape[1:]]
    vocab = next((layer.input_dim for layer in model.layers if isinstance(layer, keras.layers.Embedding)), None)
    if vocab is not None:
        return rng.integers(0, vocab, size=shape).astype(str(spec.dtype))
    return rng.uniform(0, 255, size=shape).astype(str(spec.dtype))


def check_fits(model, fmt: str) -> None:
    """Refuse, before anything is written, a format that cannot hold the model: the legacy h5 format stores layers
    only, so a functional model with Keras operations as graph steps (`keras.ops.not_equal` building a mask) cannot
    be read back from it."""
    import keras

    if fmt == "tflite" and quantized_layers(model):
        raise UserError("the TFLite converter cannot take Keras-quantized layers (their int8 kernels feed float matmuls); "
                        "export this copy as keras or savedmodel, or its float source as tflite")
    if fmt != "h5":
        return
    if quantized_layers(model):
        raise UserError("the h5 format cannot hold quantized layers (it stores float layers only); export this model as "
                        "keras or savedmodel")
    steps = sorted({type(op).__name__ for op in getattr(model, "operations", []) if not isinstance(op, keras.layers.Layer)})
    if steps:
        raise UserError(f"the h5 format cannot hold this model's Keras operations ({', '.join(steps)}: h5 stores layers only); "
                        "export it as keras, savedmodel or tflite")


def _input_signature(model, batch):
    """Fixed-shape specs of the model's input(s): one tensor, or a dict of named tensors (encoder–decoders)."""
    import tensorflow as tf

    if isinstance(batch, dict):
        return [{name: tf.TensorSpec(value.shape, value.dtype, name=name) for name, value in batch.items()}]
    return [tf.TensorSpec(batch.shape, batch.dtype, name=model.inputs[0].name)]


def _run_tflite(path: Path, batch) -> np.ndarray:
    """The TFLite file's output on `batch`, fed by input name through the interpreter's serving signature."""
    import tensorflow as tf

    with warnings.catch_warnings():  # tf.lite.Interpreter warns that LiteRT will replace it; it still works in TF 2.21
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner()
    names = list(runner.get_input_details())
    if isinstance(batch, dict):  # the converter may prefix the names: match each to the one input it ends with
        feeds = {name: next(batch[key] for key in sorted(batch, key=len, reverse=True) if name.endswith(key)) for name in names}
    else:
        (name,) = names
        feeds = {name: batch}
    outputs = runner(**feeds)
    (value,) = outputs.values()
    return value


def write(model, fmt: str, out: Path, batch: np.ndarray, endpoints: list | None = None) -> np.ndarray:
    """Write `model` as `fmt` at `out`; return the export's outputs on `batch`. A SavedModel also gets `endpoints`
    (checked after loading)."""
    endpoints = endpoints or []
    if fmt in ("keras", "h5"):
        save_model(model, out) if fmt == "keras" else model.save(out)  # a quantized model's layer map goes into .keras
        return np.asarray(load_model(out).predict(batch, verbose=0))
    if fmt == "savedmodel":
        import keras
        import tensorflow as tf

        archive = keras.export.ExportArchive()  # what `model.export` builds, with room for the task's endpoints
        archive.track_and_add_endpoint("serve", model, compat.input_signature(model))
        for endpoint in endpoints:
            for resource in endpoint.resources:
                archive.track(resource)
            archive.add_endpoint(endpoint.name, endpoint.fn, input_signature=endpoint.signature)
        archive.write_out(str(out), verbose=False)
        loaded = tf.saved_model.load(str(out))  # keep a reference: `serve` needs its variables alive
        for endpoint in endpoints:
            problem = endpoint.check(loaded)
            if problem:
                raise UserError(f"the SavedModel's `{endpoint.name}` signature differs from kerasllm's: {problem}; "
                                "nothing was written; report this model")
        return np.asarray(loaded.serve(batch))
    # tflite: a SavedModel with a fixed input shape, then the converter.
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", input_signature=_input_signature(model, batch), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        out.write_bytes(converter.convert())
    return _run_tflite(out, batch)


def export(model, fmt: str, out: Path, *, tolerance: float = 1e-4, overwrite: bool = False,
           sample: np.ndarray | None = None, input_length: int = 16, endpoints: list | None = None) -> ExportResult:
    """Export and check parity; raise `UserError` if the copy's outputs differ by more than `tolerance`.

    The export is written beside `out` and renamed into place once it passes, so a failed
    export never replaces an earlier one.
    """
    check_format(fmt)
    check_fits(model, fmt)
    out = Path(out)
    if not tolerance >= 0:
        raise UserError("--tolerance must be 0 or more")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    staging = out.with_name(f".{out.stem}.partial{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove(staging)
        batch = sample if sample is not None else sample_batch(model, length=input_length)
        expected = np.asarray(model.predict(batch, verbose=0))
        actual = write(model, fmt, staging, batch, endpoints)
        result = ExportResult(out, fmt, float(np.max(np.abs(actual - expected))), tolerance)
        if not result.ok:
            raise UserError(f"the {fmt} export differs from the source by {result.max_abs_diff:.3g} (> {tolerance:g}); "
                            "nothing was written; report this model and format")
        _remove(out)
        os.replace(staging, out)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error}); choose a writable --out") from error
    finally:
        _remove(staging)
    return result


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
