"""What every command shares: the consoles, the options declared once, one-line errors, tables and JSON."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

from kerasllm import compilation, runs
from kerasllm.core import compat, files, quiet
from kerasllm.core.errors import RunInterrupted, UserError
from kerasllm.core.words import count
from kerasllm.data.text import read_text_file
from kerasllm.export.saving import check_model_fits, load_model, model_path


# Whole lines at any width. Piped (a file, a CI log, `| less`), there is no width to fit: tables are drawn at their
# natural width instead of rich's 80 columns, which cut cells to "parame…"; COLUMNS still sets a width.
def _width(stream) -> int | None:
    return None if stream.isatty() or "COLUMNS" in os.environ else 10_000


console = Console(soft_wrap=True, width=_width(sys.stdout))
errors = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))

# Options shared by several commands: defined once.
ModelOrRun = Annotated[Path, typer.Argument(help="A run folder (runs/NAME-TIME), or a .keras / .h5 model file inside one.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables (for scripts; train prints JSON Lines).")]
QuietFlag = Annotated[bool, typer.Option("--quiet", help="Print only the final run folder.")]
UnsafeFlag = Annotated[bool, typer.Option("--unsafe", help="Load models outside Keras safe mode (runs code stored in the file). Only for files you trust.")]
SeedOption = Annotated[Optional[int], typer.Option("--seed", help="Sets train.seed: the seed for weights, shuffling and dropout.")]
SampleSeedOption = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling (the same seed gives the same text).")]
StrategyOption = Annotated[Optional[str], typer.Option(
    help="Sets runtime.strategy: auto (TPU, else TF_CONFIG's workers, else all GPUs, else CPU), cpu, gpu, mirrored, tpu or multi-worker.")]
PrecisionOption = Annotated[Optional[str], typer.Option(help="Sets runtime.precision: float32, mixed_bfloat16 or mixed_float16.")]
BackendOption = Annotated[Optional[str], typer.Option(
    help="Keras backend for this process: tensorflow or jax (sets KERAS_BACKEND before Keras is imported).")]
TaskOption = Annotated[Optional[str], typer.Option(help="Train for this task: chat tunes transformer-lm on conversations "
                                                           "(JSONL: OpenAI messages, Alpaca or Dolly), the loss on the replies only.")]
EpochsOption = Annotated[Optional[int], typer.Option(help="Sets train.epochs.")]
BatchSizeOption = Annotated[Optional[int], typer.Option(help="Sets train.batch_size.")]
SetOption = Annotated[Optional[List[str]], typer.Option("--set", help="Override a config key: --set train.learning_rate=1e-3 (repeatable).")]
RunOutOption = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/NAME-UTCTIME).")]
RunOverwriteFlag = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out run folder (only one made by kerasllm).")]
DataOption = Annotated[Optional[str], typer.Option("--data", help="Text: a file, a folder of .txt files, tfds:NAME or builtin:python-docs. "
                                                   "Images: a folder of class sub-folders, an MNIST IDX folder, a .npz, tfds:NAME or builtin:digits.")]
# Sampling (generate and chat).
MaxLengthOption = Annotated[int, typer.Option("--max-length", "--length", help="Most new tokens per prompt or reply "
                                                                               "(generate on seq2seq: 0 = the target rows' length).")]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")]
TopKOption = Annotated[int, typer.Option(help="Sample only from the k most likely tokens; 0 means all.")]
TopPOption = Annotated[float, typer.Option(help="Sample only from the most likely tokens whose probabilities add up to p; 1 means all.")]


def debugging() -> bool:
    """Whether the command line asked for `--debug` (the root command's option)."""
    context = compat.current_command_context()
    return bool(context is not None and context.find_root().params.get("debug"))


def interrupted_line(error: KeyboardInterrupt) -> str:
    """What Ctrl-C says: how to go on with the run it stopped, if any."""
    run_dir = getattr(error, "run_dir", None)
    if run_dir is not None and Path(run_dir, files.CHECKPOINTS_DIR).is_dir():
        return f"interrupted; continue with `kerasllm train --resume {run_dir}`"
    if run_dir is not None:
        return "interrupted before the first checkpoint; nothing was kept, start the run again"
    return "interrupted"


def handle_errors(command):
    """Turn `UserError` (and Ctrl-C) into one line on stderr and exit code 2 (130); `--debug` shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if debugging():
                raise
            errors.print(f"[bold red]error:[/] {error}", highlight=False)
            raise typer.Exit(2) from None
        except (RunInterrupted, KeyboardInterrupt) as error:
            errors.print(interrupted_line(error), highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def load_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up lines hidden (shown with --debug)."""
    compilation.set_xla_defaults(quiet.keras_backend())
    quiet.load_tensorflow(debug=debugging())


def new_table(*headers: str, whole: tuple = (), **options) -> Table:
    """A rich table whose cells wrap at the console's width rather than end in "…" (a path or a key is copied whole);
    the `whole` columns are not wrapped at all while the table fits."""
    return Table(*(Column(header, overflow="fold", no_wrap=header in whole) for header in headers), **options)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def note(line: str) -> None:
    """One `note:` line on stderr."""
    errors.print(f"note: {line}", highlight=False)


def warn(line: str) -> None:
    """One `warning:` line on stderr: a result that may be of no use."""
    errors.print(f"[yellow]warning:[/] {line}", highlight=False)


def write(text: str) -> None:
    """Streamed text on stdout, as it comes."""
    sys.stdout.write(text)
    sys.stdout.flush()


def command_line() -> str:
    """The command as typed, recorded in a run's metrics.json."""
    return "kerasllm " + " ".join(sys.argv[1:])


def progress_mode(as_json: bool, quiet_flag: bool) -> str:
    return "json" if as_json else "quiet" if quiet_flag else "rich"


def show_notes(config) -> None:
    """How the config was read (a key that moved to a task's own section), one line each, on stderr."""
    for line in config.notes:
        note(line)


def show_summary(spec, run_dir: Path, summary: dict, mode: str) -> None:
    """What `train` and `finetune` print at the end."""
    as_json, quiet_mode = mode == "json", mode == "quiet"
    if summary.get("nothing_to_do"):
        message = (f"{run_dir} already finished {count(summary['epochs_completed'], 'epoch')}"
                   f"{' (stopped early)' if summary.get('stopped_early') else ''}; nothing to do. "
                   "Pass --epochs N with a larger N to train it longer.")
        return print_json(dict(summary, run=str(run_dir))) if as_json else console.print(message, highlight=False)
    if as_json:  # JSON Lines: one object per epoch, then the summary
        return print(json.dumps({"event": "summary", **summary, "run": str(run_dir)}, default=str))
    if quiet_mode:
        return print(run_dir)
    table = new_table("metric", "before training", "after training", title=f"{spec.name}: validation")
    for key, value in summary["after_training"].items():
        table.add_row(key, f"{summary['before_training'].get(key, float('nan')):.4f}", f"{value:.4f}")
    console.print(table)
    console.print(f"{count(summary['epochs_completed'], 'epoch')}, {summary['train_seconds']:.1f} s; run folder: [bold]{run_dir}[/]",
                  highlight=False)
    if summary.get("overfitting"):
        report = summary["overfitting"]
        console.print(f"[yellow]overfitting:[/] {report['reason']}. The saved model keeps epoch {report['kept_epoch']}. "
                      f"What helps: {'; '.join(report['fixes'])}.", highlight=False)
    for line in summary.get("notes", []):
        console.print(f"[yellow]note:[/] {line}", highlight=False)

    console.print("next: " + " · ".join(f"`{line}`" for line in runs.load_run(run_dir).task.usage(run_dir)), highlight=False)


def load_run_and_model(source: Path, unsafe: bool):
    """The run (for its tokenizer or labels and config) and the model behind a run folder or a model file in one."""
    path = model_path(source)
    if not files.is_run_dir(path.parent):
        raise UserError(f"{source} is not inside a run folder, so its config.yaml, data.json and tokenizer/labels are "
                        "missing; pass the run folder it came from (or put it back into one)")
    load_tensorflow()  # first: a run's keras-hub tokenizer imports TensorFlow as it loads
    run = runs.load_run(path.parent)
    model = load_model(path, unsafe=unsafe)
    check_model_fits(model, run)
    return run, model


def show_table(headers: list[str], rows: list[list[str]], title: str = "", whole: tuple = ()) -> None:
    """A table when it fits the terminal's width; narrower, each row as a record (its first cell, then `header: cell`
    lines, wrapped at spaces; a word longer than the line, a path, overflows whole), so that no number or path is split
    across lines. The title is a line of its own, whole. Piped, there is no
    width to fit (unless COLUMNS says one): the table."""
    table = table_of(rows, *headers, whole=whole)
    natural = Measurement.get(console, console.options.update(max_width=100_000), table).maximum
    if title:  # its own line, never wrapped into the table's width: a path in it stays whole
        console.print(f"[bold]{title}[/]", highlight=False, soft_wrap=True)
    if console.width is None or natural <= console.width:
        return console.print(table)
    for row in rows:
        console.print(f"[bold]{row[0]}[/]", highlight=False)
        for header, cell in zip(headers[1:], row[1:]):
            if cell:
                console.print(f"  {header}: {cell}", highlight=False, soft_wrap=False, markup=False, overflow="ignore")


def table_of(rows, *headers: str, **options) -> Table:
    """A table of these rows (each a sequence of cells)."""
    table = new_table(*headers, **options)
    for row in rows:
        table.add_row(*row)
    return table


def check_new_tokens(max_length: int, hint: str = "") -> None:
    """A reply or a continuation needs at least one new token (`hint`: what else the option may mean, or its default)."""
    if max_length < 1:
        raise UserError(f"--max-length {max_length} leaves no token to generate; pass 1 or more{hint}")


def lines_of(file: Path, what: str) -> list[str]:
    """The non-empty lines of a `--file` (prompts, inputs), or one line naming the problem."""
    if not file.is_file():
        raise UserError(f"--file {file} {files.absent(file)}; pass a text file with one {what} per line")
    return [line for line in read_text_file(file).splitlines() if line.strip()]


@contextlib.contextmanager
def progress_bar(description: str, unit: str, shown: bool = True):
    """A progress bar on stderr, gone when the work ends, for work that takes more than a few seconds outside training
    (a seq2seq evaluation's decoding); yields `advance(done, total)`. Only in a terminal: piped or `--json` output stays
    exactly what it was (`shown=False`: nothing)."""
    if not shown or not errors.is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn(description), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn(unit), TimeRemainingColumn(),
                  console=errors, transient=True) as progress:
        task = progress.add_task(description, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)
