"""What a run config may hold, and the check of a whole config (`validate`).

The names each choice may take live here, in one place: the modules that act on them (`kerasllm.distribute`,
`kerasllm.tokenizers`, the commands) import them from here. `validate(config)` checks every value of a resolved
`RunConfig` (`kerasllm.core.config.resolve` calls it last): in range, a known name, whole calls into the graph, then
each task section's and the model's own `validate()`. It reads the config's attributes only, so it stands below
`kerasllm.core.config`.
"""

from __future__ import annotations

import math

from kerasllm.core.errors import UserError

# The names a config may hold, in one place: the modules that act on them import these.
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")
STRATEGIES = ("auto", "cpu", "gpu", "mirrored", "tpu", "multi-worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
LOOPS = ("auto", "fit", "custom")
TOKENIZERS = ("char", "word", "wordpiece", "sentencepiece")  # fitted by kerasllm; "keras-hub" comes with a preset
FINETUNE_METHODS = ("full", "freeze", "lora")


def one_of(names: tuple) -> str:
    """`a, b or c`."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]



SEED_MAX = 2**32 - 1


def check_whole_calls(steps_per_epoch: int, steps_per_execution: int) -> None:
    """An epoch must be whole calls into the graph: Keras runs `steps_per_execution` steps a call and would run past a
    `steps_per_epoch` that is no multiple of it (and out of data), while the progress bar shows the count asked for."""
    if steps_per_epoch and steps_per_epoch % steps_per_execution:
        lower = steps_per_epoch - steps_per_epoch % steps_per_execution
        choices = f"{lower} or {lower + steps_per_execution}" if lower else f"{steps_per_execution}"
        raise UserError(f"train.steps_per_epoch={steps_per_epoch} is not a multiple of runtime.steps_per_execution="
                        f"{steps_per_execution} (steps run per call into the graph); use {choices}, or "
                        "runtime.steps_per_execution=1")


def validate(config):
    """Every value in range and every name known; the model's own `validate()` on its hyperparameters. (Whether the
    model has `train.objective` is the catalog's to say: `kerasllm.catalog.task_for`.)"""
    train, data, runtime = config.train, config.data, config.runtime
    checks = [
        (config.train.epochs >= 1, "train.epochs must be at least 1"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.steps_per_epoch >= 0, "train.steps_per_epoch must be 0 (full pass) or more"),
        (config.train.learning_rate > 0, "train.learning_rate must be positive"),
        (config.train.optimizer in OPTIMIZERS, f"train.optimizer must be {one_of(OPTIMIZERS)}"),
        (config.train.schedule in SCHEDULES, f"train.schedule must be {one_of(SCHEDULES)}"),
        (0 <= config.train.min_learning_rate_ratio <= 1, "train.min_learning_rate_ratio must be between 0 and 1"),
        (config.train.clip_norm >= 0, "train.clip_norm must be 0 (off) or positive"),
        (math.isfinite(train.learning_rate), "train.learning_rate must be a finite number"),
        (train.warmup_steps >= 0, "train.warmup_steps must be 0 or more"),
        (train.weight_decay >= 0, "train.weight_decay must be 0 or more"),
        (0 <= train.momentum < 1, "train.momentum must be in [0, 1)"),
        (0 <= train.beta_1 < 1 and 0 <= train.beta_2 < 1, "train.beta_1 and train.beta_2 must be in [0, 1)"),
        (data.windows in ("sequential", "random"), "data.windows must be sequential or random"),
        (train.early_stopping_patience >= 0, "train.early_stopping_patience must be 0 (off) or more"),
        (train.checkpoint_every_steps >= 0, "train.checkpoint_every_steps must be 0 (off) or more"),
        (train.keep_checkpoints >= 0, "train.keep_checkpoints must be 0 (keep all) or more"),
        (train.sample_length >= 0, "train.sample_length must be 0 (off) or more"),
        (train.max_seconds >= 0 and math.isfinite(train.max_seconds), "train.max_seconds must be 0 (no limit) or more"),
        (0 <= train.seed <= SEED_MAX, f"train.seed must be between 0 and {SEED_MAX}"),
        (data.source.strip() != "", "data.source is empty; pass --data PATH or leave it out to use the model's default data"),
        (0 < data.validation_fraction < 1, "data.validation_fraction must be between 0 and 1"),
        (data.sequence_length >= 2, "data.sequence_length must be at least 2"),
        (data.tokenizer in TOKENIZERS + ("keras-hub",), f"data.tokenizer must be {one_of(TOKENIZERS)}"),
        (data.vocab_size >= 8, "data.vocab_size must be at least 8"),
        (runtime.steps_per_execution >= 1, "runtime.steps_per_execution must be at least 1"),
        (runtime.strategy in STRATEGIES, f"runtime.strategy must be {one_of(STRATEGIES)}"),
        (runtime.loop in LOOPS, f"runtime.loop must be {one_of(LOOPS)}"),
        (runtime.worker_timeout >= 0 and math.isfinite(runtime.worker_timeout), "runtime.worker_timeout must be 0 (none) or more"),
        (runtime.precision in PRECISIONS, f"runtime.precision must be {one_of(PRECISIONS)}"),
        (train.monitor in ("val_loss", "val_accuracy"), "train.monitor must be val_loss or val_accuracy"),
        (config.finetune.method in FINETUNE_METHODS, f"finetune.method must be {one_of(FINETUNE_METHODS)}"),
        (config.finetune.lora_rank >= 1, "finetune.lora_rank must be at least 1"),
        (0.0 <= config.finetune.sparsity < 1.0, "finetune.sparsity must be at least 0 and below 1 (0.5 zeroes half of each kernel)"),
        (0.0 < config.finetune.prune_end <= 1.0, "finetune.prune_end must be above 0 and at most 1"),
        (config.finetune.prune_frequency >= 1, "finetune.prune_frequency must be at least 1"),
        (not (config.finetune.teacher and (config.finetune.base or config.finetune.sparsity)),
         "a distilled student trains from scratch: distill, prune and fine-tune in separate runs"),
        (not config.finetune.sparsity or config.finetune.base, "finetune.sparsity prunes while fine-tuning: use `kerasllm "
                                                                "compress RUN --method prune` or `kerasllm finetune`"),
        (config.finetune.distill_temperature > 0, "finetune.distill_temperature must be above 0 (2 softens the teacher's outputs)"),
        (0.0 <= config.finetune.distill_alpha <= 1.0, "finetune.distill_alpha must be between 0 and 1 (the labels' share of the loss)"),
        (config.finetune.unfreeze_after >= 0, "finetune.unfreeze_after must be 0 (never) or more"),
        (0 < config.finetune.unfreeze_learning_rate_ratio <= 1, "finetune.unfreeze_learning_rate_ratio must be in (0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    check_whole_calls(train.steps_per_epoch, runtime.steps_per_execution)
    for section in config.sections.values():  # a task's own section checks itself
        getattr(section, "validate", lambda: None)()
    validate_hparams = getattr(config.model_args, "validate", None)
    if validate_hparams:
        validate_hparams()
    return config
