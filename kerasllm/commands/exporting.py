"""Models that leave their run: `export` (another format, checked against its source) and `compress` (a smaller copy
as a run of its own, through the recipes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kerasllm import runs
from kerasllm.commands.common import (
    JsonFlag,
    ModelOrRun,
    RunOverwriteFlag,
    SetOption,
    UnsafeFlag,
    command_line,
    console,
    handle_errors,
    load_tensorflow,
    note,
    print_json,
    table_of,
    warn,
)
from kerasllm.core import config as config_lib
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.export import formats as export_lib
from kerasllm.export import litert, measure
from kerasllm.export.companions import companion_paths
from kerasllm.export.saving import load_model, model_path
from kerasllm.recipes import compress as compression


@handle_errors
def export(
    source: ModelOrRun,
    fmt: Annotated[str, typer.Option("--format", help="keras, h5, savedmodel, tflite, onnx (pip install \"kerasllm[onnx]\"), hf: a "
                                                     "Hugging Face folder for transformers (pip install \"kerasllm[hf]\") or gguf: "
                                                     "a file for llama.cpp (pip install \"kerasllm[gguf]\").")] = "keras",
    out: Annotated[Optional[Path], typer.Option(help="Output path (default: beside the source; run folders: RUN/export/).")] = None,
    quantize: Annotated[str, typer.Option(
        help="TFLite only: none, dynamic (int8 weights), float16 (float16 weights) or int8 (weights and activations, "
             "calibrated on the run's data).")] = "none",
    calibration_data: Annotated[Optional[str], typer.Option(
        "--calibration-data", help="With --quantize int8: calibrate on this data (read like the run's) instead of the run's validation split.")] = None,
    tolerance: Annotated[Optional[float], typer.Option(
        help="Largest |difference| from the source (default 1e-4); with --quantize, the largest share of top-1 "
             "disagreements (default 0.1).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")] = False,
    unsafe: UnsafeFlag = False,
):
    """Export a model (run folder, .keras, or .h5 — also tf.keras 2.x .h5) and check the export matches its source.

    Prints the copy against the source: max |diff|, top-1 agreement, file size and latency per batch.

    Examples: `kerasllm export runs/lstm-textgen-20261129-120000 --format tflite` · `kerasllm export my_model.h5` ·
    `kerasllm export RUN --format tflite --quantize int8` · `kerasllm export RUN --format onnx` ·
    `kerasllm export RUN --format hf` (a transformer-lm run, checked in transformers)
    `kerasllm export RUN --format gguf` (a transformer-lm run, checked in llama.cpp)
    """
    export_lib.check_format(fmt)  # before the (slow) model load
    export_lib.check_quantize(fmt, quantize)
    if tolerance is not None and not (tolerance >= 0):
        raise UserError("--tolerance must be 0 or more")
    if fmt in export_lib.CONSUMER_FORMATS:
        return export_for_consumer(fmt, source, out, overwrite, unsafe)
    path = model_path(source)
    out = out or export_lib.default_out(source, fmt)
    export_lib.check_out(out, fmt, path, overwrite)
    if fmt == "tflite":
        litert.check_out(out, overwrite)
    if calibration_data is not None and quantize != "int8":
        raise UserError("--calibration-data calibrates --quantize int8; add --quantize int8 or drop it")
    if quantize == "int8" and not files.is_run_dir(path.parent):
        raise UserError(f"--quantize int8 calibrates on a run's data, and {source} is not inside a run folder; export the run folder")
    load_tensorflow()
    run = runs.load_run(path.parent) if files.is_run_dir(path.parent) else None
    model = load_model(path, unsafe=unsafe, on_note=console.print)
    export_lib.check_quantize_fits(model, quantize)  # before the calibration data is read
    sample = run.task.export_sample(model, run) if run is not None else None
    endpoints = run.task.savedmodel_endpoints(model, run) if run is not None and fmt == "savedmodel" else []
    calibration = (measure.calibration_batches(run, sample, config_lib.absolute_source(calibration_data) if calibration_data else None)
                   if quantize == "int8" else [])
    companions = companion_paths(path.parent if run is not None else None, out, fmt)
    result = export_lib.export(model, fmt, out, tolerance=tolerance, overwrite=overwrite, sample=sample, endpoints=endpoints,
                               quantize=quantize, calibration=calibration, companions=companions, guide=run is not None,
                               unsafe=unsafe)
    console.print(result.line(), highlight=False)
    if companions:
        where = "inside it, in assets.extra/" if fmt == "savedmodel" else "beside it"
        console.print(f"{where}: {', '.join(target.name for _, target in companions)} (what the model needs to read text or "
                      "name classes outside its run)", highlight=False)
    for endpoint in endpoints:
        console.print(f"signature `{endpoint.name}`: same outputs as `kerasllm` on the check inputs", highlight=False)
    if result.foreign_ops:
        console.print(f"note: its signatures run TensorFlow Text ops ({', '.join(result.foreign_ops)}): `import tensorflow_text` "
                      "before `tf.saved_model.load`", highlight=False)
    if fmt == "tflite" and run is not None and run.spec.name in litert.GENERATES and quantize in ("none", "dynamic"):
        export_generation(run, model, out, quantize, companions, readme=result.readme is not None)
    if result.readme is not None:
        console.print(f"how to run it with {'onnxruntime' if fmt == 'onnx' else 'TensorFlow'} alone: {result.readme}", highlight=False)
    elif run is not None:
        console.print(f"note: {out.parent / 'README.md'} is not kerasllm's, so no usage snippet was written there", highlight=False)


def export_generation(run, model, out: Path, quantize: str, companions: list, readme: bool) -> None:
    """A language model's LiteRT generation file beside its `.tflite` export (`kerasllm.export.litert`), and its
    section in the export README (the snippet decodes text with the tokenizer file for char and word runs)."""
    generated = litert.export(run, model, out, quantize)
    console.print(generated.line(), highlight=False)
    tokenizer = next((target.name for source, target in companions if source.name == files.TOKENIZER_FILE), None)
    if readme:
        litert.write_readme(out, generated, tokenizer if run.artifacts["tokenizer"].kind in ("char", "word") else None)


def export_for_consumer(fmt: str, source: Path, out: Path | None, overwrite: bool, unsafe: bool) -> None:
    """`export --format hf|gguf`: a run folder as a Hugging Face folder checked in transformers (`kerasllm.export.hf`),
    or as a GGUF file checked in llama.cpp (`kerasllm.export.gguf`)."""
    import importlib

    writer = importlib.import_module(f"kerasllm.export.{fmt}")
    path = model_path(source)
    if not files.is_run_dir(path.parent):
        raise UserError(f"--format {fmt} exports a run folder (its tokenizer goes with the model), and {source} is not in one; "
                        "pass the run folder")
    out = out or writer.default_out(path.parent)
    writer.check_out(out, overwrite)
    load_tensorflow()
    run = runs.load_run(path.parent)
    model = load_model(path, unsafe=unsafe, on_note=console.print)
    result = writer.export(run, model, out, overwrite)
    console.print(result.line(), highlight=False)
    if fmt == "hf":
        console.print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}), AutoTokenizer.from_pretrained({str(out)!r})",
                      highlight=False, soft_wrap=True)
    else:
        console.print(f"load it with: llama_cpp.Llama(model_path={str(out)!r}) (llama-cpp-python) or llama-cli -m {out}; "
                      "prompt and reply together stay within the run's context there (no sliding window)", highlight=False,
                      soft_wrap=True)


@handle_errors
def compress(
    source: Annotated[Path, typer.Argument(help="The run folder to compress.")],
    method: Annotated[str, typer.Option(
        help="int8, int4 or float8 (Keras' own weight quantization), gptq or awq (4-bit, calibrated on the run's data; "
             "transformer-lm), prune (magnitude pruning while fine-tuning) or distill (a smaller student trained to "
             "match the run).")] = "int8",
    sparsity: Annotated[float, typer.Option(help="--method prune: the share of each kernel's weights set to zero.")] = 0.5,
    student: Annotated[Optional[str], typer.Option(
        help="--method distill: a preset of the run's model (tiny) or another model of its task (lstm-classifier).")] = None,
    temperature: Annotated[Optional[float], typer.Option(
        help="--method distill: softens both models' outputs before they are compared (default 2).")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="--method distill: the weight of the true labels' loss; 1 - alpha goes to the teacher's (default 0.5).")] = None,
    set_values: SetOption = None,
    epochs: Annotated[Optional[int], typer.Option(help="--method prune or distill: epochs of training (default: the run's).")] = None,
    data: Annotated[Optional[str], typer.Option("--data", help="--method prune or distill: train on this data (default: the run's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="The new run folder (default: runs/MODEL-METHOD-TIME).")] = None,
    max_drop: Annotated[Optional[float], typer.Option(
        help="Warn when the copy's headline metric is worse than the source's by more than this share of it (default: "
             "perplexity 0.10, accuracy 0.03, BLEU 0.05).")] = None,
    overwrite: RunOverwriteFlag = False,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Write a compressed copy of a run as a run of its own, with a before → after table measured side by side.

    A quantized copy has the source's config, data record and tokenizer or labels; a pruned one is a fine-tuning run of
    the source, a distilled one a new run of the student (both: checkpoints, `--resume`). All record `compressed_from`
    (path and sha256); evaluate, generate, predict and export work on them.

    Examples: `kerasllm compress runs/transformer-lm-20261129-120000 --method int8` · `kerasllm compress RUN --method int4 --json`
    · `kerasllm compress LM_RUN --method gptq` · `kerasllm compress LM_RUN --method awq`
    · `kerasllm compress RUN --method prune --sparsity 0.8 --epochs 2`
    · `kerasllm compress LM_RUN --method distill --student tiny` · `kerasllm compress CLS_RUN --method distill --student lstm-classifier`
    """
    compression.check_method(method)
    if max_drop is not None and not 0 <= max_drop < 1:
        raise UserError(f"--max-drop must be a share from 0 to below 1 (0.05: 5 % worse), not {max_drop:g}")
    if not files.is_run_dir(source):
        raise UserError(f"{source} is not a run folder; compress takes a run folder made by `kerasllm train` or `finetune`")
    compression.check_method_options(method, {"--sparsity": sparsity != 0.5, "--student": student is not None,
                                              "--temperature": temperature is not None, "--alpha": alpha is not None,
                                              "--set": bool(set_values), "--epochs": epochs is not None, "--data": data is not None})
    load_tensorflow()
    trains = dict(out=out, overwrite=overwrite, unsafe=unsafe, progress="quiet" if as_json else "rich", console=console,
                  command=command_line())
    if method == "prune":
        from kerasllm.recipes import prune  # its hook imports Keras

        target, summary = prune.run(source, sparsity, epochs=epochs, data=data, **trains)
    elif method == "distill":
        from kerasllm.recipes import distill  # its hook imports Keras

        settings = {"train.epochs": epochs, "data.source": data, "finetune.distill_temperature": temperature,
                    "finetune.distill_alpha": alpha}
        target, summary = distill.run(source, student, set_values or [], settings, **trains)
    else:
        target, summary = compression.compress(source, method, out, overwrite=overwrite, unsafe=unsafe, on_note=note)
    warned, slower = compression.warnings_for(summary, max_drop), compression.speed_note(summary)
    compression.record_warnings(target, warned)
    if as_json:
        return print_json({"run": str(target), **summary, "warnings": warned, "speed_note": slower})
    for line in warned:
        warn(line)
    console.print(table_of(compression.table_rows(summary), "", "before", "after", "after / before",
                           title=f"{summary['model']}: {method}, {source} → {target}"))
    if slower:
        note(slower)
    console.print(f"wrote {target}", highlight=False)
