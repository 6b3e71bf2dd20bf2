"""The `kerasllm` command line: parses options and calls the library.

TensorFlow is imported only by commands that need it, so `kerasllm --help`
and `kerasllm list` answer at once.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from kerasllm import config as config_lib
from kerasllm import registry
from kerasllm.errors import UserError

app = typer.Typer(
    help="kerasllm: a Keras 3 model zoo. Train, evaluate, generate with and export language and vision models.\n\n"
    "Start with `kerasllm list`, then `kerasllm train lstm-textgen`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
console = Console()
errors = Console(stderr=True, soft_wrap=True)
STATE = {"debug": False}

# Options shared by several commands: defined once.
ModelOrRun = Annotated[Path, typer.Argument(help="A run folder (runs/NAME-TIME), a .keras file, or a .h5 file.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts; train prints JSON Lines).")]
UnsafeFlag = Annotated[bool, typer.Option("--unsafe", help="Load models outside Keras safe mode (runs code stored in the file). Only for files you trust.")]
SeedOption = Annotated[Optional[int], typer.Option("--seed", help="Random seed (sets train.seed for training).")]
DataOption = Annotated[Optional[str], typer.Option("--data", help="A text file, a folder of .txt files, tfds:NAME or builtin:NAME.")]


def handle_errors(command):
    """Turn `UserError` (and Ctrl-C) into one line on stderr and exit code 2; `--debug` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if STATE["debug"]:
                raise
            errors.print(f"[bold red]error:[/] {error}", highlight=False)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            errors.print("interrupted; a run can continue with `kerasllm train --resume RUN_FOLDER`")
            raise typer.Exit(130)

    return wrapper


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for errors.")] = False,
):
    STATE["debug"] = debug
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's C++ start-up chatter


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@app.command("list")
@handle_errors
def list_models(as_json: JsonFlag = False):
    """List the registered models.

    Example: `kerasllm list --json`
    """
    rows = [
        {"name": s.name, "task": s.task, "parameters": s.count_params(s.hparams()), "default_data": s.default_data,
         "description": s.description}
        for s in registry.default_registry().specs()
    ]
    if as_json:
        return print_json(rows)
    table = Table(title="kerasllm models")
    for column in ("name", "task", "parameters", "default data", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["task"], f"{row['parameters']:,}", row["default_data"], row["description"])
    console.print(table)


@app.command()
@handle_errors
def info(name: Annotated[str, typer.Argument(help="Registered model name (see `kerasllm list`).")], as_json: JsonFlag = False):
    """Show a model's hyperparameters and the training settings, with defaults and help.

    Example: `kerasllm info lstm-textgen`
    """
    spec = registry.get(name)
    sections = {"model_args": spec.hparams, **config_lib.SECTIONS}
    defaults = config_lib.default_config(spec)
    rows = [
        {"key": f"{section}.{field}", "type": type_name, "default": getattr(getattr(defaults, section), field), "help": help_text}
        for section, cls in sections.items()
        for field, type_name, _, help_text in config_lib.fields_help(cls)
    ]
    if as_json:
        return print_json({"name": spec.name, "task": spec.task, "default_data": spec.default_data, "keys": rows,
                           "presets": spec.presets})
    console.print(f"[bold]{spec.name}[/] ({spec.task}): {spec.description}")
    table = Table("key", "type", "default", "help")
    for row in rows:
        table.add_row(row["key"], row["type"], repr(row["default"]), row["help"])
    console.print(table)
    for preset, values in spec.presets.items():
        console.print(f"preset [bold]{preset}[/]: " + ", ".join(f"{k}={v!r}" for k, v in values.items()), highlight=False)
    console.print("Change any key with `--set key=value` or a `--config` file; start from a preset with `--preset NAME`.")


@app.command()
@handle_errors
def train(
    name: Annotated[Optional[str], typer.Argument(help="Model to train (see `kerasllm list`); optional with --config or --resume.")] = None,
    data: DataOption = None,
    epochs: Annotated[Optional[int], typer.Option(help="Sets train.epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sets train.batch_size.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="A .yaml or .json config (a run's config.yaml reproduces it).")] = None,
    overrides: Annotated[Optional[List[str]], typer.Option("--set", help="Override a config key: --set train.learning_rate=1e-3 (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/NAME-UTCTIME).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out folder.")] = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its newest checkpoint.")] = None,
    seed: SeedOption = None,
    preset: Annotated[Optional[str], typer.Option(help="Start from one of the model's presets (see `kerasllm info NAME`), e.g. mnist.")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="Sets runtime.strategy: auto, cpu, gpu or mirrored.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="Print only the final run folder.")] = False,
    as_json: JsonFlag = False,
):
    """Train a model and write a run folder.

    Settings come from the model's defaults, then --preset, then --config, then
    --set, then the flags named after keys (--epochs, --batch-size, --seed, --data,
    --strategy).

    Examples:

    * `kerasllm train lstm-textgen`  (offline default corpus)
    * `kerasllm train cnn-classifier --data ../shared/data/mnist --preset mnist`
    * `kerasllm train lstm-textgen --data input.txt --epochs 20 --set model_args.units=512`
    * `kerasllm train --config runs/lstm-textgen-20261129-120000/config.yaml`
    * `kerasllm train --resume runs/lstm-textgen-20261129-120000 --epochs 30`
    """
    from kerasllm import runs

    flags = [f"{key}={value}" for key, value in (("train.epochs", epochs), ("train.batch_size", batch_size),
             ("train.seed", seed), ("runtime.strategy", strategy)) if value is not None]
    if data is not None:
        flags.append(f"data.source={data}")
    if resume is not None:
        if not runs.is_run_dir(resume):
            raise UserError(f"--resume {resume} is not a run folder (no config.yaml); pass a folder made by `kerasllm train`")
        config_file = config_file or resume / runs.CONFIG_FILE
    if name is None:
        if config_file is None:
            raise UserError("name a model to train (see `kerasllm list`) or pass --config FILE")
        name = config_lib.read_config_file(config_file).get("model") or ""
    spec = registry.get(name)
    config = config_lib.resolve(spec, config_file, [*(overrides or []), *flags], preset=preset)
    if resume is not None:
        saved = config_lib.from_dict(spec, config_lib.read_config_file(resume / runs.CONFIG_FILE))
        changed = [s for s in ("model", "model_args", "data") if config.to_dict()[s] != saved.to_dict()[s]]
        if changed:
            raise UserError(f"--resume cannot change {', '.join(changed)} of a run; start a new run instead")
        run_dir = resume
        config.save(run_dir / runs.CONFIG_FILE)
    else:
        run_dir = runs.new_run_dir(spec.name, out, overwrite)

    from kerasllm.training import train as train_model

    mode = "json" if as_json else "quiet" if quiet else "rich"
    if mode == "rich":
        console.print(f"training [bold]{spec.name}[/] on {config.data.source} → {run_dir}")
    try:
        summary = train_model(config, run_dir, resume=resume is not None, progress=mode, console=console,
                              command="kerasllm " + " ".join(sys.argv[1:]))
    except BaseException:
        if resume is None and not any(run_dir.iterdir()):
            run_dir.rmdir()  # a run that failed before writing anything leaves no folder behind
        raise
    if as_json:  # JSON Lines: one object per epoch, then the summary
        return print(json.dumps(dict(summary, run=str(run_dir)), default=str))
    if quiet:
        return print(run_dir)
    table = Table("metric", "before training", "after training", title=f"{spec.name}: validation")
    for key, value in summary["after_training"].items():
        table.add_row(key, f"{summary['before_training'].get(key, float('nan')):.4f}", f"{value:.4f}")
    console.print(table)
    console.print(f"{summary['epochs_completed']} epochs, {summary['train_seconds']:.1f} s; run folder: [bold]{run_dir}[/]")
    use = f"kerasllm generate {run_dir} --prompt \"The \"" if spec.task == "text-generation" else f"kerasllm predict {run_dir} IMAGE"
    console.print(f"next: `kerasllm evaluate {run_dir}` · `{use}`")


def load_run_and_model(source: Path, unsafe: bool):
    """The run (for its tokenizer and config) and the model behind a run folder or a model file in one."""
    from kerasllm import runs
    from kerasllm.saving import load_model, model_path

    path = model_path(source)
    if not runs.is_run_dir(path.parent):
        raise UserError(f"{source} is not inside a run folder, so its tokenizer is unknown; pass the run folder")
    return runs.load_run(path.parent), load_model(path, unsafe=unsafe)


@app.command()
@handle_errors
def evaluate(
    source: ModelOrRun,
    data: Annotated[Optional[str], typer.Option("--data", help="Evaluate on this whole text instead of the run's validation split.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for evaluation.")] = 64,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Evaluate a trained model: loss, perplexity, bits per character and next-character accuracy.

    Examples: `kerasllm evaluate runs/lstm-textgen-20261129-120000` · `kerasllm evaluate RUN --data other.txt --json`
    """
    from kerasllm import tasks

    run, model = load_run_and_model(source, unsafe)
    results = tasks.get(run.spec.task).evaluate(model, run, data=data, batch_size=batch_size)
    if as_json:
        return print_json(results)
    render_evaluation(f"{run.spec.name} on {results.pop('data')}", results)


def render_evaluation(title: str, results: dict) -> None:
    """Scalar metrics as one table; per-class metrics, the confusion matrix and confused pairs as more."""
    per_class, matrix, confused = results.pop("per_class", None), results.pop("confusion_matrix", None), results.pop("most_confused", None)
    table = Table("metric", "value", title=title)
    for key, value in results.items():
        table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)
    if per_class:
        table = Table("class", "precision", "recall", "f1", "support", title="per class")
        for row in per_class:
            table.add_row(row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
        console.print(table)
    if matrix:
        names = [row["class"] for row in per_class]
        table = Table("true \\ predicted", *names, title="confusion matrix")
        for name, row in zip(names, matrix):
            table.add_row(name, *map(str, row))
        console.print(table)
    if confused:
        table = Table("true", "predicted as", "examples", title="most confused pairs")
        for pair in confused:
            table.add_row(pair["true"], pair["predicted"], str(pair["count"]))
        console.print(table)


@app.command()
@handle_errors
def generate(
    source: ModelOrRun,
    prompt: Annotated[str, typer.Option(help="Text to continue.")] = "",
    length: Annotated[int, typer.Option(help="Tokens (characters) to generate.")] = 300,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely tokens; 0 means all.")] = 0,
    seed: SeedOption = None,
    unsafe: UnsafeFlag = False,
):
    """Generate text from a trained text model, streaming it as it is produced.

    Example: `kerasllm generate runs/lstm-textgen-20261129-120000 --prompt "The " --length 200 --top-k 5`
    """
    from kerasllm.generation import generate as sample_text

    run, model = load_run_and_model(source, unsafe)
    if run.spec.task != "text-generation":
        raise UserError(f"{run.spec.name} is a {run.spec.task} model; generate needs a text-generation model")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    sample_text(model, run.artifacts["tokenizer"], prompt, length, temperature=temperature, top_k=top_k, seed=seed,
                window=run.config.data.sequence_length, on_token=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    sys.stdout.write("\n")


@app.command()
@handle_errors
def predict(
    source: ModelOrRun,
    images: Annotated[List[Path], typer.Argument(help="Image files or folders of images (PNG/JPEG/BMP/GIF).")],
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Classify images with a trained image model: the top-k classes with probabilities.

    Example: `kerasllm predict runs/cnn-classifier-20261129-120000 digit.png more_digits/ --top-k 3`
    """
    from kerasllm import tasks

    run, model = load_run_and_model(source, unsafe)
    if run.spec.task != "image-classification":
        raise UserError(f"{run.spec.name} is a {run.spec.task} model; predict needs an image-classification model")
    rows = tasks.get(run.spec.task).predict(model, run, images, top_k=top_k)
    if as_json:
        return print_json(rows)
    table = Table("image", "class", "probability", "note", title=f"{run.spec.name} predictions")
    for row in rows:
        for rank, guess in enumerate(row["predictions"]):
            table.add_row(row["file"] if rank == 0 else "", guess["class"], f"{guess['probability']:.4f}", row["note"] if rank == 0 else "")
    console.print(table)


@app.command()
@handle_errors
def export(
    source: ModelOrRun,
    fmt: Annotated[str, typer.Option("--format", help="keras, h5, savedmodel or tflite.")] = "keras",
    out: Annotated[Optional[Path], typer.Option(help="Output path (default: beside the source; run folders: RUN/export/).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest |difference| allowed between source and export outputs.")] = 1e-4,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    unsafe: UnsafeFlag = False,
):
    """Export a model (run folder, .keras, or .h5 — also tf.keras 2.x .h5) and check the export matches.

    Examples: `kerasllm export runs/lstm-textgen-20261129-120000 --format tflite` · `kerasllm export my_model.h5`
    """
    from kerasllm import export as export_lib
    from kerasllm import runs
    from kerasllm.saving import load_model, model_path

    export_lib.check_format(fmt)  # before the (slow) model load
    path = model_path(source)
    out = out or export_lib.default_out(source, fmt)
    if out.resolve() == path.resolve():
        raise UserError(f"--out {out} is the source model itself; choose another path")
    model = load_model(path, unsafe=unsafe)
    for dropped in getattr(model, "legacy_dropped", []):
        console.print(f"migrated tf.keras {model.legacy_keras_version} file: dropped {dropped} (not used by Keras 3)")
    length = runs.load_run(path.parent).data_record.get("input_length", 16) if runs.is_run_dir(path.parent) else 16
    result = export_lib.export(model, fmt, out, tolerance=tolerance, overwrite=overwrite, input_length=length)
    console.print(f"wrote {result.path} ({fmt}); max |diff| vs source on a sample batch: {result.max_abs_diff:.3g} (tolerance {tolerance:g})")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
