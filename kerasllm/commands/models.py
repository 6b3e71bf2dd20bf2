"""The zoo, its runs and this installation: `list`, `info`, `runs`, `doctor`, `download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kerasllm import catalog, compilation, hub, runs
from kerasllm.commands.common import JsonFlag, console, handle_errors, load_tensorflow, new_table, note, print_json, show_table
from kerasllm.core import config as config_lib
from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.doctor import report
from kerasllm.export.measure import human_size


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
    show_table(["name", "task", "parameters", "default data", "description"],
               [[row["name"], row["task"], f"{row['parameters']:,}" if row["parameters"] else "(the preset's)", row["default_data"],
                 row["description"]] for row in rows], title="kerasllm models", whole=("name", "task"))  # names: what the user types


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
    show_table(["key", "type", "default", "help"], [[row["key"], row["type"], repr(row["default"]), row["help"]] for row in rows],
               whole=("key",))  # a key is copied into --set: never cut
    for preset, values in spec.presets.items():
        console.print(f"preset [bold]{preset}[/]: " + ", ".join(f"{k}={v!r}" for k, v in values.items()), highlight=False)
    console.print("Change any key with `--set key=value` or a `--config` file; start from a preset with `--preset NAME`.")


@handle_errors
def list_runs(
    folder: Annotated[Path, typer.Argument(help="The folder that holds the runs.")] = Path("runs"),
    model: Annotated[Optional[str], typer.Option(help="Only this model's runs.")] = None,
    latest: Annotated[Optional[str], typer.Option(help="Print only the path of this model's newest finished run that trained "
                                                       "(not a compressed copy), for scripts.")] = None,
    prune: Annotated[bool, typer.Option("--prune", help="Delete all but the newest --keep runs of each model (with --model: of "
                                                          "that model), after showing them; only folders kerasllm made, never "
                                                          "a kept run's source.")] = False,
    keep: Annotated[int, typer.Option(help="With --prune: how many of each model's newest runs stay.")] = 3,
    yes: Annotated[bool, typer.Option("--yes", help="With --prune: delete without asking (scripts); otherwise it only lists.")] = False,
    as_json: JsonFlag = False,
):
    """List the runs in a folder, newest first: name, model, task, kind, source, headline metric, size, date.

    Examples: `kerasllm runs` · `kerasllm runs --model transformer-lm --json` · `RUN=$(kerasllm runs --latest lstm-textgen)` ·
    `kerasllm runs --prune --keep 2` (lists what would go) then `kerasllm runs --prune --keep 2 --yes`
    """
    if latest is not None:
        return print(runs.latest(folder, latest))
    if prune:
        return prune_runs(folder, keep, model, yes)
    rows = [row for row in runs.summaries(folder) if model is None or row["model"] == model]
    if as_json:
        return print_json(rows)
    if not rows:
        return console.print(f"no runs in {folder}{' of ' + model if model else ''}; train one with `kerasllm train MODEL`", highlight=False)
    cells = [[row["name"], row["model"], row["task"], row["kind"] + (f" of {Path(row['source']).name}" if row["source"] else ""),
              ", ".join(f"{key} {value:.4g}" for key, value in row["metric"].items()) or ("unfinished" if not row["complete"] else ""),
              human_size(row["size_bytes"]), row["made"]] for row in rows]
    show_table(["run", "model", "task", "kind", "metric", "size", "made"], cells, title=f"runs in {folder}", whole=("run",))
    total = sum(row["size_bytes"] for row in rows)
    console.print(f"{count(len(rows), 'run')}, {human_size(total)} on disk", highlight=False)


def prune_runs(folder: Path, keep: int, model: str | None, yes: bool) -> None:
    """`runs --prune`: the runs that would go, then (with --yes) gone, with the space freed."""
    import shutil

    doomed = runs.prunable(folder, keep, model)
    if not doomed:
        return console.print(f"nothing to prune in {folder}: no model has more than {count(keep, 'run')}"
                             f"{' (' + model + ')' if model else ''}", highlight=False)
    size = human_size(sum(row["size_bytes"] for row in doomed))
    show_table(["run", "model", "size", "made"], [[row["name"], row["model"], human_size(row["size_bytes"]), row["made"]]
                                                  for row in doomed], title=f"runs past the newest {keep} of each model", whole=("run",))
    if not yes:
        return console.print(f"{count(len(doomed), 'run')} ({size}) would be deleted; add --yes to delete them", highlight=False)
    for row in doomed:
        if files.made_by_kerasllm(Path(row["path"])):  # checked again, just before
            shutil.rmtree(row["path"])
    console.print(f"deleted {count(len(doomed), 'run')}, {size} freed", highlight=False)


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


@handle_errors
def doctor(
    as_json: JsonFlag = False,
    clear_cache: Annotated[bool, typer.Option("--clear-cache", help="Delete kerasllm's compilation caches (every backend and "
                                                                    "version; the next run compiles again), then check.")] = False,
):
    """Check this installation: versions, Keras backend, devices, the strategy `auto` picks, and known traps with fixes.

    Examples: `kerasllm doctor --json` · `kerasllm doctor --clear-cache`
    """
    if clear_cache:
        folders, freed = compilation.clear_compilation_caches()
        note(f"deleted {count(folders, 'compilation cache')}, {human_size(freed)} freed")
    load_tensorflow()
    found = report()
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
