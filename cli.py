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
from rich.table import Column, Table

from kerasllm import __version__, catalog, compression, distribute, files, finetuning, generation, hub, memory, quiet, runs
from kerasllm import config as config_lib
from kerasllm import export as export_lib
from kerasllm.data.text import read_text_file
from kerasllm.doctor import bfloat16_note
from kerasllm.doctor import report as doctor_report
from kerasllm.errors import UserError
from kerasllm.saving import check_model_fits, load_model, model_path
from kerasllm.words import a, count


def _flag_type(option, ctx):
    """Typer 0.29 shows every on/off flag as `--json <bool>` (even `--help`): a flag takes no value, so no type."""
    return None if option.is_flag and not option.count else _typer_type(option, ctx)


_typer_type = typer.core.TyperOption.display_type_rich  # Typer's own (typer.core: not a documented API; checked on 0.29.2)
typer.core.TyperOption.display_type_rich = _flag_type

app = typer.Typer(
    help="kerasllm: a Keras 3 model zoo. Train, evaluate, generate with and export language and vision models.\n\n"
    "Start with `kerasllm list`, then `kerasllm train lstm-textgen`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
# Whole lines at any width. Piped (a file, a CI log, `| less`), there is no width to fit: tables are drawn at their
# natural width instead of rich's 80 columns, which cut cells to "parame…"; COLUMNS still sets a width.
def _width(stream) -> int | None:
    return None if stream.isatty() or "COLUMNS" in os.environ else 10_000


console = Console(soft_wrap=True, width=_width(sys.stdout))
errors = Console(stderr=True, soft_wrap=True, width=_width(sys.stderr))
STATE = {"debug": False, "run_dir": None}

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
SetOption = Annotated[Optional[List[str]], typer.Option("--set", help="Override a config key: --set train.learning_rate=1e-3 (repeatable).")]
RunOutOption = Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/NAME-UTCTIME).")]
RunOverwriteFlag = Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out run folder (only one made by kerasllm).")]
DataOption = Annotated[Optional[str], typer.Option("--data", help="Text: a file, a folder of .txt files, tfds:NAME or builtin:python-docs. "
                                                   "Images: a folder of class sub-folders, an MNIST IDX folder, a .npz, tfds:NAME or builtin:digits.")]


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
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            run_dir = STATE["run_dir"]
            if run_dir is not None and Path(run_dir, files.CHECKPOINTS_DIR).is_dir():
                errors.print(f"interrupted; continue with `kerasllm train --resume {run_dir}`", highlight=False)
            elif run_dir is not None:
                errors.print("interrupted before the first checkpoint; nothing was kept, start the run again", highlight=False)
            else:
                errors.print("interrupted", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


def show_version(value: bool) -> None:
    if value:
        print(f"kerasllm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and TensorFlow's start-up log.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")] = False,
    backend: BackendOption = None,
):
    STATE["debug"] = debug
    if not debug:
        quiet.keep_library_output()
    if backend:
        distribute.set_backend(backend)


def load_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up lines hidden (shown with --debug)."""
    distribute.set_xla_defaults(quiet.keras_backend())
    quiet.load_tensorflow(debug=STATE["debug"])


def new_table(*headers: str, whole: tuple = (), **options) -> Table:
    """A rich table whose cells wrap at the console's width rather than end in "…" (a path or a key is copied whole);
    the `whole` columns are not wrapped at all while the table fits."""
    return Table(*(Column(header, overflow="fold", no_wrap=header in whole) for header in headers), **options)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@app.command("list")
@handle_errors
def list_models(as_json: JsonFlag = False):
    """List the registered models.

    Example: `kerasllm list --json`
    """
    rows = [  # parameters: null where the preset decides them (hub-classifier), not 0
        {"name": s.name, "task": s.task, "parameters": s.count_params(s.hparams()) or None, "default_data": s.default_data,
         "description": s.description}
        for s in catalog.models().items()
    ]
    if as_json:
        return print_json(rows)
    table = new_table("name", "task", "parameters", "default data", "description", title="kerasllm models",
                      whole=("name", "task"))  # names are what the user types
    for row in rows:
        parameters = f"{row['parameters']:,}" if row["parameters"] else "(the preset's)"
        table.add_row(row["name"], row["task"], parameters, row["default_data"], row["description"])
    console.print(table)


@app.command()
@handle_errors
def info(name: Annotated[str, typer.Argument(help="Registered model name (see `kerasllm list`).")], as_json: JsonFlag = False):
    """Show a model's hyperparameters and the training settings, with defaults and help.

    Example: `kerasllm info lstm-textgen`
    """
    spec = catalog.model(name)
    sections = {"model_args": spec.hparams, **config_lib.SECTIONS, **spec.sections}
    defaults = config_lib.default_config(spec)
    tasks = {spec.task, *spec.objectives.values()}
    rows = [  # only the keys this model's tasks read (no labelled-text columns for a language model)
        {"key": f"{section}.{field}", "type": type_name, "default": getattr(getattr(defaults, section), field), "help": help_text}
        for section, cls in sections.items()
        for field, type_name, _, help_text in config_lib.fields_help(cls) if config_lib.applies(cls, field, tasks)
    ]
    if as_json:
        return print_json({"name": spec.name, "task": spec.task, "default_data": spec.default_data, "keys": rows,
                           "presets": spec.presets})
    console.print(f"[bold]{spec.name}[/] ({spec.task}): {spec.description}")
    table = new_table("key", "type", "default", "help", whole=("key",))  # a key is copied into --set
    table.columns[0].no_wrap = True  # keys are what `--set` takes: never cut
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
    epochs: EpochsOption = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sets train.batch_size.")] = None,
    config_file: Annotated[Optional[Path], typer.Option("--config", help="A .yaml or .json config (a run's config.yaml reproduces it).")] = None,
    overrides: SetOption = None,
    out: RunOutOption = None,
    overwrite: RunOverwriteFlag = False,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its newest checkpoint.")] = None,
    seed: SeedOption = None,
    preset: Annotated[Optional[str], typer.Option(help="Start from one of the model's presets (see `kerasllm info NAME`), e.g. mnist.")] = None,
    strategy: StrategyOption = None,
    precision: PrecisionOption = None,
    backend: BackendOption = None,
    objective: Annotated[Optional[str], typer.Option(help="Sets train.objective: mlm pretrains transformer-classifier with masked-LM.")] = None,
    task: TaskOption = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
):
    """Train a model and write a run folder.

    Settings come from the model's defaults, then --preset, then --config, then
    --set, then the flags named after keys (--epochs, --batch-size, --seed, --data,
    --strategy).

    Examples:

    * `kerasllm train lstm-textgen`  (offline default corpus)
    * `kerasllm train cnn-classifier --data mnist/ --preset mnist`  (a folder of MNIST IDX files)
    * `kerasllm train lstm-textgen --data input.txt --epochs 20 --set model_args.units=512`
    * `kerasllm train --config runs/lstm-textgen-20261129-120000/config.yaml`
    * `kerasllm train --resume runs/lstm-textgen-20261129-120000 --epochs 30`
    * `kerasllm train lstm-classifier --data sst/stsa.binary`  (sentiment: stsa.binary.train, .dev, .test)
    * `kerasllm train transformer-classifier --objective mlm --data corpus.txt`  (masked-LM pretraining)
    * `kerasllm train transformer-lm --backend jax --strategy tpu --precision mixed_bfloat16`  (a Colab TPU)
    """
    distribute.set_backend(backend)
    flags = config_lib.flag_overrides({"data.source": data, "train.epochs": epochs, "train.batch_size": batch_size, "train.seed": seed,
                                       "runtime.strategy": strategy, "train.objective": objective, "runtime.precision": precision})
    if resume is not None:
        config_file = runs.check_resume_options(resume, out, overwrite, config_file)
    if name is None:
        if config_file is None:
            raise UserError("name a model to train (see `kerasllm list`) or pass --config FILE")
        name = config_lib.read_config_file(config_file).get("model") or ""
    spec = catalog.model(name)
    flags += task_flags(spec, task, data)
    config = config_lib.resolve(spec, config_file, [*(overrides or []), *flags], preset=preset)
    catalog.task_for(spec, config.train.objective)  # an unknown objective is one line, before anything is written
    show_notes(config)
    if resume is not None:
        runs.check_resume_config(resume, config)
        run_dir = resume
    else:
        run_dir = runs.plan_new_run(spec.name, out, overwrite, config_lib.local_paths(config.data.source))
    STATE["run_dir"] = run_dir
    load_tensorflow()
    from kerasllm.training import train as train_model  # imports Keras and TensorFlow: only commands that train pay for it

    mode = "json" if as_json else "quiet" if quiet else "rich"
    slow_bfloat16 = bfloat16_note(config.runtime.precision, config.runtime.strategy)
    if slow_bfloat16:
        errors.print(f"note: {slow_bfloat16}", highlight=False)

    def announce(model):  # once the data has loaded and the model is built: a refused run announces nothing
        if mode == "rich":
            console.print(f"training [bold]{spec.name}[/] on {config.data.source} → {run_dir}", highlight=False)

    summary = train_model(config, run_dir, resume=resume is not None, overwrite=overwrite, progress=mode, console=console,
                          command="kerasllm " + " ".join(sys.argv[1:]), on_built=announce)
    show_summary(spec, run_dir, summary, mode)


def task_flags(spec, task: str | None, data: str | None) -> list[str]:
    """`--task NAME` as config overrides: the objective that trains it, and the task's own default data (without --data)."""
    if task is None:
        return []
    from kerasllm import tasks

    flags = [f"train.objective={catalog.objective_for_task(spec, task)}"]
    default = tasks.get(task).default_data
    if default and data is None:
        flags.append(f"data.source={default}")
    return flags


def show_notes(config) -> None:
    """How the config was read (a key that moved to a task's own section), one line each, on stderr."""
    for note in config.notes:
        errors.print(f"note: {note}", highlight=False)


def show_summary(spec, run_dir: Path, summary: dict, mode: str) -> None:
    """What `train` and `finetune` print at the end."""
    as_json, quiet = mode == "json", mode == "quiet"
    if summary.get("nothing_to_do"):
        message = (f"{run_dir} already finished {count(summary['epochs_completed'], 'epoch')}"
                   f"{' (stopped early)' if summary.get('stopped_early') else ''}; nothing to do. "
                   "Pass --epochs N with a larger N to train it longer.")
        return print_json(dict(summary, run=str(run_dir))) if as_json else console.print(message, highlight=False)
    if as_json:  # JSON Lines: one object per epoch, then the summary
        return print(json.dumps({"event": "summary", **summary, "run": str(run_dir)}, default=str))
    if quiet:
        return print(run_dir)
    table = new_table("metric", "before training", "after training", title=f"{spec.name}: validation")
    for key, value in summary["after_training"].items():
        table.add_row(key, f"{summary['before_training'].get(key, float('nan')):.4f}", f"{value:.4f}")
    console.print(table)
    console.print(f"{count(summary['epochs_completed'], 'epoch')}, {summary['train_seconds']:.1f} s; run folder: [bold]{run_dir}[/]",
                  highlight=False)
    if summary.get("overfitting"):
        report = summary["overfitting"]
        console.print(f"[yellow]overfitting:[/] {report['reason']}. The saved model keeps epoch {report['best_epoch']}. "
                      f"What helps: {'; '.join(report['fixes'])}.", highlight=False)
    for note in summary.get("notes", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)

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


@app.command()
@handle_errors
def evaluate(
    source: ModelOrRun,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Evaluate on this data (all of it, or its test split) instead of the run's validation split.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for evaluation.")] = 64,
    beam: Annotated[int, typer.Option(help="Seq2seq: decode with beam search of this width (0: greedy).")] = 0,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Evaluate a trained model with its task's metrics.

    Text generation: loss, perplexity, bits per character (and per token), next-token accuracy.
    Image classification: accuracy, top-5, per-class precision/recall/F1, confusion matrix.

    Examples: `kerasllm evaluate runs/lstm-textgen-20261129-120000` · `kerasllm evaluate RUN --data other.txt --json`
    """
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if beam < 0:
        raise UserError("--beam must be 0 (greedy) or a beam width of 1 or more")
    run, model = load_run_and_model(source, unsafe)
    if beam and "beam" not in run.task.evaluate_options:
        raise UserError(f"--beam applies to seq2seq models; {run.spec.name} is {a(run.task.name)} model")
    length = min([run.data_record[key] for key in ("sequence_length", "target_length") if run.data_record.get(key)] or [1])
    memory.check_batch(model, batch_size, length, training=False, setting="--batch-size", on_cpu=distribute.device_kind() == "CPU")
    results = run.task.evaluate(model, run, data=data, batch_size=batch_size, **({"beam": beam} if beam else {}))
    if as_json:
        return print_json(results)
    where = results.pop("data")
    for table in run.task.tables(results, f"{run.spec.name} on {where}"):
        rendered = new_table(*table.columns, title=table.title)
        for row in table.rows:
            rendered.add_row(*row)
        console.print(rendered)


@app.command()
@handle_errors
def generate(
    source: Annotated[Path, typer.Argument(help="A run folder (or a .keras / .h5 model file inside one), or a keras-hub causal-LM "
                                                "preset: a bare name (gpt2_base_en), kaggle://…, hf://… or a local preset folder.")],
    prompt: Annotated[Optional[List[str]], typer.Option(help="Text to continue (language models) or to translate / summarize "
                                                              "(seq2seq); repeat for a batch.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Also take every non-empty line of this file as a prompt.")] = None,
    max_length: Annotated[int, typer.Option("--max-length", "--length", help="Most new tokens per prompt (seq2seq: 0 = the target rows' length).")] = 300,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely tokens; 0 means all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample only from the most likely tokens whose probabilities add up to p; 1 means all.")] = 1.0,
    stop: Annotated[Optional[List[str]], typer.Option(help="Stop a continuation at this text (not printed); repeatable.")] = None,
    beam: Annotated[int, typer.Option(help="Beam search with this many beams (temperature, top-k and top-p then do not apply); 0 samples "
                                           "(seq2seq: greedy).")] = 0,
    seed: SampleSeedOption = None,
    unsafe: UnsafeFlag = False,
):
    """Generate text with a trained text model: continue prompts (language models) or translate / summarize them (seq2seq).
    One prompt streams as it is produced.

    Examples: `kerasllm generate runs/lstm-textgen-20261129-120000 --prompt "The " --max-length 200 --top-p 0.9` ·
    `kerasllm generate runs/transformer-seq2seq-20261130-120000 --prompt "A man rides a bike." --beam 4` ·
    `kerasllm generate gpt2_base_en --prompt "The weather today" --max-length 40 --top-k 50`
    """
    generation.check_options(temperature, top_k, top_p, max_length, beam)
    if seed is not None and not 0 <= seed <= config_lib.SEED_MAX:
        raise UserError(f"--seed must be between 0 and {config_lib.SEED_MAX}")
    prompts = list(prompt or [])
    if file is not None:
        if not file.is_file():
            raise UserError(f"--file {file} {files.absent(file)}; pass a text file with one prompt per line")
        prompts += [line for line in read_text_file(file).splitlines() if line.strip()]
    prompts = prompts or [""]
    options = dict(max_length=max_length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop or [], beam=beam)
    write = lambda text: (sys.stdout.write(text), sys.stdout.flush())
    preset = None if source.is_file() or files.is_run_dir(source) else hub.resolve(str(source))
    if preset is not None:  # a keras-hub causal LM: kerasllm's samplers over its own cache
        hub.check_reachable(preset, "model")  # offline: one line in seconds, before TensorFlow loads
        load_tensorflow()
        lm = hub.PresetLM(preset)
        generation.write_generations(lambda texts, **more: lm.generate(texts, **options, **more), prompts, write, continues_prompt=True)
        return
    run, model = load_run_and_model(source, unsafe)
    if not run.task.can_generate:
        raise UserError(f"{run.spec.name} is {a(run.task.name)} model; generate needs a text-generation or seq2seq model")
    run.task.write_generations(model, run, prompts, write=write, on_note=lambda line: errors.print(f"note: {line}", highlight=False),
                               **options)


@app.command()
@handle_errors
def download(
    preset: Annotated[str, typer.Argument(help="A keras-hub preset: a bare name (gpt2_base_en, bert_tiny_en_uncased), kaggle://… or hf://….")],
    out: Annotated[Optional[Path], typer.Option(help="The folder to save it in (default: presets/NAME).")] = None,
):
    """Save a keras-hub preset (weights, config, tokenizer) into a local folder, once, with a network; every command
    that takes a preset (`finetune`, `generate`) then takes that folder, offline.

    Example: `kerasllm download gpt2_base_en` · `kerasllm generate presets/gpt2_base_en --prompt "Hello"`
    """
    handle = hub.resolve(preset)
    if handle is None:
        raise UserError(f"{preset} is not a keras-hub preset; pass a bare preset name (see keras-hub's list), kaggle://… or hf://…")
    out = out or Path("presets") / preset.rstrip("/").split("/")[-1].removeprefix("kaggle:").removeprefix("hf:")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not empty; pass another --out (nothing there is overwritten)")
    hub.check_reachable(handle, "files", hub.DOWNLOAD_ELSEWHERE)  # offline: one line in seconds, before TensorFlow loads
    load_tensorflow()
    saved = hub.download(handle, out)
    console.print(f"saved {handle} to {out}: {', '.join(saved)}", highlight=False)
    console.print(f"next: kerasllm generate {out} --prompt \"…\"  ·  kerasllm finetune {out} --data …", highlight=False)


@app.command()
@handle_errors
def chat(
    source: ModelOrRun,
    system: Annotated[Optional[str], typer.Option(help="A system message to start the conversation with.")] = None,
    max_length: Annotated[int, typer.Option("--max-length", "--length", help="Most new tokens per reply.")] = 200,
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 is greedy.")] = 0.8,
    top_k: Annotated[int, typer.Option(help="Sample only from the k most likely tokens; 0 means all.")] = 0,
    top_p: Annotated[float, typer.Option(help="Sample only from the most likely tokens whose probabilities add up to p; 1 means all.")] = 1.0,
    seed: SampleSeedOption = None,
    unsafe: UnsafeFlag = False,
):
    """Talk to a chat run in the terminal: replies stream as they are written, and the conversation is kept (its oldest
    turns left out, with a note, once it outgrows the model's context).

    Commands: /reset · /system TEXT · /save FILE (appends the conversation as JSONL messages) · /help.
    Ctrl-C stops an answer and keeps the session; Ctrl-D leaves.

    Example: `kerasllm chat runs/transformer-lm-20261201-120000 --temperature 0.5`
    """
    from kerasllm.conversation import HELP, ChatSession

    generation.check_options(temperature, top_k, top_p, max_length)
    run, model = load_run_and_model(source, unsafe)
    if run.task.name != "chat":
        raise UserError(f"{source} is {a(run.task.name)} model, not tuned for chat; tune it with "
                        f"`kerasllm finetune {source} --task chat --data CONVERSATIONS.jsonl`")
    replier = run.task.replier(model, run)
    note = lambda line: errors.print(f"note: {line}", highlight=False)
    write = lambda text: (sys.stdout.write(text), sys.stdout.flush())

    def reply(messages, on_text, on_note):
        return replier(messages, max_length=max_length, on_text=on_text, on_note=on_note, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed)

    session = ChatSession(reply, system)
    console.print(f"chatting with {run.path.name} ({run.spec.name}); {HELP}", highlight=False)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:  # Ctrl-D
            print()
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, the session goes on
            print()
            continue
        if not line:
            continue
        said = session.command(line)
        if said is not None:
            console.print(said, highlight=False)
            continue
        write("bot> ")
        try:
            session.ask(line, write, note)
        except KeyboardInterrupt:
            write(" [stopped]")
        print()


@app.command()
@handle_errors
def serve(
    sources: Annotated[List[Path], typer.Argument(help="One or more transformer-lm runs (tuned for chat, or plain); each is a "
                                                       "model in the API, named after its folder.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 127.0.0.1 answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="KERASLLM_API_KEY", help="Require this key (Authorization: Bearer KEY) "
                                                   "on every /v1 call; also read from KERASLLM_API_KEY.")] = None,
    max_batch: Annotated[int, typer.Option(help="Requests decoded together, per model (continuous batching).")] = 8,
    max_queue: Annotated[int, typer.Option(help="Requests that may wait for a free slot; more get 429.")] = 64,
    max_tokens: Annotated[int, typer.Option(help="The most new tokens one request may ask for.")] = 256,
    stream_interval: Annotated[float, typer.Option(help="Streamed answers: after the first token, the text of this many "
                                                        "milliseconds goes out in one write (0: a write per token).")] = 20,
    unsafe: UnsafeFlag = False,
):
    """Serve runs over OpenAI's HTTP API: /v1/models, /v1/completions, /v1/chat/completions (streaming too), /health.

    Any OpenAI client works: `OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY")`.

    Example: `kerasllm serve runs/transformer-lm-20261201-120000 --port 8000 --max-batch 16`
    """
    import socket

    if not 1 <= port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, not {port}")
    if not 0 <= stream_interval <= 1000:
        raise UserError(f"--stream-interval must be between 0 and 1000 milliseconds, not {stream_interval:g}")
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        listener.bind((host, port))
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); pass another --port or --host") from None
    loaded = [load_run_and_model(source, unsafe) for source in sources]
    names = [run.path.name for run, _ in loaded]
    if len(set(names)) < len(names):
        raise UserError(f"two runs share the folder name {max(names, key=names.count)}, which names a model in the API; rename one")
    import uvicorn

    from kerasllm import server

    served = [server.load_served(run, model, max_batch, max_queue, max_tokens) for run, model in loaded]
    if not api_key and host not in ("127.0.0.1", "localhost", "::1"):
        errors.print(f"note: {host} answers other machines and no --api-key is set, so anyone who reaches it can use it",
                     highlight=False)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    console.print(f"serving {', '.join(names)} at http://{shown}:{port}/v1 ({count(max_batch, 'slot')} per model"
                  f"{', API key required' if api_key else ''}); Ctrl-C stops", highlight=False)
    config = uvicorn.Config(server.create_app(served, api_key, stream_interval / 1000), log_level="info" if STATE["debug"] else "warning")
    try:
        uvicorn.Server(config).run(sockets=[listener])
    except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C / SIGINT, then raises it again
        pass
    finally:
        for one in served:
            one.engine.stop()
    console.print("server stopped", highlight=False)


@app.command()
@handle_errors
def predict(
    source: ModelOrRun,
    inputs: Annotated[Optional[List[str]], typer.Argument(
        help="What to classify: texts (text models; a tab separates a sentence pair) or image files / folders (image models).")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Text models: classify every non-empty line of this file.")] = None,
    top_k: Annotated[int, typer.Option(help="Classes to show per input.")] = 3,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Classify inputs with a trained classifier: the top-k classes with probabilities.

    Examples: `kerasllm predict runs/lstm-classifier-20261130-120000 "a gripping, funny film" --file reviews.txt` ·
    `kerasllm predict runs/cnn-classifier-20261129-120000 digit.png more_digits/ --top-k 3`
    """
    if top_k < 1:
        raise UserError("--top-k must be at least 1")
    inputs = list(inputs or [])
    if file is not None:
        if not file.is_file():
            raise UserError(f"--file {file} {files.absent(file)}; pass a text file with one input per line")
        inputs += [line for line in read_text_file(file).splitlines() if line.strip()]
    if not inputs:
        raise UserError("nothing to classify; pass inputs as arguments or --file FILE")
    run, model = load_run_and_model(source, unsafe)
    if not run.task.can_predict:
        raise UserError(f"{run.spec.name} is {a(run.spec.task)} model; predict needs a classification model")
    rows = run.task.predict(model, run, inputs, top_k=top_k)
    if as_json:
        return print_json(rows)
    table = new_table("input", "class", "probability", "note", title=f"{run.spec.name} predictions")
    for row in rows:
        for rank, guess in enumerate(row["predictions"]):
            first = rank == 0
            table.add_row((row.get("text") or row.get("file")) if first else "", guess["class"], f"{guess['probability']:.4f}",
                          row["note"] if first else "")
    console.print(table)


@app.command()
@handle_errors
def finetune(
    base: Annotated[str, typer.Argument(help="Start from: a run folder (or a .keras/.h5 file in one), or a keras-hub preset "
                                              "(a local preset folder, kaggle://… or hf://…).")],
    data: DataOption = None,
    method: Annotated[str, typer.Option(help="full (all weights), freeze (only the new head) or lora (attention adapters + head).")] = "full",
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters (--method lora).")] = 8,
    unfreeze_after: Annotated[int, typer.Option(help="With --method freeze: train the whole model after this many epochs "
                                                      "(at finetune.unfreeze_learning_rate_ratio × the learning rate).")] = 0,
    task: TaskOption = None,
    epochs: EpochsOption = None,
    overrides: SetOption = None,
    out: RunOutOption = None,
    overwrite: RunOverwriteFlag = False,
    seed: SeedOption = None,
    strategy: StrategyOption = None,
    backend: BackendOption = None,
    quiet: QuietFlag = False,
    as_json: JsonFlag = False,
    unsafe: UnsafeFlag = False,
):
    """Fine-tune a trained model or a keras-hub preset on new data; the run records its base (path and sha256).

    The base's architecture and tokenizer are kept; a base trained for another task (masked-LM
    pretraining, other labels) gets a new head. `--resume` works on the new run as on any run.

    Examples:

    * `kerasllm finetune runs/transformer-classifier-mlm --data sst/stsa.binary`
    * `kerasllm finetune runs/transformer-classifier-mlm --data reviews.csv --method lora --lora-rank 8`
    * `kerasllm finetune my_bert_preset/ --data reviews.csv --method freeze --unfreeze-after 1 --epochs 3`
    """
    distribute.set_backend(backend)
    if method not in config_lib.FINETUNE_METHODS:
        raise UserError(f"--method must be {config_lib.one_of(config_lib.FINETUNE_METHODS)}, not {method!r}")
    flags = config_lib.flag_overrides({"train.epochs": epochs, "train.seed": seed, "runtime.strategy": strategy})
    load_tensorflow()  # a preset base loads keras-hub (and TensorFlow) already: keep its start-up lines hidden
    found = finetuning.resolve_base(base)
    if task is not None:
        flags += task_flags(found.run.spec if found.run is not None else catalog.model(finetuning.preset_family(task)), task, data)
    spec, config = finetuning.finetune_config(found, data, [*(overrides or []), *flags], method, lora_rank, unfreeze_after,
                                              task=task)
    show_notes(config)
    run_dir = runs.plan_new_run(spec.name, out, overwrite, config_lib.local_paths(config.data.source, found.source))
    STATE["run_dir"] = run_dir
    load_tensorflow()
    from kerasllm.training import train as train_model  # imports Keras and TensorFlow: only commands that train pay for it

    parent = finetuning.load_base_model(found, unsafe)
    artifacts = finetuning.base_artifacts(found)
    mode = "json" if as_json else "quiet" if quiet else "rich"

    def show_parameters(model):
        counts = finetuning.parameter_counts(model)
        if mode == "rich":
            console.print(f"fine-tuning [bold]{spec.name}[/] from {found.source} ({method}) on {config.data.source} → {run_dir}\n"
                          f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({counts['trainable_share']:.2%})",
                          highlight=False)

    summary = train_model(config, run_dir, overwrite=overwrite, progress=mode, console=console,
                          command="kerasllm " + " ".join(sys.argv[1:]), parent=parent, parent_record=found.record(),
                          artifacts=artifacts, on_built=show_parameters)
    show_summary(spec, run_dir, summary, mode)


@app.command()
@handle_errors
def export(
    source: ModelOrRun,
    fmt: Annotated[str, typer.Option("--format", help="keras, h5, savedmodel, tflite or onnx (pip install \"kerasllm[onnx]\").")] = "keras",
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
    `kerasllm export RUN --format tflite --quantize int8` · `kerasllm export RUN --format onnx`
    """
    export_lib.check_format(fmt)  # before the (slow) model load
    export_lib.check_quantize(fmt, quantize)
    if tolerance is not None and not (tolerance >= 0):
        raise UserError("--tolerance must be 0 or more")
    path = model_path(source)
    out = out or export_lib.default_out(source, fmt)
    export_lib.check_out(out, fmt, path, overwrite)
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
    calibration = (export_lib.calibration_batches(run, sample, config_lib.absolute_source(calibration_data) if calibration_data else None)
                   if quantize == "int8" else [])
    companions = export_lib.companion_paths(path.parent if run is not None else None, out, fmt)
    result = export_lib.export(model, fmt, out, tolerance=tolerance, overwrite=overwrite, sample=sample, endpoints=endpoints,
                               quantize=quantize, calibration=calibration, companions=companions, guide=run is not None)
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
    if result.readme is not None:
        console.print(f"how to run it with {'onnxruntime' if fmt == 'onnx' else 'TensorFlow'} alone: {result.readme}", highlight=False)
    elif run is not None:
        console.print(f"note: {out.parent / 'README.md'} is not kerasllm's, so no usage snippet was written there", highlight=False)


@app.command()
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
    if not files.is_run_dir(source):
        raise UserError(f"{source} is not a run folder; compress takes a run folder made by `kerasllm train` or `finetune`")
    check_method_options(method, {"--sparsity": sparsity != 0.5, "--student": student is not None, "--temperature": temperature is not None,
                                  "--alpha": alpha is not None, "--set": bool(set_values), "--epochs": epochs is not None,
                                  "--data": data is not None})
    load_tensorflow()
    options = dict(epochs=epochs, data=data, out=out, overwrite=overwrite, unsafe=unsafe, as_json=as_json)
    if method == "prune":
        target, summary = prune_run(source, sparsity, **options)
    elif method == "distill":
        target, summary = distill_run(source, student, set_values or [], temperature, alpha, **options)
    else:
        target, summary = compression.compress(source, method, out, overwrite=overwrite, unsafe=unsafe,
                                               on_note=lambda line: errors.print(f"note: {line}", highlight=False))
    if as_json:
        return print_json({"run": str(target), **summary})
    table = new_table("", "before", "after", "after / before", title=f"{summary['model']}: {method}, {source} → {target}")
    for row in compression.table_rows(summary):
        table.add_row(*row)
    console.print(table)
    console.print(f"wrote {target}", highlight=False)


METHOD_OPTIONS = {"prune": ("--sparsity", "--epochs", "--data"),
                  "distill": ("--student", "--temperature", "--alpha", "--set", "--epochs", "--data")}


def check_method_options(method: str, given: dict) -> None:
    """An option that belongs to another method is one line naming which."""
    stray = [name for name, present in given.items() if present and name not in METHOD_OPTIONS.get(method, ())]
    if stray:
        owners = " or ".join(sorted(m for m, names in METHOD_OPTIONS.items() if stray[0] in names))
        raise UserError(f"{', '.join(stray)} belong{'s' if len(stray) == 1 else ''} to --method {owners}; drop "
                        f"{'it' if len(stray) == 1 else 'them'} for --method {method}")


def train_compressed(name: str, found, config, out: Path | None, overwrite: bool, as_json: bool, **inputs) -> Path:
    """Train a pruning or distillation run (`inputs`: parent, parent_record, artifacts) into a new run folder."""
    run_dir = runs.plan_new_run(name, out, overwrite, config_lib.local_paths(config.data.source, found.source))
    STATE["run_dir"] = run_dir
    from kerasllm.training import train as train_model  # imports Keras and TensorFlow: only commands that train pay for it

    train_model(config, run_dir, overwrite=overwrite, progress="quiet" if as_json else "rich", console=console,
                command="kerasllm " + " ".join(sys.argv[1:]), **inputs)
    return run_dir


def prune_run(source: Path, sparsity: float, *, epochs: int | None, data: str | None, out: Path | None, overwrite: bool,
              unsafe: bool, as_json: bool) -> tuple[Path, dict]:
    """`compress --method prune`: fine-tune the run with `finetune.sparsity`, then measure it against its source."""
    if not 0 < sparsity < 1:
        raise UserError("--sparsity must be above 0 and below 1 (0.5 zeroes half of each kernel)")
    found = finetuning.resolve_base(str(source))
    compression.check_not_a_copy(source)
    flags = config_lib.flag_overrides({"train.epochs": epochs, "finetune.sparsity": sparsity,  # the source's batch size
                                       "train.batch_size": found.run.config.train.batch_size})
    spec, config = finetuning.finetune_config(found, data or found.run.config.data.source, flags, "full", 8, 0)
    run_dir = train_compressed(f"{spec.name}-prune", found, config, out, overwrite, as_json, parent=finetuning.load_base_model(found, unsafe),
                               parent_record=found.record(), artifacts=finetuning.base_artifacts(found))
    return run_dir, compression.trained_report(source, run_dir, unsafe)


def distill_run(source: Path, student: str | None, overrides: list[str], temperature: float | None, alpha: float | None, *,
                epochs: int | None, data: str | None, out: Path | None, overwrite: bool, unsafe: bool,
                as_json: bool) -> tuple[Path, dict]:
    """`compress --method distill`: train a student from scratch on the run's data and tokenizer, matching the run's
    outputs (Keras' Distiller through the trainer), then measure it against the run."""
    found = finetuning.resolve_base(str(source))
    compression.check_not_a_copy(source)
    flags = config_lib.flag_overrides({"train.epochs": epochs, "data.source": data, "finetune.distill_temperature": temperature,
                                       "finetune.distill_alpha": alpha})
    spec, config = compression.distill_config(found, student, overrides, flags)
    finetuning.load_base_model(found, unsafe)  # refuses a quantized teacher, or one that needs --unsafe, before training starts
    run_dir = train_compressed(f"{spec.name}-distill", found, config, out, overwrite, as_json,
                               artifacts=dict(found.run.artifacts))  # the teacher's tokenizer and labels
    return run_dir, compression.trained_report(source, run_dir, unsafe)


@app.command()
@handle_errors
def doctor(as_json: JsonFlag = False):
    """Check this installation: versions, Keras backend, devices, the strategy `auto` picks, and known traps with fixes.

    Example: `kerasllm doctor --json`
    """
    load_tensorflow()
    found = doctor_report()
    if as_json:
        return print_json(found)
    table = new_table("what", "found", title="kerasllm doctor")
    for name, version in found["versions"].items():
        table.add_row(name, version or "not installed")
    table.add_row("Keras backend", found["keras_backend"])
    table.add_row("devices", ", ".join(f"{d['type']} {d['name']}" for d in found["devices"]))
    table.add_row("--strategy auto", found["auto_strategy"])
    table.add_row("CPU bfloat16", "yes" if found["cpu_bfloat16"] else "no")
    table.add_row("CPU kind", found["cpu_kind"])
    table.add_row("XLA CPU defaults", f"{found['xla_cpu_defaults']} (measured fastest for this CPU kind; XLA_FLAGS now: "
                  f"{found['xla_flags'] or 'empty'})")
    cache = found["compilation_cache"]
    table.add_row("compilation cache", f"{cache['folder']}: {cache['programs']} programs, {cache['megabytes']} MB" if cache else
                  "off (KERASLLM_COMPILATION_CACHE=0)")
    console.print(table)
    if not found["traps"]:
        console.print("no known traps apply")
    for trap in found["traps"]:
        console.print(f"[yellow]trap:[/] {trap['trap']}: {trap['detail']}; fix: {trap['fix']}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
