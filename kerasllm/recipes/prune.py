"""Magnitude pruning while fine-tuning, as a trainer hook (`finetune.sparsity`; `kerasllm compress --method prune`).

Keras 3 has no pruning, and `tensorflow-model-optimization` wraps tf.keras 2 layers only, so this is written here.
Each kernel of the model (Dense, EinsumDense, convolutions, LSTM kernels; not biases, norms or embeddings) gets a
mask and a Keras constraint. The optimizer applies constraints after every step, inside the compiled step, so the
mask multiplies the kernel after every update (a multiply: the step stays as fast). Between calls into the graph, a
callback recomputes the masks whenever the step count crosses a multiple of `prune_frequency` (and at the end of
the schedule): the smallest-magnitude weights, a share s(t) of each kernel, are zeroed at once, where s follows
TF-MOT's polynomial decay from 0 at the first step to `sparsity` at `prune_end` × the run's steps (power 3). The
rule depends only on the step count, so a resumed run updates at the same steps. The rest of the run fine-tunes at
the final sparsity. Masks go into every checkpoint (exact
resume) and are stripped at the end: the saved model is a plain Keras model whose pruned weights are zeros.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from kerasllm.core import compat
from kerasllm.core import config as config_lib
from kerasllm.core.errors import UserError
from kerasllm.core.words import count
from kerasllm.recipes import compress, finetune, runner
from kerasllm.train.hooks import BuildContext, Hook

# Keras is imported at the top: only the trainer and `compress --method prune` import this module, once Keras has loaded.

MASKS_FILE = "pruning_masks.npz"
PRUNED = ("kernel", "recurrent_kernel", "depthwise_kernel")


def sparsity_at(step: int, target: float, end_step: int, power: float = 3.0) -> float:
    """TF-MOT's polynomial decay: 0 at step 0, `target` from `end_step` on."""
    progress = min(step / max(end_step, 1), 1.0)
    return target * (1.0 - (1.0 - progress) ** power)


def magnitude_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """1 for the weights kept, 0 for the `sparsity` share with the smallest magnitude."""
    magnitudes = np.abs(np.asarray(weights))
    count = int(np.floor(magnitudes.size * sparsity))
    if count <= 0:
        return np.ones_like(magnitudes, dtype="float32")
    threshold = np.partition(magnitudes.reshape(-1), count - 1)[count - 1]
    return (magnitudes > threshold).astype("float32")


def updates_after(step: int, call: int, frequency: int, end_step: int) -> bool:
    """Whether the masks are recomputed after the call into the graph that ended at `step` (`call` steps long): it
    crossed a multiple of `frequency`, or the end of the schedule, within the schedule."""
    before = step - call
    return before < end_step and (step // frequency != before // frequency or step >= end_step)


def prunable(model) -> list:
    """The kernels pruning applies to, in a fixed order."""
    return [variable for layer in compat.nested_layers(model)[1:] if compat.owns_variables(layer)
            for variable in layer.trainable_weights if variable.path.rsplit("/", 1)[-1] in PRUNED and len(variable.shape) >= 2]


def sparsity_of(model) -> dict:
    """{"total": zeros / weights over the pruned kernels, "layers": {kernel path: its share of zeros}}."""
    layers, zeros, total = {}, 0, 0
    for variable in prunable(model):
        values = np.asarray(variable.numpy())
        layers[variable.path] = round(float(np.mean(values == 0)), 4)
        zeros, total = zeros + int(np.sum(values == 0)), total + values.size
    return {"total": round(zeros / total, 4) if total else 0.0, "layers": layers}


class PruneHook(Hook):
    """`finetune.sparsity` > 0: masks, their constraints and updates, their checkpoints, and the sparsity reached."""

    def __init__(self, config):
        self.config = config
        finetune = config.finetune
        self.target, self.end, self.frequency = finetune.sparsity, finetune.prune_end, finetune.prune_frequency
        self.call = config.runtime.steps_per_execution
        self.kernels: list = []
        self.masks: list = []
        self.end_step = 0

    def after_compile(self, model, context: BuildContext, state) -> None:
        if context.strategy.num_replicas_in_sync > 1:
            raise UserError("pruning runs on one device (its masks are set between steps); set --strategy single")
        self.kernels = prunable(model)
        if not self.kernels:
            raise UserError(f"{context.spec.name} has no kernels to prune")
        self.end_step = max(1, int(self.end * state.schedule_steps))
        with context.strategy.scope():
            self.masks = [keras.Variable(np.ones(tuple(kernel.shape), "float32"), trainable=False, name="pruning_mask")
                          for kernel in self.kernels]
        for kernel, mask in zip(self.kernels, self.masks):
            kernel.constraint = MaskConstraint(mask)

    def callbacks(self) -> list:
        return [PruneCallback(self)]

    def update(self, step: int) -> None:
        """New masks for the sparsity at `step`, applied to the kernels at once."""
        sparsity = sparsity_at(min(step, self.end_step), self.target, self.end_step)
        for kernel, mask in zip(self.kernels, self.masks):
            values = np.asarray(kernel.numpy())
            new = magnitude_mask(values, sparsity)
            mask.assign(new)
            kernel.assign(values * new)

    def may_be_best(self, state) -> bool:
        """Only an epoch that ends at the final sparsity may be kept as the best (an earlier one is denser)."""
        return state.global_step >= self.end_step

    def on_checkpoint_save(self, model, folder: Path) -> None:
        np.savez(Path(folder) / MASKS_FILE, *[mask.numpy() for mask in self.masks])

    def on_checkpoint_restore(self, model, folder: Path) -> None:
        path = Path(folder) / MASKS_FILE
        if not path.is_file():
            raise UserError(f"{folder} has no {MASKS_FILE}, so the pruning cannot resume exactly; start the run again")
        with np.load(path) as saved:
            for index, mask in enumerate(self.masks):
                mask.assign(saved[f"arr_{index}"])

    def summary(self, model) -> dict:
        return {"pruning": {"target_sparsity": self.target, "schedule": f"polynomial (power 3) from 0 to {self.target:g} "
                            f"over the first {self.end:.0%} of the steps, updated every {count(self.frequency, 'step')}"}}

    def results(self, model) -> dict:
        """The sparsity reached, per kernel and in total; the masks are stripped here, before model.keras is written
        (a plain Keras model whose pruned weights are zeros)."""
        for kernel in prunable(model):
            kernel.constraint = None
        return {"sparsity": sparsity_of(model)}


class MaskConstraint:
    """Applied by the optimizer after each update, inside the compiled step: the kernel times its mask."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, weights):
        return weights * self.mask

    def get_config(self) -> dict:  # never saved: the hook strips constraints before the model is written
        return {}


class PruneCallback(keras.callbacks.Callback):
    """Recomputes the masks between calls into the graph, before a checkpoint at that step is written."""

    def __init__(self, hook: PruneHook):
        super().__init__()
        self.hook = hook

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if updates_after(step, self.hook.call, self.hook.frequency, self.hook.end_step):
            self.hook.update(step)


def run(source: Path, sparsity: float, *, epochs: int | None, data: str | None, out: Path | None, overwrite: bool, unsafe: bool,
        **options) -> tuple[Path, dict]:
    """`compress --method prune`: fine-tune the run with `finetune.sparsity`, then measure it against its source.
    `options`: the trainer's (progress, console, command)."""
    if not 0 < sparsity < 1:
        raise UserError("--sparsity must be above 0 and below 1 (0.5 zeroes half of each kernel)")
    found = finetune.resolve_base(str(source))
    compress.check_not_a_copy(source)
    flags = config_lib.flag_overrides({"train.epochs": epochs, "finetune.sparsity": sparsity,  # the source's batch size
                                       "train.batch_size": found.run.config.train.batch_size})
    spec, config = finetune.finetune_config(found, data or found.run.config.data.source, flags, "full", 8, 0)
    run_dir = runner.train_new_run(f"{spec.name}-prune", found, config, out, overwrite, parent=finetune.load_base_model(found, unsafe),
                                   parent_record=found.record(), artifacts=finetune.base_artifacts(found), **options)
    return run_dir, compress.trained_report(source, run_dir, unsafe)
