"""`kerasllm compress`: a smaller copy of a run, written as a run of its own, measured against its source.

Quantization is Keras 3's own `model.quantize(mode)` (int8, int4 and float8 weights of the layers that take them:
Dense, EinsumDense, Embedding; GPTQ's or AWQ's 4-bit weights for a transformer-lm's blocks, calibrated on the run's text).
The copy is a run folder: the source's config, data record and tokenizer or labels, the quantized `model.keras`
(`saving.save_model`, which records the quantized layers so that `saving.load_model` can load them again),
`metrics.json` with `compressed_from` (path and sha256) and a before → after table, and a model card. Every
measurement runs in this one process, the source and the copy side by side on the same batch: size on disk and
gzipped, parameters, median latency per batch, cached generation speed for language models, and the task's own
quality metrics on the run's validation split. The copy is measured after it has been written and loaded again.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kerasllm import runs
from kerasllm.core import compat, files
from kerasllm.core.errors import UserError
from kerasllm.core.quiet import captured_stderr
from kerasllm.core.words import count
from kerasllm.export import saving
from kerasllm.export.measure import calibration_batches, human_size, median_ms

# Lazy imports: Keras and TensorFlow load inside functions (`kerasllm --help` and `kerasllm list` load the CLI, which
# imports this module).

QUANTIZE = ("int8", "int4", "float8", *compat.CALIBRATED)
TRAINED = runs.TRAINED_COMPRESSION  # methods that train: the trainer (a floor above) runs them, then `trained_report`
METHODS = (*QUANTIZE, *TRAINED)
CALIBRATED_BITS, CALIBRATED_GROUP = 4, 128  # Keras' GPTQ and AWQ defaults: 4-bit weights, a scale and zero point per 128 inputs
CALIBRATION_BATCHES = 16  # GPTQ and AWQ: this many of the export's check batches (2 rows each) from the run's training data
LATENCY_BATCH = 32
LATENCY_REPEATS = 15
GENERATED_TOKENS = 64
# Written by training, not true of a copy: left out when the source run is copied.
NOT_COPIED = {files.MODEL_FILE, files.METRICS_FILE, files.HISTORY_FILE, files.CARD_FILE, files.MARKER_FILE, "curves.png",
              files.CHECKPOINTS_DIR, files.LOGS_DIR, files.EXPORT_DIR}


@dataclass
class Measured:
    """One model's row of the before → after table."""

    size: int
    gzipped: int
    parameters: int
    quantized_parameters: int
    nonzero_parameters: int
    latency_ms: float
    tokens_per_second: float | None
    quality: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"size_bytes": self.size, "gzipped_bytes": self.gzipped, "parameters": self.parameters,
                "quantized_parameters": self.quantized_parameters, "nonzero_parameters": self.nonzero_parameters,
                "latency_ms_per_batch": round(self.latency_ms, 3),
                "tokens_per_second": None if self.tokens_per_second is None else round(self.tokens_per_second, 1),
                **{key: value for key, value in self.quality.items()}}


def check_not_a_copy(source: Path) -> None:
    """A compressed copy is compressed no further: its source is."""
    if files.read_json(Path(source) / files.METRICS_FILE).get("compressed_from"):
        raise UserError(f"{source} is already a compressed copy; compress its source instead")


METHOD_OPTIONS = {"prune": ("--sparsity", "--epochs", "--data"),
                  "distill": ("--student", "--temperature", "--alpha", "--set", "--epochs", "--data")}


def check_method_options(method: str, given: dict) -> None:
    """An option that belongs to another method is one line naming which (`given`: option name → whether it was passed)."""
    stray = [name for name, present in given.items() if present and name not in METHOD_OPTIONS.get(method, ())]
    if stray:
        owners = " or ".join(sorted(m for m, names in METHOD_OPTIONS.items() if stray[0] in names))
        raise UserError(f"{', '.join(stray)} belong{'s' if len(stray) == 1 else ''} to --method {owners}; drop "
                        f"{'it' if len(stray) == 1 else 'them'} for --method {method}")


# How far a copy's headline metric (its task's first quality metric) may fall before `compress` warns, as a share of the
# source's value (`--max-drop`): perplexity may rise 10 %, accuracy and macro-F1 fall 3 %, BLEU and chrF 5 %.
MAX_DROP = {"perplexity": 0.10, "accuracy": 0.03, "macro_f1": 0.03, "bleu": 0.05, "chrf": 0.05}
LOWER_IS_BETTER = ("perplexity", "loss", "bits_per_char")


def warnings_for(summary: dict, max_drop: float | None = None) -> list[str]:
    """What a user must hear about a copy in one line each: larger than its source, or its headline metric fallen more
    than `max_drop` (a share of the source's value; default by metric, `MAX_DROP`)."""
    before, after = summary["before"], summary["after"]
    found = []
    if after.get("size_bytes") and before.get("size_bytes") and after["size_bytes"] > before["size_bytes"]:
        found.append(f"the copy is larger than its source ({human_size(before['size_bytes'])} → {human_size(after['size_bytes'])}, "
                     f"{after['size_bytes'] / before['size_bytes']:.1f}×): it saves nothing"
                     + ("; distill into a smaller --student" if summary.get("compression", {}).get("method") == "distill" else ""))
    metrics = [key for key in before if (key in MAX_DROP or key in LOWER_IS_BETTER) and isinstance(after.get(key), (int, float))]
    metric = metrics[0] if metrics else None  # the task's first quality metric
    if metric is None or not before.get(metric):
        return found
    bound = MAX_DROP.get(metric, 0.05) if max_drop is None else max_drop
    worse = (after[metric] - before[metric]) / before[metric] if metric in LOWER_IS_BETTER else (before[metric] - after[metric]) / before[metric]
    if worse > bound:
        found.append(f"{metric} went {before[metric]:.4g} → {after[metric]:.4g}, {worse:.0%} worse, past --max-drop {bound:.0%}: "
                     "the copy may be of no use; try a milder setting (a lower --sparsity, more --epochs, a larger student)")
    return found


def speed_note(summary: dict, margin: float = 0.05) -> str | None:
    """One line when the copy runs slower than its source here (by more than `margin`, the machine's noise), with the
    measured figures, and what is faster: a user who compresses to speed up inference must not get a slower model
    unawares (#34: Keras' int8/int4 copies dequantize their kernels at each call on these CPUs)."""
    before, after = summary["before"], summary["after"]
    slower = []
    if before.get("latency_ms_per_batch") and after.get("latency_ms_per_batch", 0) > before["latency_ms_per_batch"] * (1 + margin):
        slower.append(f"{after['latency_ms_per_batch'] / before['latency_ms_per_batch']:.2f}× the time per batch "
                      f"({before['latency_ms_per_batch']:,.1f} → {after['latency_ms_per_batch']:,.1f} ms)")
    if before.get("tokens_per_second") and after.get("tokens_per_second") and \
            after["tokens_per_second"] < before["tokens_per_second"] * (1 - margin):
        slower.append(f"{after['tokens_per_second'] / before['tokens_per_second']:.2f}× the cached tokens/s "
                      f"({before['tokens_per_second']:,.0f} → {after['tokens_per_second']:,.0f})")
    if not slower:
        return None
    method = summary.get("compression", {}).get("method", "")
    why = (" (Keras computes with its int4 kernels dequantized, and its int8 kernels gain nothing on this CPU)"
           if method in ("int8", "int4", "gptq", "awq") else "")
    return (f"on this machine the copy is slower than its source: {' and '.join(slower)}{why}; it is smaller, not faster "
            "here: for speed, `kerasllm export RUN --format tflite --quantize dynamic` (LiteRT, int8 weights)")


def record_warnings(target: Path, lines: list[str]) -> None:
    """The warnings go into the copy's metrics.json (`warnings`) as well as on the terminal."""
    if lines:
        files.write_metrics(target, dict(files.read_metrics(target), warnings=lines))


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UserError(f"unknown compression method {method!r}; methods: {', '.join(METHODS)}")
    return method


def quantize(model, method: str) -> tuple[int, list[str]]:
    """Quantize `model` in place; returns (layers quantized, "name (Kind)" of each weight layer left in float)."""
    with warnings.catch_warnings():  # Keras warns once for every layer kind without a quantized form (InputLayer, Add, …)
        warnings.simplefilter("ignore")
        try:
            model.quantize(method)
        except (ValueError, NotImplementedError) as error:
            raise UserError(f"Keras cannot quantize this model to {method}: {str(error).splitlines()[0]}") from error
    quantized = saving.quantized_layers(model)
    return len(quantized), kept_in_float(model, set(quantized))


def block_structure(model, spec_name: str, method: str) -> dict:
    """GPTQ's and AWQ's walk through a transformer-lm: what runs before the blocks (token and position embeddings),
    then the blocks one by one (`pre_block_layers`, `sequential_blocks` in Keras' terms)."""
    names = [layer.name for layer in model.layers]
    blocks = [model.get_layer(name) for name in names if name.startswith("block_")]
    if "token_embedding" not in names or not blocks:
        raise UserError(f"{method} quantizes a Transformer language model block by block, calibrated on its text, and {spec_name} "
                        "is not one; use --method int4 (or int8) for it")
    embedding = model.get_layer("token_embedding")
    positions = model.get_layer("position_embedding") if "position_embedding" in names else None

    def embed(ids):
        x = embedding(ids)
        return x + positions(x) if positions is not None else x

    return {"pre_block_layers": [embed], "sequential_blocks": blocks}


def calibrated(model, run, method: str) -> tuple[int, list[str]]:
    """GPTQ or AWQ on `model`, calibrated on rows of the run's own training data (`quantize_calibrated`); returns (layers
    quantized, "name (Kind)" of each weight layer left in float)."""
    structure = block_structure(model, run.spec.name, method)
    rows = np.concatenate(calibration_batches(run, run.task.export_sample(model, run), count=CALIBRATION_BATCHES))
    quantize_calibrated(model, rows, method, structure, run.artifacts.get("tokenizer"))
    quantized = saving.quantized_layers(model)
    return len(quantized), kept_in_float(model, set(quantized))


def quantize_calibrated(model, rows: np.ndarray, method: str, structure: dict, tokenizer=None) -> None:
    """GPTQ (Frantar et al., 2022) or AWQ (Lin et al., 2023) through Keras' `model.quantize(method)`: 4-bit weights in
    groups of 128 inputs, each block's Dense layers quantized in turn on the calibration `rows` (samples, length), the
    block's inputs the previous blocks' outputs. GPTQ rounds each layer's weights column by column, correcting the
    error with the Hessian of the layer's inputs; AWQ multiplies each input channel by s = m^α before rounding (m: the
    channel's largest input magnitude on the rows), dividing it out again after, with α chosen on a grid of 21 from 0 to
    1 by the smallest error of the rounded weights weighted by m² (Keras' stand-in for the layer's output error), so the
    channels that carry the largest activations keep the most precision."""
    from keras.quantizers import AWQConfig, GPTQConfig

    make = GPTQConfig if method == "gptq" else AWQConfig
    config = make(dataset=rows, tokenizer=tokenizer if tokenizer is not None else "rows", weight_bits=CALIBRATED_BITS,
                  group_size=CALIBRATED_GROUP, num_samples=len(rows), sequence_length=rows.shape[1],
                  quantization_layer_structure=structure)
    with warnings.catch_warnings(), compat.calibration_samples(rows), captured_stderr(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # and Keras' progress bar (stdout) and logs: the command prints its own table
        model.quantize(method, config=config)


def kept_in_float(model, quantized: set[str]) -> list[str]:
    """"name (Kind)" of each layer whose kernels or embeddings stayed in float: the top-level layer that holds them
    (`lstm_0 (LSTM)`, not its cell) unless it also holds quantized layers; then the inner layer, by path."""
    tops = [(layer, layer.path or layer.name) for layer in model.layers]
    left = []
    for layer in compat.nested_layers(model)[1:]:
        if not compat.owns_variables(layer) or layer.path in quantized or not any(
                variable.path.rsplit("/", 1)[-1] in ("kernel", "embeddings", "recurrent_kernel") for variable in layer.weights):
            continue
        inside = lambda path, top: path == top or path.startswith(top + "/")
        top = next((t for t, top_path in tops if inside(layer.path, top_path)), None)
        whole = top is not None and not any(inside(path, top.path or top.name) for path in quantized)
        name = f"{top.name} ({type(top).__name__})" if whole else f"{layer.path} ({type(layer).__name__})"
        if name not in left:
            left.append(name)
    return left


def weight_parameters(model, paths: set[str]) -> int:
    """Parameters held in quantized form: the kernels and embeddings of the layers at `paths` (measured in float)."""
    return sum(int(variable.numpy().size) for layer in compat.nested_layers(model)[1:] if layer.path in paths
               for variable in layer.weights if variable.path.rsplit("/", 1)[-1] in ("kernel", "embeddings"))


def tokens_per_second(model, run) -> float | None:
    """Greedy cached generation speed, for a model that continues text (after a warm-up call that compiles it)."""
    if not (run.task.can_generate and run.task.continues_prompt):
        return None
    options = dict(max_length=GENERATED_TOKENS, temperature=0.0)
    run.task.generate(model, run, ["The "], **options)
    started = time.perf_counter()
    run.task.generate(model, run, ["The "], **options)
    return GENERATED_TOKENS / (time.perf_counter() - started)


def measure(model, run, model_file: Path, quantized_parameters: int, parameters: int) -> Measured:
    data = Path(model_file).read_bytes()
    results = run.task.evaluate(model, run)
    quality = {key: float(results[key]) for key in run.task.quality if isinstance(results.get(key), (int, float))}
    batch = run.task.export_sample(model, run, batch=LATENCY_BATCH)
    # non-zero weights of a float model (a pruned one has fewer); a quantized copy keeps its parameter count
    nonzero = parameters if quantized_parameters else sum(int(np.count_nonzero(variable.numpy())) for variable in model.weights)
    latency = median_ms(model.predict_on_batch, batch, LATENCY_REPEATS, warmups=2)
    return Measured(len(data), len(gzip.compress(data, 6)), parameters, quantized_parameters, nonzero, latency,
                    tokens_per_second(model, run), quality)


def measure_source(model, run, folder: Path) -> Measured:
    """The source model, saved alone into `folder` for its size (its own model.keras also holds the optimizer's state,
    which a copy does not), then measured."""
    alone = Path(folder) / f".{run.spec.name}-source.keras"
    try:
        saving.save_model(model, alone)
        return measure(model, run, alone, 0, int(model.count_params()))
    finally:
        alone.unlink(missing_ok=True)


def trained_report(source: Path, target: Path, unsafe: bool = False) -> dict:
    """After a run that trained from `source` into `target` (pruning while fine-tuning it, or distilling it into a
    student): the before → after table, written into the new run's metrics.json (with `compressed_from`) and appended
    to its card."""
    run, trained = runs.load_run(Path(source)), runs.load_run(Path(target))
    before = measure_source(saving.load_model(run.path, unsafe=unsafe), run, trained.path)
    model = saving.load_model(trained.path, unsafe=unsafe)
    after = measure_source(model, trained, trained.path)
    summary = files.read_metrics(trained.path)
    sha256 = files.file_sha256(run.model_path)
    finetune = trained.config.finetune
    if finetune.teacher:
        compression = {"method": "distill", "teacher": run.spec.name, "student": trained.spec.name,
                       "temperature": finetune.distill_temperature, "alpha": finetune.distill_alpha}
        how = (f"Distilled from the teacher `{files.portable(str(run.path.resolve()), trained.path)}` ({run.spec.name}, model sha256 `{sha256[:16]}…`): this "
               f"{trained.spec.name} trained from scratch on {finetune.distill_alpha:g} × its task loss + "
               f"{1 - finetune.distill_alpha:g} × the KL divergence to the teacher's outputs at temperature "
               f"{finetune.distill_temperature:g}.")
    else:
        compression = {"method": "prune", "target_sparsity": finetune.sparsity, "sparsity": summary.get("sparsity", {}).get("total")}
        how = (f"Pruned from `{files.portable(str(run.path.resolve()), trained.path)}` (model sha256 `{sha256[:16]}…`) to {compression['sparsity']:.1%} of its "
               f"kernels' weights at zero (target {finetune.sparsity:g}), by magnitude while fine-tuning.")
    compression["source_file_bytes"] = run.model_path.stat().st_size
    summary.update(compressed_from={"path": str(run.path.resolve()), "sha256": sha256}, compression=compression,
                   before=before.to_dict(), after=after.to_dict())
    files.write_metrics(trained.path, summary)
    card_text = (trained.path / files.CARD_FILE).read_text(encoding="utf-8")
    files.write_text_atomic(trained.path / files.CARD_FILE, card_text + f"""
## Compression

{how} Measured side by side in one process (before: the source; after: this run), both models saved the same way,
the quality metrics on the source run's validation split:

{markdown_table(summary)}
""")
    return summary


def copy_run_files(source: Path, target: Path) -> None:
    """The source run's config, data record and preprocessing (a tokenizer file or a keras-hub tokenizer folder,
    labels): what a copy shares with it."""
    for path in sorted(Path(source).iterdir()):
        if path.name in NOT_COPIED or path.name.startswith("."):
            continue
        if path.is_dir():
            shutil.copytree(path, target / path.name)
        elif path.is_file():
            shutil.copy2(path, target / path.name)


def compress(source: Path, method: str, out: Path | None = None, *, overwrite: bool = False, unsafe: bool = False,
             on_note=None) -> tuple[Path, dict]:
    """Write a compressed copy of the run at `source`; returns (its folder, the summary in its metrics.json);
    `on_note(line)` hears about layers the method leaves in float."""
    check_method(method)
    if method not in QUANTIZE:
        raise UserError(f"{method} trains: `kerasllm compress RUN --method {method}` runs it through the trainer")
    run = runs.load_run(Path(source))
    check_not_a_copy(run.path)
    target = files.plan_run_dir(f"{run.spec.name}-{method}", out, overwrite, protected=[run.path])
    float_model = saving.load_model(run.path, unsafe=unsafe)
    quantized_model = saving.load_model(run.path, unsafe=unsafe)
    saving.check_model_fits(float_model, run)
    layers, left = calibrated(quantized_model, run, method) if method in compat.CALIBRATED else quantize(quantized_model, method)
    if not layers:
        raise UserError(f"{method} quantizes Dense, EinsumDense and Embedding layers, and {run.spec.name} has none that "
                        f"take it{' (' + ', '.join(left) + ' stay in float)' if left else ''}; try another method")
    if left and on_note:
        on_note(f"{method}: {count(len(left), 'layer')} kept in float, which {method} does not take: {', '.join(left)}")
    parameters = int(float_model.count_params())
    in_low_precision = weight_parameters(float_model, set(saving.quantized_layers(quantized_model)))
    target = files.claim_run_dir(target, overwrite, run.spec.name)
    source_record = {"path": str(run.path.resolve()), "sha256": files.file_sha256(run.model_path)}
    # first: a copy stopped before it is complete says what it is, and how to write it again (`train --resume` reads it)
    files.write_metrics(target, {"model": run.spec.name, "compressed_from": source_record, "compression": {"method": method},
                                 "incomplete": True})
    copy_run_files(run.path, target)
    saving.save_model(quantized_model, target / files.MODEL_FILE)
    copy = runs.load_run(target)
    reloaded = saving.load_model(target, unsafe=unsafe)
    with captured_stderr():  # oneDNN's "supports DT_INT8 only on platforms with AVX-512" line at the first int8 matmul
        before = measure_source(float_model, run, target)
        after = measure(reloaded, copy, copy.model_path, in_low_precision, parameters)
    summary = {"model": run.spec.name, "parameters": parameters,
               "compressed_from": source_record,
               "compression": {"method": method, "quantized_layers": layers, "kept_in_float": left,
                               "source_file_bytes": run.model_path.stat().st_size},
               "before": before.to_dict(), "after": after.to_dict(),
               "after_training": after.quality}
    files.write_metrics(target, summary)
    files.write_text_atomic(target / files.CARD_FILE, card(run, target, summary))
    return target, summary


ROWS = [("size on disk", "size_bytes", "bytes"), ("gzipped", "gzipped_bytes", "bytes"), ("parameters", "parameters", "count"),
        ("of which quantized", "quantized_parameters", "count"), ("non-zero", "nonzero_parameters", "count"),
        ("latency per batch of 32", "latency_ms_per_batch", "ms"),
        ("cached generation", "tokens_per_second", "tokens/s")]


def _cell(value, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "bytes":
        return human_size(value)
    if unit == "count":
        return f"{value:,}"
    if unit in ("ms", "tokens/s"):
        return f"{value:,.1f} {unit}"
    return f"{value:.4f}"


def table_rows(summary: dict) -> list[list[str]]:
    """[measure, before, after, after / before] for the CLI table and the card."""
    before, after = summary["before"], summary["after"]
    rows = []
    for label, key, unit in ROWS + [(key, key, "") for key in before if key not in {k for _, k, _ in ROWS}]:
        if before.get(key) is None and after.get(key) is None:
            continue
        if key == "quantized_parameters" and not before.get(key) and not after.get(key):
            continue  # not a quantized copy
        if key == "nonzero_parameters" and all(side.get(key) == side.get("parameters") for side in (before, after)):
            continue  # not a pruned one
        ratio = (f"{after[key] / before[key]:.2f}×" if isinstance(before.get(key), (int, float)) and before[key]
                 and isinstance(after.get(key), (int, float)) else "")
        rows.append([label, _cell(before.get(key), unit), _cell(after.get(key), unit), ratio])
    return rows


def markdown_table(summary: dict) -> str:
    """The before → after table for a model card."""
    lines = ["| | before | after | after / before |", "|---|---|---|---|"] + [f"| {' | '.join(row)} |" for row in table_rows(summary)]
    return "\n".join(lines)


def card(run, target: Path, summary: dict) -> str:
    compression, source = summary["compression"], summary["compressed_from"]
    kept = (f"\nKept in float (the method does not take them): {', '.join(compression['kept_in_float'])}.\n"
            if compression["kept_in_float"] else "")
    return f"""# {run.spec.name}, {compression['method']} — a compressed copy

Compressed from `{files.portable(source['path'], target)}` (model sha256 `{source['sha256'][:16]}…`) with Keras `model.quantize("{compression['method']}")`:
{compression['quantized_layers']} layers quantized. Measured side by side in one process (`kerasllm compress`), the
quality metrics on the source run's validation split. Sizes are of the model alone, both saved the same way (the
source's own `model.keras`, {compression['source_file_bytes']:,} bytes, also holds its optimizer's state).

{markdown_table(summary)}
{kept}
## Use it

```
kerasllm evaluate {target}
{'kerasllm generate ' + str(target) + ' --prompt "The "' if run.task.can_generate else 'kerasllm predict ' + str(target) + ' INPUT'}
kerasllm export {target} --format savedmodel
```

`model.keras` loads with kerasllm (`kerasllm.export.saving.load_model`). Plain `keras.saving.load_model` (Keras 3.15) does not
restore quantized layers that another layer builds (the zoo's blocks, Keras' own MultiHeadAttention): the archive's
`{saving.QUANTIZED_LAYERS}` names them so that kerasllm quantizes them before loading the weights.
"""
