"""Training: `train` (a new run, or `--resume`) and `finetune` (from a run or a keras-hub preset), through the recipes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kerasllm import catalog, distribute, runs
from kerasllm.commands.common import (
    BackendOption,
    BatchSizeOption,
    DataOption,
    EpochsOption,
    JsonFlag,
    PrecisionOption,
    QuietFlag,
    RunOutOption,
    RunOverwriteFlag,
    SeedOption,
    SetOption,
    StrategyOption,
    TaskOption,
    UnsafeFlag,
    command_line,
    console,
    handle_errors,
    load_tensorflow,
    note,
    progress_mode,
    show_notes,
    show_summary,
)
from kerasllm.core import config as config_lib
from kerasllm.core import validation
from kerasllm.core.errors import UserError
from kerasllm.doctor import bfloat16_note
from kerasllm.recipes import finetune as finetuning
from kerasllm.recipes import runner
from kerasllm.train.reports import parameter_counts


@handle_errors
def train(
    name: Annotated[Optional[str], typer.Argument(help="Model to train (see `kerasllm list`); optional with --config or --resume.")] = None,
    data: DataOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
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
    mode = progress_mode(as_json, quiet)
    with runner.interruptible(run_dir):
        load_tensorflow()
        slow_bfloat16 = bfloat16_note(config.runtime.precision, config.runtime.strategy)
        if slow_bfloat16:
            note(slow_bfloat16)

        def announce(model):  # once the data has loaded and the model is built: a refused run announces nothing
            if mode == "rich":
                console.print(f"training [bold]{spec.name}[/] on {config.data.source} → {run_dir}", highlight=False)

        summary = runner.train(config, run_dir, resume=resume is not None, overwrite=overwrite, progress=mode, console=console,
                               command=command_line(), on_built=announce)
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
    batch_size: BatchSizeOption = None,
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
    if method not in validation.FINETUNE_METHODS:
        raise UserError(f"--method must be {validation.one_of(validation.FINETUNE_METHODS)}, not {method!r}")
    flags = config_lib.flag_overrides({"train.epochs": epochs, "train.batch_size": batch_size, "train.seed": seed,
                                       "runtime.strategy": strategy})
    load_tensorflow()  # a preset base loads keras-hub (and TensorFlow) already: keep its start-up lines hidden
    found = finetuning.resolve_base(base)
    if task is not None:
        flags += task_flags(found.run.spec if found.run is not None else catalog.model(finetuning.preset_family(task)), task, data)
    spec, config = finetuning.finetune_config(found, data, [*(overrides or []), *flags], method, lora_rank, unfreeze_after,
                                              task=task)
    show_notes(config)
    run_dir = runs.plan_new_run(spec.name, out, overwrite, config_lib.local_paths(config.data.source, found.source))
    mode = progress_mode(as_json, quiet)

    def show_parameters(model):
        counts = parameter_counts(model)
        if mode == "rich":
            console.print(f"fine-tuning [bold]{spec.name}[/] from {found.source} ({method}) on {config.data.source} → {run_dir}\n"
                          f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({counts['trainable_share']:.2%})",
                          highlight=False)

    with runner.interruptible(run_dir):
        summary = finetuning.run(found, config, run_dir, unsafe, overwrite=overwrite, progress=mode, console=console,
                                 command=command_line(), on_built=show_parameters)
    show_summary(spec, run_dir, summary, mode)
