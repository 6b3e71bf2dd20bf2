"""Export a model to another format and check the copy computes the same outputs.

Formats: `keras` (.keras), `h5` (Keras 3's legacy HDF5), `savedmodel` (a TensorFlow
SavedModel with a `serve` signature, plus the task's own, e.g. seq2seq's `translate(string) -> string`), `tflite` (through a SavedModel, because
`TFLiteConverter.from_keras_model` fails on Keras 3 models) and `onnx` (Keras' `model.export(format="onnx")`, which
runs tf2onnx on TensorFlow; checked with onnxruntime; `pip install "kerasllm[onnx]"`). After writing, the
export is loaded back and run on a sample batch; `max_abs_diff` must stay under
the tolerance or the export is reported as failed.

A TFLite file may be quantized by the converter (`quantize`): `dynamic` (int8 weights), `float16` (float16
weights) or `int8` (int8 weights and activations, calibrated on a representative dataset: batches of the run's own
data, or of `--calibration-data`; ops without an int8 kernel stay in float). A quantized copy is judged by top-1
agreement with its source (the share of positions whose highest output is the same), not by raw difference.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm.core import compat
from kerasllm.core.errors import UserError
from kerasllm.core.files import EXPORT_DIR, TOKENIZER_FILE, check_replaceable, is_run_dir
from kerasllm.core.quiet import captured_stderr
from kerasllm.core.words import count
from kerasllm.export import guide as export_guide
from kerasllm.export.companions import copy_over, remove, same
from kerasllm.export.measure import agreement, human_size, median_ms, rows_in, size_of
from kerasllm.export.saving import load_model, quantized_layers, save_model

# Lazy imports: Keras and TensorFlow are imported inside functions: `kerasllm --help` and `kerasllm list` load this
# module and must not load them.

FORMATS = {"keras": ".keras", "h5": ".h5", "savedmodel": ".savedmodel", "tflite": ".tflite", "onnx": ".onnx"}


QUANTIZE = ("none", "dynamic", "float16", "int8")
TOLERANCE = 1e-4  # largest |difference| for a float copy
DISAGREEMENT = 0.1  # largest share of top-1 disagreements for a quantized copy (the default --tolerance there)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float
    tolerance: float
    quantize: str = "none"
    agreement: float = 1.0  # top-1 agreement with the source on the check batches
    size_bytes: int = 0
    source_ms: float = 0.0  # median latency per check batch, source and copy, side by side
    copy_ms: float = 0.0
    batch_size: int = 0  # rows in the check batch the latency is measured on
    readme: Path | None = None  # the export folder's README.md, with a snippet that runs this export
    foreign_ops: tuple = ()  # a SavedModel's ops from outside core TensorFlow (TensorFlow Text's): loading needs `import tensorflow_text`

    @property
    def ok(self) -> bool:
        if self.quantize != "none":
            return 1.0 - self.agreement <= self.tolerance
        return self.max_abs_diff <= self.tolerance

    def line(self) -> str:
        """What an export prints: the copy against its source."""
        quantized = self.quantize != "none"
        judged = f", at least {1 - self.tolerance:.0%} needed" if quantized else ""
        return (f"wrote {self.path} ({self.format}{', ' + self.quantize if quantized else ''}, {human_size(self.size_bytes)}); "
                f"against the source: max |diff| {self.max_abs_diff:.3g}{'' if quantized else f' (tolerance {self.tolerance:g})'}, "
                f"top-1 agreement {self.agreement:.2%}{judged}; latency per batch of {self.batch_size} {self.source_ms:.2f} → "
                f"{self.copy_ms:.2f} ms")


def check_quantize(fmt: str, quantize: str) -> str:
    if quantize not in QUANTIZE:
        raise UserError(f"unknown --quantize {quantize!r}; use one of {', '.join(QUANTIZE)}")
    if quantize != "none" and fmt != "tflite":
        raise UserError(f"--quantize {quantize} is a TFLite converter option; use --format tflite (for a quantized "
                        "keras model: `kerasllm compress RUN --method int8`)")
    return quantize


CONSUMER_FORMATS = ("hf", "gguf")  # for another runtime, written by their own modules: kerasllm.export.hf, .gguf


def check_format(fmt: str) -> str:
    if fmt not in FORMATS and fmt not in CONSUMER_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join([*FORMATS, *CONSUMER_FORMATS])}")
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


def check_quantize_fits(model, quantize: str) -> None:
    """TFLite's int8 calibrator ends the process (a segmentation fault, TF 2.21) on a recurrent layer: refused first."""
    import keras

    recurrent = sorted({type(layer).__name__ for layer in compat.nested_layers(model) if isinstance(layer, keras.layers.RNN)})
    if quantize == "int8" and recurrent:
        raise UserError(f"--quantize int8 cannot calibrate {', '.join(recurrent)} layers (TFLite's calibrator crashes on them "
                        "in TensorFlow 2.21); use --quantize dynamic (int8 weights) or float16")


def check_fits(model, fmt: str) -> None:
    """Refuse, before anything is written, a format that cannot hold the model: the legacy h5 format stores layers
    only, so a functional model with Keras operations as graph steps (`keras.ops.not_equal` building a mask) cannot
    be read back from it."""
    import keras

    if fmt == "onnx" and quantized_layers(model):
        raise UserError("the ONNX export cannot take Keras-quantized layers; export this copy as keras or savedmodel, or its "
                        "float source as onnx")
    if fmt == "tflite" and quantized_layers(model):
        raise UserError("the TFLite converter cannot take Keras-quantized layers (their int8 kernels feed float matmuls); "
                        "export this copy as keras or savedmodel, or its float source as tflite")
    if fmt != "h5":
        return
    if quantized_layers(model):
        raise UserError("the h5 format cannot hold quantized layers (it stores float layers only); export this model as "
                        "keras or savedmodel")
    steps = [op for op in getattr(model, "operations", []) if not isinstance(op, keras.layers.Layer)]
    if steps:  # a mask or a reshape computed between layers (keras.ops.not_equal …): what a user can act on is the format
        raise UserError(f"the h5 format cannot hold this model: it stores layers only, and the model also computes "
                        f"{count(len(steps), 'step')} between them (a padding mask, say); export it as keras, savedmodel or tflite")


def _input_signature(model, batch):
    """Fixed-shape specs of the model's input(s): one tensor, or a dict of named tensors (encoder–decoders)."""
    import tensorflow as tf

    if isinstance(batch, dict):
        return [{name: tf.TensorSpec(value.shape, value.dtype, name=name) for name, value in batch.items()}]
    return [tf.TensorSpec(batch.shape, batch.dtype, name=model.inputs[0].name)]


def litert_interpreter(path: Path):
    """A LiteRT interpreter of a .tflite file: `ai_edge_litert`'s (a dependency; what the export README's snippet
    uses), else TensorFlow's `tf.lite.Interpreter`, deprecated in its favour (its warning silenced)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return tf.lite.Interpreter(model_path=str(path))
    return Interpreter(model_path=str(path))


def _tflite_runner(path: Path):
    """`run(batch) -> outputs` of a TFLite file, fed by input name through the interpreter's serving signature."""
    runner = litert_interpreter(path).get_signature_runner()
    names = list(runner.get_input_details())

    def run(batch):
        (value,) = runner(**{name: batch if key is None else batch[key] for name, key in tflite_feeds(names, batch)}).values()
        return np.asarray(value)

    return run


def tflite_feeds(names: list[str], batch) -> list[tuple[str, str | None]]:
    """(the interpreter's input name, the batch's key for it; None for a one-tensor batch): the converter may prefix
    the names, so each is matched to the one input name it ends with (the longest first)."""
    if not isinstance(batch, dict):
        (name,) = names
        return [(name, None)]
    keys = sorted(batch, key=len, reverse=True)
    return [(name, next(key for key in keys if name.endswith(key))) for name in names]


def write(model, fmt: str, out: Path, batch, endpoints: list | None = None, quantize: str = "none", calibration=(), unsafe: bool = False):
    """Write `model` as `fmt` at `out`; return `run(batch) -> outputs` of the export, loaded back (a .keras or .h5 file
    outside Keras safe mode with `unsafe`, as its source was). A SavedModel also gets `endpoints` (checked after
    loading); a TFLite file is quantized as `quantize` says (`calibration`: batches shaped like `batch`, for int8)."""
    endpoints = endpoints or []
    if fmt in ("keras", "h5"):
        save_model(model, out) if fmt == "keras" else model.save(out)  # a quantized model's layer map goes into .keras
        loaded = load_model(out, unsafe=unsafe)
        return lambda inputs: np.asarray(loaded.predict_on_batch(inputs))
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
        return lambda inputs: np.asarray(loaded.serve(inputs))
    if fmt == "onnx":
        return _write_onnx(model, out, batch)
    # tflite: a SavedModel with a fixed input shape, then the converter.
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        model.export(folder, format="tf_saved_model", input_signature=_input_signature(model, batch), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        _set_quantization(converter, quantize, calibration)
        try:
            out.write_bytes(converter.convert())
        except Exception as error:  # the converter's own error types, with MLIR locations: keep the op's words
            raise UserError(f"the TFLite converter cannot convert this model: {_converter_reason(error)}; export it as "
                            "keras or savedmodel") from error
    return _tflite_runner(out)


def _write_onnx(model, out: Path, batch):
    """Keras' ONNX export (tf2onnx on TensorFlow), then an onnxruntime session: `run(batch) -> outputs`.
    tf2onnx writes a node it has no conversion for as the TensorFlow op itself, which no ONNX runtime registers (exact
    GELU's `Erfc` under TensorFlow 2.21 and tf2onnx 1.17): the session refuses the file, and the error names the op."""
    import logging
    import re

    try:
        import onnxruntime
        import tf2onnx
    except ImportError as error:
        raise UserError(f"--format onnx needs tf2onnx and onnxruntime ({error.name} is missing): pip install \"kerasllm[onnx]\"") from error
    model.predict_on_batch(batch)  # Keras exports only a model that has been called
    logger, level = logging.getLogger("tf2onnx"), logging.getLogger("tf2onnx").level
    logger.setLevel(logging.CRITICAL)  # its "Tensorflow op [...] is not supported" lines: the error below names the op
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf2onnx 1.17 on NumPy 2: FutureWarning about np.object
            model.export(str(out), format="onnx", verbose=False)
    except Exception as error:  # tf2onnx's own failures, of many types
        raise UserError(f"tf2onnx cannot convert this model: {str(error).splitlines()[0][:200]}; export it as savedmodel or "
                        "tflite") from error
    finally:
        logger.setLevel(level)
    try:
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    except Exception as error:
        found = re.search(r"No Op registered for (\w+)", str(error))
        what = f"its {found.group(1)} op" if found else str(error).splitlines()[0][:200]
        import tensorflow as tf

        raise UserError(f"tf2onnx {tf2onnx.__version__} cannot convert {what} under TensorFlow {tf.__version__} (the file would not "
                        "load in onnxruntime); export it as savedmodel or tflite") from error
    names = [node.name for node in session.get_inputs()]

    def run(inputs):
        feeds = {name: np.asarray(inputs if key is None else inputs[key]) for name, key in tflite_feeds(names, inputs)}
        return np.asarray(session.run(None, feeds)[0])

    return run


def _set_quantization(converter, quantize: str, calibration) -> None:
    import tensorflow as tf

    if quantize == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        batches = list(calibration)
        if not batches:
            raise UserError("--quantize int8 needs calibration batches: export a run folder, or pass --calibration-data")
        converter.representative_dataset = lambda: (list(b.values()) if isinstance(b, dict) else [b] for b in batches)


def _converter_reason(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if "error:" in line] or str(error).splitlines() or [type(error).__name__]
    return lines[0].split("error:", 1)[-1].strip()[:240]


def _check_request(model, fmt: str, quantize: str, tolerance: float | None, out: Path, overwrite: bool) -> float:
    """Refuse what cannot be exported before anything is written; the tolerance to use."""
    check_format(fmt)
    check_quantize(fmt, quantize)
    check_fits(model, fmt)
    check_quantize_fits(model, quantize)
    tolerance = (DISAGREEMENT if quantize != "none" else TOLERANCE) if tolerance is None else tolerance
    if not tolerance >= 0:
        raise UserError("--tolerance must be 0 or more")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    return tolerance


def export(model, fmt: str, out: Path, *, tolerance: float | None = None, overwrite: bool = False,  # noqa: PLR0913 (the command's options)
           sample=None, endpoints: list | None = None, quantize: str = "none", calibration=(), companions=(),
           guide: bool = False, unsafe: bool = False) -> ExportResult:
    """Export, load back and check against the source on the sample batch and the calibration batches: max |diff|
    within `tolerance` (float copies; 1e-4 by default), or top-1 disagreement within it (quantized; 0.1 by default).
    Raises `UserError` otherwise. `sample` is a batch of model inputs (token ids or pixels of 16 positions when
    None). The export is written beside `out` and renamed into place once it passes, so a
    failed export never replaces an earlier one. With `guide`, the check batch and the source's top-1 outputs go
    beside it (`<stem>.example.json`) and the folder's README.md gets a snippet that runs it (`export_guide`). With
    `unsafe`, a .keras or .h5 copy is loaded back outside safe mode (the user trusts the code its source holds)."""
    out = Path(out)
    tolerance = _check_request(model, fmt, quantize, tolerance, out, overwrite)
    batch = sample if sample is not None else sample_batch(model)
    source_outputs = np.asarray(model.predict_on_batch(batch))  # the parity check's first batch, and the example's outputs
    scratch = Path(tempfile.mkdtemp(prefix="kerasllm-export-"))
    companions = list(companions)
    if guide:
        example = scratch / EXAMPLE_FILE
        example.write_text(export_guide.example_record(batch, source_outputs), encoding="utf-8")
        companions.append((example, out.with_name(f"{out.stem}.{EXAMPLE_FILE}")))
    beside = [(source, target) for source, target in companions if not target.is_relative_to(out) and not same(source, target)]
    taken = [target for _, target in beside if target.exists() and not overwrite]  # another run's, or edited
    if taken:
        shutil.rmtree(scratch)
        raise UserError(f"{taken[0]} already exists; pass --overwrite to replace it or choose another --out")
    # --overwrite replaces this export's own files only: a companion the folder's other exports of this name read too
    # (model.tflite and model.onnx share model.tokenizer.json) is never replaced by another model's
    siblings = [out.with_suffix(suffix) for suffix in FORMATS.values() if out.with_suffix(suffix) != out and out.with_suffix(suffix).exists()]
    shared = [target for _, target in beside if target.exists()]
    if shared and siblings:
        shutil.rmtree(scratch)
        raise UserError(f"{shared[0]} is read by {siblings[0]} too, and this model's differs, so --overwrite would leave "
                        f"{siblings[0].name} beside another model's; choose another --out (e.g. {out.with_stem(out.stem + '_2').name})")
    staging = out.with_name(f".{out.stem}.partial{out.suffix}")
    calibration = list(calibration)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove(staging)
        # the converter and interpreter log to fd 2 from C++ ("fully_quantize: 0, …", "Created TensorFlow Lite XNNPACK
        # delegate for CPU"); a failure shows what was caught
        with captured_stderr():
            run_copy = write(model, fmt, staging, batch, endpoints, quantize, calibration, unsafe)
            checks = [batch, *calibration[:8]]
            expected = [source_outputs, *(np.asarray(model.predict_on_batch(b)) for b in checks[1:])]
            actual = [run_copy(b) for b in checks]
            result = ExportResult(out, fmt, max(float(np.max(np.abs(a - e))) for a, e in zip(actual, expected)), tolerance,
                                  quantize, float(np.mean([agreement(e, a) for e, a in zip(expected, actual)])),
                                  size_of(staging), median_ms(model.predict_on_batch, batch), median_ms(run_copy, batch),
                                  batch_size=rows_in(batch))
        if fmt == "savedmodel":
            result.foreign_ops = foreign_ops(staging)
        if not result.ok:
            what = (f"agrees with the source on only {result.agreement:.1%} of top-1 outputs (at least {1 - tolerance:.0%} "
                    "needed; --tolerance sets the share of disagreements allowed)") if quantize != "none" else (
                    f"differs from the source by {result.max_abs_diff:.3g} (> {tolerance:g})")
            raise UserError(f"the {fmt} export {what}; nothing was written"
                            + ("" if quantize != "none" else "; report this model and format"))
        for source, target in companions:  # inside a SavedModel: written into it before it is renamed into place
            if target.is_relative_to(out):
                copy_over(source, staging / target.relative_to(out))
        remove(out)
        os.replace(staging, out)
        for source, target in beside:
            copy_over(source, target)
        if guide:
            result.readme = export_guide.write_readme(out.parent, _usage(model, fmt, out, batch, expected[0], companions, endpoints,
                                                                         bool(result.foreign_ops)), human_size(result.size_bytes))
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error}); choose a writable --out") from error
    finally:
        remove(staging)
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def foreign_ops(savedmodel: Path) -> tuple:
    """The op types a SavedModel's graphs use that core TensorFlow does not register (TensorFlow Text's
    `RegexSplitWithOffsets`, `SentencepieceOp` …): `tf.saved_model.load` fails on them unless their library is imported."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(savedmodel) / "saved_model.pb").read_bytes())
    ops, functions = set(), set()
    for graph in saved.meta_graphs:
        ops |= {node.op for node in graph.graph_def.node}
        for function in graph.graph_def.library.function:
            functions.add(function.signature.name)
            ops |= {node.op for node in function.node_def}
    # XLA's ops (`XlaDynamicUpdateSlice`: a cache written at a runtime index) are core TensorFlow's, registered by tf2xla,
    # though `tf.raw_ops` does not list them: a fresh process loads them without an import
    return tuple(sorted(op for op in ops - functions if not hasattr(tf.raw_ops, op) and not op.startswith("Xla")))


EXAMPLE_FILE = "example.json"  # beside an export: `<stem>.example.json`, the check batch and the source's top-1 outputs


def _usage(model, fmt: str, out: Path, batch, expected, companions, endpoints, tf_text: bool) -> export_guide.Usage:
    """What the README's snippet for this export needs: file names beside it, imports, TFLite feed names, signatures."""
    import json

    single = not isinstance(batch, dict)
    named = [(source.name, target.relative_to(out.parent)) for source, target in companions if source.name != EXAMPLE_FILE]
    usage = export_guide.Usage(out, fmt, f"{out.stem}.{EXAMPLE_FILE}", named, single=single, tf_text=tf_text,
                               signatures=[(endpoint.name, endpoint.example, endpoint.usage) for endpoint in endpoints or []
                                           if endpoint.example])
    if fmt in ("keras", "h5"):
        usage.imports = export_guide.keras_imports(model)
    if fmt == "tflite":
        names = list(litert_interpreter(out).get_signature_runner().get_input_details())
        usage.feeds = [(name, key or "inputs") for name, key in tflite_feeds(names, batch)]
    if fmt == "onnx":
        import onnxruntime

        names = [node.name for node in onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).get_inputs()]
        usage.feeds = [(name, key or "inputs") for name, key in tflite_feeds(names, batch)]
    tokenizer_file = next((source for source, _ in companions if source.name == TOKENIZER_FILE), None)
    if single and np.ndim(expected) == 3 and tokenizer_file is not None and tokenizer_file.is_file():
        usage.next_tokens = "vocabulary" in json.loads(tokenizer_file.read_text(encoding="utf-8"))
    return usage
