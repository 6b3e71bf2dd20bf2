"""Magnitude pruning while fine-tuning, as a trainer hook (`finetune.sparsity`; `kerasllm compress --method prune`).

Keras 3 has no pruning, and `tensorflow-model-optimization` wraps tf.keras 2 layers only, so this is written here.
Each kernel of the model (Dense, EinsumDense, convolutions, LSTM kernels; not biases, norms or embeddings) gets a
mask and a Keras constraint. The optimizer applies constraints after every step, inside the compiled step, so the
mask multiplies the kernel after every update. On the schedule's update steps the constraint first recomputes the
mask: the smallest-magnitude weights, a share s(t) of the kernel, are set to zero, where s follows TF-MOT's
polynomial decay from 0 at the first step to `sparsity` at `prune_end` × the run's steps (power 3), updated every
`prune_frequency` steps. The rest of the run fine-tunes at the final sparsity. Masks go into every checkpoint (exact
resume) and are stripped at the end: the saved model is a plain Keras model whose pruned weights are zeros.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm import compat
from kerasllm.errors import UserError
from kerasllm.hooks import BuildContext, Hook

# Lazy imports: Keras loads inside functions (`kerasllm --help` and `kerasllm list` import the hooks' modules).

MASKS_FILE = "pruning_masks.npz"
PRUNED = ("kernel", "recurrent_kernel", "depthwise_kernel")


def sparsity_at(step, target: float, end_step: int, power: float = 3.0):
    """TF-MOT's polynomial decay: 0 at step 0, `target` from `end_step` on (works on numbers and tensors)."""
    import keras

    progress = keras.ops.minimum(keras.ops.cast(step, "float32") / float(max(end_step, 1)), 1.0)
    return target * (1.0 - (1.0 - progress) ** power)


def magnitude_mask(weights, sparsity):
    """1 for the weights kept, 0 for the `sparsity` share with the smallest magnitude."""
    import keras

    ops = keras.ops
    magnitudes = ops.reshape(ops.abs(weights), (-1,))
    count = ops.cast(ops.floor(ops.cast(ops.size(magnitudes), "float32") * sparsity), "int32")
    ranked = ops.sort(magnitudes)
    threshold = ops.where(count > 0, ranked[ops.maximum(count - 1, 0)], -1.0)
    return ops.cast(ops.abs(weights) > threshold, weights.dtype)


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
    """`finetune.sparsity` > 0: masks, their constraints, their checkpoints, and the sparsity reached."""

    def __init__(self, config):
        self.config = config
        finetune = config.finetune
        self.target, self.end, self.frequency = finetune.sparsity, finetune.prune_end, finetune.prune_frequency
        self.masks: list = []
        self.end_step = 0

    def after_compile(self, model, context: BuildContext, state) -> None:
        import keras

        if context.strategy.num_replicas_in_sync > 1:
            raise UserError("pruning runs on one device (its masks are recomputed inside the step); set --strategy single")
        if keras.backend.backend() != "tensorflow":
            raise UserError("pruning runs on the TensorFlow backend (its masks are updated inside the compiled step); drop --backend")
        kernels = prunable(model)
        if not kernels:
            raise UserError(f"{context.spec.name} has no kernels to prune")
        end_step = self.end_step = max(1, int(self.end * state.schedule_steps))
        iterations, target, frequency = model.optimizer.iterations, self.target, self.frequency
        with context.strategy.scope():
            self.masks = [keras.Variable(np.ones(tuple(kernel.shape), "float32"), trainable=False, name="pruning_mask")
                          for kernel in kernels]
        for kernel, mask in zip(kernels, self.masks):
            kernel.constraint = MaskConstraint(mask, iterations, target, end_step, frequency)

    def may_be_best(self, state) -> bool:
        """Only an epoch that ends at the final sparsity may be kept as the best (an earlier one is denser)."""
        return state.global_step > self.end_step

    def on_checkpoint_save(self, model, folder: Path) -> None:
        np.savez(Path(folder) / MASKS_FILE, *[mask.numpy() for mask in self.masks])

    def on_checkpoint_restore(self, model, folder: Path) -> None:
        path = Path(folder) / MASKS_FILE
        if not path.is_file():
            raise UserError(f"{folder} has no {MASKS_FILE}, so the pruning cannot resume exactly; start the run again")
        with np.load(path) as saved:
            for index, mask in enumerate(self.masks):
                mask.assign(saved[f"arr_{index}"])

    def results(self, model) -> dict:
        """The sparsity reached, per kernel and in total; the masks are stripped here, before model.keras is written
        (a plain Keras model whose pruned weights are zeros)."""
        for kernel in prunable(model):
            kernel.constraint = None
        return {"sparsity": sparsity_of(model)}

    def summary(self, model) -> dict:
        return {"pruning": {"target_sparsity": self.target, "schedule": f"polynomial (power 3) from 0 to {self.target:g} "
                            f"over the first {self.end:.0%} of the steps, updated every {self.frequency} steps"}}


class MaskConstraint:
    """Applied by the optimizer after each update: on the schedule's update steps the mask is recomputed from the
    magnitudes, then the kernel is multiplied by it."""

    def __init__(self, mask, iterations, target: float, end_step: int, frequency: int):
        self.mask, self.iterations, self.target, self.end_step, self.frequency = mask, iterations, target, end_step, frequency

    def __call__(self, weights):
        import keras

        ops = keras.ops
        step = ops.cast(self.iterations, "int32")  # the step just applied (the counter moves after the constraints)
        update = ops.logical_and(step <= self.end_step, ops.logical_or(ops.equal(step % self.frequency, 0), ops.equal(step, self.end_step)))
        mask = ops.cond(update, lambda: magnitude_mask(weights, sparsity_at(step, self.target, self.end_step)), lambda: self.mask)
        self.mask.assign(mask)
        return weights * mask

    def get_config(self) -> dict:  # never saved: the hook strips constraints before the model is written
        return {}
