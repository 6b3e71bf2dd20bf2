"""Whether one step fits in memory: a lower bound on what a batch needs, against what the machine has free.

The bound counts what any implementation must hold: the weights, their gradients and the optimizer's two moments
(training), every tensor that the model's graph passes between its layers, and each attention layer's scores, per
example × the batch, kept for the backward pass and matched by their gradients (training). Temporaries inside a layer
(an LSTM's gates, XLA's buffers) come on top, so a batch refused here would certainly not have fitted; one accepted may
still not. It is checked against host memory when the step runs on CPUs; a GPU's or TPU's memory is left to the device
(TensorFlow and JAX say "out of memory" there themselves).
"""

from __future__ import annotations

import math
from pathlib import Path

from kerasllm.core import compat
from kerasllm.core.errors import UserError

GB = 1024**3


def free_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Memory available now (`MemAvailable`), capped by a container's cgroup limit less its use; None where unknown."""
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    for limit_file, usage_file in (("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit, usage = (cgroup / limit_file).read_text().strip(), (cgroup / usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:
            free = min(free, max(int(limit) - int(usage), 0))
        break
    return free


def _elements(shape, length: int) -> int:
    """Elements per example of a tensor shape whose first axis is the batch; an unknown axis is taken as `length`."""
    return math.prod(d if isinstance(d, int) else length for d in list(shape)[1:])


def _outputs(layer) -> list:
    try:
        output = layer.output  # set only for layers called in a functional graph
    except (AttributeError, ValueError):
        return []
    return output if isinstance(output, (list, tuple)) else list(output.values()) if isinstance(output, dict) else [output]


def example_length(element_spec) -> int:
    """Tokens per row: the shortest second axis of a batch's inputs (a seq2seq target may be shorter than its source, and
    the bound stays a lower one), from a dataset's `element_spec`; 1 for none."""
    inputs = element_spec[0] if isinstance(element_spec, tuple) else element_spec
    specs = list(inputs.values()) if isinstance(inputs, dict) else list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    return min([s.shape[1] for s in specs if len(s.shape) > 1 and s.shape[1] is not None] or [1])


def activations_per_example(model, length: int) -> int:
    """Elements per example passed between the graph's layers, plus each attention layer's scores (heads × T × T) and
    what a Transformer block keeps inside itself (`block_internals`); `length` stands in for an axis the model leaves
    open (a sequence's)."""
    import keras

    total = 0
    for layer in compat.nested_layers(model)[1:]:
        if not isinstance(layer, keras.Model):  # a nested model's outputs are its last layer's, counted there
            total += sum(_elements(output.shape, length) for output in _outputs(layer) if hasattr(output, "shape"))
            total += block_internals(layer, length)
        if _heads(layer) and not any(_heads(inner) for inner in compat.nested_layers(layer)[1:]):  # innermost attention
            total += _heads(layer) * length * length
    return total


def block_internals(layer, length: int) -> int:
    """Elements per example a Transformer block (heads and an `intermediate_dim`: the zoo's DecoderBlock, keras-hub's
    encoder and decoder blocks) keeps inside itself for the backward pass: its two normalised inputs, the query, key
    and value, the attention's output, and the MLP's activations before and after GELU, per token 6 × hidden + 2 ×
    intermediate (as Korthikanti et al. 2022 count them, less dropout masks). Without these the bound for the `small`
    transformer-lm was 840 MB of activations where the run held over 2 GB."""
    intermediate, outputs = getattr(layer, "intermediate_dim", None), _outputs(layer)
    if not (_heads(layer) and isinstance(intermediate, int) and outputs and hasattr(outputs[0], "shape")):
        return 0
    shape = list(outputs[0].shape)
    tokens = shape[1] if isinstance(shape[1], int) else length
    return tokens * (6 * int(shape[-1]) + 2 * intermediate)


def _heads(layer) -> int:
    """Attention heads of an attention layer (Keras' MultiHeadAttention, keras-hub's blocks, the zoo's DecoderBlock)."""
    heads = getattr(layer, "num_heads", None)
    return heads if isinstance(heads, int) and not isinstance(heads, bool) else 0


def step_bytes(model, length: int, training: bool) -> tuple[int, int]:
    """(bytes for the weights and, training, their gradients and two optimizer moments; bytes per example of `length`
    tokens)."""
    dtype_bytes = 2 if "16" in str(getattr(model.dtype_policy, "compute_dtype", "float32")) else 4
    fixed = model.count_params() * 4 * (4 if training else 1)
    per_example = activations_per_example(model, length) * dtype_bytes * (2 if training else 1)
    return fixed, per_example


def check_batch(model, batch: int, length: int, *, training: bool, setting: str, replicas: int = 1, on_cpu: bool = True,
                free: int | None = None) -> None:
    """Refuse, in one line, a batch whose step cannot fit in the memory free now (see the module's docstring)."""
    if not on_cpu:
        return
    free = free_bytes() if free is None else free
    if free is None:
        return
    fixed, per_example = step_bytes(model, length, training)
    need = fixed + per_example * batch
    if need <= free or not per_example:
        return
    fits = max((free - fixed) // per_example, 0) // replicas
    step = "training step" if training else "evaluation step"
    advice = (f"at most {fits:,}{' per replica' if replicas > 1 else ''} can fit, fewer in practice (the layers' "
              f"temporaries come on top): lower {setting}" if fits
              else "the model alone does not fit; use a smaller preset or --set model_args.*")
    raise UserError(f"{setting} {batch // replicas if replicas > 1 else batch} needs at least {need / GB:,.1f} GB for one "
                    f"{step} ({batch:,} examples × {per_example / 1024**2:,.1f} MB of activations, and the weights), more than the "
                    f"{free / GB:,.1f} GB free; {advice}")
