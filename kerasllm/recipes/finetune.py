"""Fine-tuning: start a run from a base model and train all of it, only a new head, or low-rank adapters.

Bases: a kerasllm run folder (or a model file inside one), or a keras-hub preset (a local
folder or a `kaggle://` / `hf://` handle, `kerasllm.hub`). The run inherits the base's
architecture and tokenizer; a base trained for another task (masked-LM pretraining, other
labels) gets a fresh head (`ModelSpec.head_layers`).

Methods (`finetune.method`):

* `full` — every weight trains.
* `freeze` — the base's layers are frozen, only the head trains; with
  `finetune.unfreeze_after=N` the whole model trains from epoch N+1 on, with a fresh
  optimizer at `unfreeze_learning_rate_ratio` × the learning rate.
* `lora` — Keras `enable_lora(rank)` on the attention's query and value projections of
  the base (the fused query/key/value projection in transformer-lm's blocks); those
  adapters and the head train, nothing else. `model.keras` is the merged model (Keras
  merges the adapters into the kernels when it saves: it loads as a plain model);
  `adapter.npz` holds only what trained (adapters + head), and `apply_adapter`
  puts it onto a freshly built model of the same base.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kerasllm import catalog, hub, runs
from kerasllm.core import compat
from kerasllm.core import config as config_lib
from kerasllm.core.errors import UserError
from kerasllm.core.files import file_sha256, is_run_dir, portable
from kerasllm.core.words import a
from kerasllm.export.saving import load_model, model_path, quantization_modes
from kerasllm.recipes import runner
from kerasllm.train.hooks import BuildContext, Hook

# Lazy imports: Keras is imported inside functions: `kerasllm --help` and `kerasllm list` load this module and must
# not load them.

# keras MultiHeadAttention's projections, as the LoRA paper adapts Wq and Wv; zoo/layers.py's DecoderBlock projects
# queries, keys and values with one Dense, `qkv`, adapted whole (as PEFT adapts GPT-2's fused c_attn)
LORA_TARGETS = ("query", "value", "qkv")
ADAPTER_FILE = "adapter.npz"
INHERITED_DATA_KEYS = ("tokenizer", "vocab_size")


# --- the base ------------------------------------------------------------------------------

@dataclass
class Base:
    """What a fine-tuning run starts from."""

    source: str  # a run folder (absolute) or a preset folder / handle
    kind: str  # "run" or "preset"
    sha256: str
    run: object | None = None  # kerasllm.runs.Run for run bases

    def record(self) -> dict:
        record = {"path": self.source, "kind": self.kind, "sha256": self.sha256}
        if self.run is not None:
            record.update(model=self.run.spec.name, task=self.run.task.name,
                          class_names=getattr(self.run.artifacts.get("labels"), "class_names", None))
        return record


def resolve_base(base: str) -> Base:
    """A run folder, a model file inside one, or a keras-hub preset (a folder, a handle, or a bare preset name such as
    `bert_tiny_en_uncased`, which becomes its kaggle:// handle); anything else is a one-line error."""
    base = hub.named_handle(base) or base
    if hub.is_preset(base):
        source = base if base.startswith(hub.SCHEMES) else str(Path(base).expanduser().resolve())
        return Base(source, "preset", hub.preset_sha256(source))
    path = Path(base).expanduser()
    if not path.exists():
        raise UserError(f"base {base} does not exist; pass a run folder, a .keras/.h5 file inside one, or a keras-hub preset "
                        "(a local folder, kaggle://… or hf://…)")
    run_dir = path if path.is_dir() else path.parent
    if not is_run_dir(run_dir):
        what = "folder" if path.is_dir() else "model file"
        raise UserError(f"{base} is a {what} without a kerasllm run around it (no config.yaml, tokenizer or labels); pass the run "
                        "folder it came from, or a keras-hub preset folder written with save_to_preset")
    model_file = model_path(path)
    run = runs.load_run(run_dir)
    return Base(str(model_file.resolve()), "run", file_sha256(model_file), run)


PRESET_FAMILIES = {"chat": "hub-causal-lm", "text-classification": "hub-classifier"}


def preset_family(task: str | None) -> str:
    """The model a keras-hub preset is fine-tuned into for `--task` (a classifier without one)."""
    if task is None:
        return "hub-classifier"
    if task not in PRESET_FAMILIES:
        raise UserError(f"a keras-hub preset fine-tunes for {' or '.join(PRESET_FAMILIES)}, not {task}; drop --task for "
                        "classification, or pass --task chat")
    return PRESET_FAMILIES[task]


def finetune_config(base: Base, data: str | None, overrides: list[str], method: str, lora_rank: int, unfreeze_after: int,
                    task: str | None = None):
    """The new run's spec and config: the base's architecture and tokenizer, the model's fine-tuning recipe, the user's
    settings. A preset base becomes `hub-causal-lm` for `task` chat, else `hub-classifier`."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key.startswith(("model_args.", "model.")) and not key.endswith((".dropout", ".pooling")):
            raise UserError(f"--set {key} would change the base's architecture; only dropout and pooling may change when fine-tuning")
        if key in (f"data.{name}" for name in INHERITED_DATA_KEYS):
            raise UserError(f"--set {key}: the tokenizer is inherited from the base; drop it (or train a new model with `kerasllm train`)")
    if base.kind == "preset":
        spec = catalog.model(preset_family(task))
        saved = {"model_args": {"preset": base.source}}
    else:
        spec = base.run.spec
        parent = base.run.config  # a masked-LM base fine-tunes for the model's own task (objective ""), with a new head
        saved = {"model_args": dict(vars(parent.model_args)),
                 "data": {key: getattr(parent.data, key) for key in (*INHERITED_DATA_KEYS, "sequence_length")},
                 "runtime": dict(vars(parent.runtime)),
                 # the base's task settings (seq2seq languages and lengths, class weights) where the model still has them
                 **{name: dict(vars(section)) for name, section in parent.sections.items() if name in spec.sections}}
    flags = [f"finetune.method={method}", f"finetune.lora_rank={lora_rank}", f"finetune.unfreeze_after={unfreeze_after}",
             f"finetune.base={base.source}", f"finetune.base_sha256={base.sha256}"]
    if data is not None:
        flags.append(f"data.source={data}")
    config = config_lib.resolve(spec, overrides=[*overrides, *flags], inherited=saved)
    if method == "freeze" and not spec.head_layers:
        raise UserError(f"{spec.name} has no head to train alone (its output layer is tied to its embedding); use --method full or lora")
    if unfreeze_after and method != "freeze":
        raise UserError("--unfreeze-after applies to --method freeze only")
    if unfreeze_after >= config.train.epochs:
        raise UserError(f"--unfreeze-after {unfreeze_after} leaves no epoch for the whole model (train.epochs={config.train.epochs}); "
                        "raise --epochs or lower --unfreeze-after")
    return spec, config


def run(base: Base, config, run_dir: Path, unsafe: bool, **options) -> dict:
    """Fine-tune `base` into `run_dir`: its weights (a run base), its tokenizer, and the fine-tuning hook through the
    trainer. `options`: the trainer's (overwrite, progress, console, command, on_built)."""
    return runner.train(config, run_dir, parent=load_base_model(base, unsafe), parent_record=base.record(),
                        artifacts=base_artifacts(base), **options)


def load_base_model(base: Base, unsafe: bool):
    """The base's Keras model (run bases); a preset's backbone is loaded by the `hub-classifier` builder itself."""
    if base.kind != "run":
        return None
    model = load_model(Path(base.source), unsafe=unsafe)
    modes = quantization_modes(model)
    if modes:  # its int8/int4 kernels do not take gradients, and they would not fit a float model's layers
        raise UserError(f"{base.source} holds quantized layers ({', '.join(modes)}), which fine-tuning cannot train; "
                        "fine-tune the run it was compressed from, then compress the result")
    return model


def base_artifacts(base: Base) -> dict:
    """What the new run inherits: a text model's tokenizer. An image model inherits nothing: its size and channels are
    in its model_args, and its classes are read from the new data (a new head where they differ)."""
    if base.kind == "preset":
            return {"tokenizer": hub.load_tokenizer(base.source)}
    tokenizer = base.run.artifacts.get("tokenizer")
    if tokenizer is None and "labels" in base.run.artifacts and base.run.spec.task == "image-classification":
        return {}
    if tokenizer is None:
        raise UserError(f"{base.source} is {a(base.run.spec.task)} model and `kerasllm finetune` takes text and image "
                        f"models; continue it with `kerasllm train --resume {base.run.path} --epochs N` or train a new model")
    return {"tokenizer": tokenizer}


def transfer_weights(parent, model, fresh: tuple = ()) -> tuple[list[str], list[str]]:
    """Copy the weights of `parent`'s layers into `model`'s layers of the same name and shapes.

    Returns (copied, skipped) layer names: a new head for another task (or named in `fresh`) is
    skipped and keeps its fresh initialisation.
    """
    parents = {layer.name: layer for layer in parent.layers}
    copied, skipped = [], []
    for layer in model.layers:
        source = parents.get(layer.name)
        if source is None or not layer.weights:
            continue
        if layer.name in fresh:
            skipped.append(layer.name)
            continue
        if [tuple(w.shape) for w in source.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(source.get_weights())
            copied.append(layer.name)
        elif grows_rows(source, layer):
            layer.set_weights([grown(old, new) for old, new in zip(source.get_weights(), layer.get_weights())])
            copied.append(layer.name)
        else:
            skipped.append(layer.name)
    return copied, skipped


def grows_rows(source, layer) -> bool:
    """`layer` is the same embedding as `source` with more rows (a vocabulary that gained special tokens: `--task chat`)."""
    import keras

    if not isinstance(layer, keras.layers.Embedding) or len(source.weights) != len(layer.weights):
        return False
    return all(tuple(a.shape[1:]) == tuple(b.shape[1:]) and a.shape[0] <= b.shape[0] for a, b in zip(source.weights, layer.weights))


def grown(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """`old`'s rows, then as many more as `new` has, each the mean of the old rows (a neutral start for new tokens)."""
    return np.concatenate([old, np.repeat(old.mean(axis=0, keepdims=True), new.shape[0] - old.shape[0], axis=0)]).astype(old.dtype)


# --- methods -------------------------------------------------------------------------------

def leaf_layers(layer):
    """`layer` and every layer inside it that owns variables directly."""
    return [sub for sub in compat.nested_layers(layer) if compat.owns_variables(sub)]


def base_layers(model, spec) -> list:
    """Every top-level layer with weights that is not one of the spec's head layers."""
    return [layer for layer in model.layers if layer.weights and layer.name not in spec.head_layers]


def freeze(model, spec) -> None:
    for layer in base_layers(model, spec):
        layer.trainable = False


def unfreeze(model) -> None:
    for layer in model.layers:
        layer.trainable = True


def lora_targets(model, spec) -> list:
    """The layers LoRA adapts: the base's attention query/value (or fused qkv) projections."""
    return [sub for layer in base_layers(model, spec) for sub in leaf_layers(layer)
            if sub.name in LORA_TARGETS and hasattr(sub, "enable_lora")]


def check_lora_rank(targets: list, rank: int) -> None:
    """A rank above the adapted matrices' smaller side adds parameters and no expressiveness (the update is full rank
    already); `--lora-rank 100000` on a 16-wide model once made 99.93 % of the weights trainable."""
    # Keras' adapters are A (all axes but the last, rank) and B (rank, last axis): Dense (in, out), keras-hub's
    # per-head EinsumDense kernels (heads, hidden, head_dim)
    widths = [min(int(np.prod(sub.kernel.shape[:-1])), int(sub.kernel.shape[-1])) for sub in targets]
    if widths and rank > min(widths):
        raise UserError(f"--lora-rank {rank} is more than the model's width at the adapted projections ({min(widths)}); use a "
                        f"rank of at most {min(widths)} (4-16 is usual)")


def enable_lora(model, spec, rank: int, alpha: float = 0.0) -> int:
    """Adapters on the base's attention query/value projections; everything else in the base frozen. Returns how many."""
    check_lora_rank(lora_targets(model, spec), rank)
    adapted = 0
    for layer in base_layers(model, spec):
        for sub in leaf_layers(layer):
            if sub.name in LORA_TARGETS and hasattr(sub, "enable_lora"):
                if not getattr(sub, "lora_enabled", False):
                    sub.enable_lora(rank, lora_alpha=alpha or None)
                for variable in sub.weights:
                    variable.trainable = variable.name.startswith("lora_kernel")
                adapted += 1
            else:
                sub.trainable = False
    if not adapted:
        raise UserError(f"{spec.name} has no attention layers for LoRA adapters; use --method freeze or full")
    return adapted


def apply_method(model, config, spec) -> None:
    """Set what trains, as `config.finetune` says (called before compiling)."""
    method = config.finetune.method
    if method == "freeze":
        freeze(model, spec)
    elif method == "lora":
        enable_lora(model, spec, config.finetune.lora_rank, config.finetune.lora_alpha)


def uses_lora(model) -> bool:
    return any(getattr(sub, "lora_enabled", False) for layer in model.layers for sub in leaf_layers(layer))


# --- adapters ------------------------------------------------------------------------------

def save_adapter(model, path: Path, meta: dict | None = None) -> Path:
    """What trained (LoRA adapters and the head), by variable path, plus `meta` (rank, base)."""
    arrays = {variable.path: np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
              for variable in model.trainable_weights}
    path = Path(path)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, __meta__=np.asarray(json.dumps(meta or {})), **arrays)
    partial.replace(path)
    return path


def apply_adapter(model, path: Path) -> dict:
    """Load an adapter file into a model built the same way (LoRA enabled); returns its metadata."""
    import keras

    with np.load(path) as saved:
        meta = json.loads(str(saved["__meta__"]))
        variables = {variable.path: variable for variable in model.weights}
        missing = [key for key in saved.files if key != "__meta__" and key not in variables]
        if missing:
            raise UserError(f"{path} does not fit this model (no variable {missing[0]}); apply it to the base it was trained from")
        for key in saved.files:
            if key != "__meta__":
                variables[key].assign(keras.ops.convert_to_tensor(saved[key]))
    return meta


def restore_lora(model, adapter: Path) -> None:
    """After `load_weights` (which loads merged kernels and zeroes the adapters): un-merge and put the adapters back."""
    import keras

    with np.load(adapter) as saved:
        values = {key: saved[key] for key in saved.files if key != "__meta__"}
    for layer in model.layers:
        for sub in leaf_layers(layer):
            if not getattr(sub, "lora_enabled", False):
                continue
            a, b = values[sub.lora_kernel_a.path], values[sub.lora_kernel_b.path]
            delta = (sub.lora_alpha / sub.lora_rank) * (a @ b)
            base = compat.lora_base_kernel(sub)
            kernel = keras.ops.convert_to_numpy(base)
            base.assign(kernel - delta.reshape(kernel.shape))
            sub.lora_kernel_a.assign(a)
            sub.lora_kernel_b.assign(b)
    for variable in model.trainable_weights:  # the head
        if variable.path in values and "lora_kernel" not in variable.path:
            variable.assign(values[variable.path])


# --- the trainer hook ----------------------------------------------------------------------

class FinetuneHook(Hook):
    """Fine-tuning inside the shared trainer: the parent's weights, `finetune.method` (freeze / LoRA), unfreezing after
    `finetune.unfreeze_after` epochs with a fresh optimizer, and LoRA adapters kept apart in checkpoints and the run.

    Args:
        config: the run's config (`config.finetune` says what to do).
        parent: the base's Keras model on a new run (None on resume: the checkpoint has the weights).
        parent_record: what to record about the base (path, sha256, task, class names).
    """

    def __init__(self, config, parent=None, parent_record: dict | None = None):
        self.config, self.parent, self.parent_record = config, parent, parent_record
        finetune = config.finetune
        self.unfreeze_epoch = finetune.unfreeze_after if finetune.method == "freeze" else 0
        self.transferred: tuple[list[str], list[str]] | None = None
        self.unfrozen = False
        self.steps_per_epoch, self.head_layers = 0, ()

    # build
    def before_compile(self, model, context: BuildContext) -> None:
        self.steps_per_epoch, self.head_layers = context.data.steps_per_epoch, context.spec.head_layers
        if self.parent is not None:
            record = self.parent_record or {}
            same_head = record.get("task") == context.task.name and record.get("class_names") == context.data.record.get("class_names")
            self.transferred = transfer_weights(self.parent, model, () if same_head else context.spec.head_layers)
        apply_method(model, self.config, context.spec)

    def after_compile(self, model, context: BuildContext, state) -> None:
        if self.unfreeze_epoch and state.epoch >= self.unfreeze_epoch:  # resumed past the unfreezing epoch
            self._unfreeze(model, context)

    def _unfreeze(self, model, context: BuildContext) -> None:
        train = self.config.train
        after = dataclasses.replace(train, learning_rate=train.learning_rate * self.config.finetune.unfreeze_learning_rate_ratio)
        with context.strategy.scope():
            unfreeze(model)
            context.recompile((train.epochs - self.unfreeze_epoch) * self.steps_per_epoch, after)
        self.unfrozen = True
        context.announce(f"epoch {self.unfreeze_epoch + 1}: the whole model trains from here (--unfreeze-after "
                         f"{self.config.finetune.unfreeze_after}), at learning rate {after.learning_rate:g}")

    # restore
    def restores_optimizer(self, state) -> bool:
        """A checkpoint written at the unfreezing epoch's end holds the replaced optimizer's variables."""
        return not (self.unfreeze_epoch and state.epoch == self.unfreeze_epoch and not state.step_in_epoch)

    def step_offset(self, state) -> int:
        """Steps counted by the optimizer that unfreezing replaced (the new one counts from 0)."""
        return self.unfreeze_epoch * self.steps_per_epoch if self.unfreeze_epoch and state.epoch >= self.unfreeze_epoch else 0

    # loop
    def split_phases(self, phases: list[tuple]) -> list[tuple]:
        """Phases (first epoch, last epoch, steps, skip) cut at the unfreezing epoch."""
        if not self.unfreeze_epoch:
            return phases
        cut = []
        for first, last, steps, skip in phases:
            if first < self.unfreeze_epoch < last:
                cut += [(first, self.unfreeze_epoch, steps, skip), (self.unfreeze_epoch, last, steps, 0)]
            else:
                cut.append((first, last, steps, skip))
        return cut

    def start_phase(self, model, first_epoch: int, context: BuildContext) -> bool:
        if self.unfreeze_epoch and first_epoch == self.unfreeze_epoch and not self.unfrozen:
            self._unfreeze(model, context)
            return True
        return False

    # files
    def on_checkpoint_save(self, model, folder: Path) -> None:
        if uses_lora(model):  # save_weights merges LoRA adapters into kernels: keep them apart too
            save_adapter(model, folder / ADAPTER_FILE)

    def on_checkpoint_restore(self, model, folder: Path) -> None:
        if uses_lora(model):
            restore_lora(model, folder / ADAPTER_FILE)

    def summary(self, model) -> dict:
        if not self.parent_record:
            return {}
        copied, new = self.transferred if self.transferred else ([], list(self.head_layers))
        return {"parent": dict(self.parent_record, layers_copied=len(copied), layers_new=new)}

    def finalize(self, model, run_dir: Path) -> None:
        if uses_lora(model):
            finetune = self.config.finetune
            save_adapter(model, Path(run_dir) / ADAPTER_FILE, {"base": portable(finetune.base, run_dir), "base_sha256": finetune.base_sha256,
                                                               "rank": finetune.lora_rank, "model": self.config.model})
