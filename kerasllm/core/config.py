"""Typed run configuration: builder defaults ← preset ← config file ← `--set key=value`.

A run's config has five parts, saved as `config.yaml` in the run folder:

    model: lstm-textgen          # registry name
    model_args: {...}            # the builder's hyperparameter dataclass
    data: {...}                  # DataConfig
    train: {...}                 # TrainConfig
    runtime: {...}               # RuntimeConfig

Overrides name a key as `section.field` (`train.epochs=3`, `model_args.units=128`);
a bare field name is accepted when exactly one section has it. Values are parsed
as YAML scalars or lists and must match the field's type.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kerasllm.core import files
from kerasllm.core.errors import UserError
from kerasllm.core.files import absent
from kerasllm.core.validation import validate

TEXT_TASKS = ("text-generation", "text-classification", "masked-lm", "seq2seq", "chat")


def doc(help_text: str, tasks: tuple = (), internal: bool = False) -> dict:
    """Field metadata with its help text (shown by `kerasllm info`): `tasks`, the only tasks that read the key (none:
    every task); `internal`, a key kerasllm writes itself (a fine-tuning run's base), which `info` does not list."""
    return {"help": help_text, "tasks": tasks, "internal": internal}


def applies(cls, name: str, tasks: set) -> bool:
    """Whether the field `name` of config dataclass `cls` is one a model of `tasks` reads and a user sets."""
    metadata = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return not metadata.get("internal") and (not metadata.get("tasks") or bool(set(metadata["tasks"]) & tasks))


@dataclass
class DataConfig:
    source: str = field(default="", metadata=doc(
        "Data to train on: a file, a folder, `tfds:NAME` or `builtin:NAME` (images: a class folder, MNIST IDX folder or .npz); "
        "defaults to the model's default data."))
    validation_fraction: float = field(default=0.1, metadata=doc(
        "Fraction held out for validation (the end of a text), when the source has no validation split."))
    sequence_length: int = field(default=100, metadata=doc("Tokens per training window (text models).", TEXT_TASKS))
    windows: str = field(default="sequential", metadata=doc(
        "Training windows (text models): `sequential` (non-overlapping, shuffled each epoch) or `random` (each batch "
        "starts at random offsets, as nanoGPT samples).", ("text-generation",)))
    text_column: str = field(default="", metadata=doc(
        "Labelled text (CSV/TSV/JSONL): the text column; two names joined by a comma (`premise,hypothesis`) make sentence "
        "pairs; empty: `text`, `sentence` or the only text column.", ("text-classification",)))
    label_column: str = field(default="label", metadata=doc("Labelled text (CSV/TSV/JSONL): the label column.", ("text-classification",)))
    tokenizer: str = field(default="char", metadata=doc("Text tokenizer: `char`, `word`, `wordpiece` or `sentencepiece` (fitted on the training split).",
                                                        TEXT_TASKS))
    vocab_size: int = field(default=20000, metadata=doc(
        "Largest vocabulary, special tokens included (char/word keep the most frequent tokens; wordpiece/sentencepiece learn about this many).",
        TEXT_TASKS))


@dataclass
class TrainConfig:
    epochs: int = field(default=10, metadata=doc("Passes over the training data."))
    batch_size: int = field(default=64, metadata=doc("Examples per step on each replica (the global batch is this × replicas)."))
    steps_per_epoch: int = field(default=0, metadata=doc("Steps per epoch; 0 means one full pass over the training data."))
    validation_steps: int = field(default=0, metadata=doc(
        "Validation batches after each epoch; 0 means the whole validation split (the final metrics always use all of it)."))
    optimizer: str = field(default="adamw", metadata=doc("`adamw`, `adam` or `sgd`."))
    learning_rate: float = field(default=3e-3, metadata=doc("Peak learning rate."))
    weight_decay: float = field(default=0.01, metadata=doc("Decoupled weight decay (adamw only)."))
    decay_all_weights: bool = field(default=True, metadata=doc(
        "AdamW decays every weight; false exempts biases and normalisation scales/offsets (GPT-2 and nanoGPT do)."))
    beta_1: float = field(default=0.9, metadata=doc("Adam(W) first-moment decay."))
    beta_2: float = field(default=0.999, metadata=doc("Adam(W) second-moment decay."))
    momentum: float = field(default=0.9, metadata=doc("Momentum (sgd only)."))
    schedule: str = field(default="cosine", metadata=doc("`cosine` (linear warmup, then cosine decay) or `constant`."))
    warmup_steps: int = field(default=50, metadata=doc("Linear warmup steps before the cosine decay."))
    min_learning_rate_ratio: float = field(default=0.1, metadata=doc("Cosine decay ends at this fraction of the peak rate."))
    clip_norm: float = field(default=1.0, metadata=doc("Clip each step's global gradient norm to this; 0 disables."))
    monitor: str = field(default="val_loss", metadata=doc(
        "What picks the best epoch (kept in model.keras) and drives early stopping: `val_loss` (lower is better) or "
        "`val_accuracy` (higher is better)."))
    early_stopping_patience: int = field(default=3, metadata=doc("Stop after this many epochs without a lower validation loss; 0 disables."))
    checkpoint_every_steps: int = field(default=0, metadata=doc("Also checkpoint every N steps; 0 means once per epoch only."))
    seed: int = field(default=1337, metadata=doc("Seed for weights, shuffling and dropout."))
    sample_length: int = field(default=200, metadata=doc("Tokens of text sampled after each epoch (text generation); 0 disables."))
    keep_checkpoints: int = field(default=3, metadata=doc("Checkpoints kept: the newest K plus the best; 0 keeps all."))
    objective: str = field(default="", metadata=doc(
        "What to train for: empty is the model's own task; `mlm` pretrains transformer-classifier with masked-LM on unlabelled text."))
    max_seconds: float = field(default=0.0, metadata=doc(
        "Stop training after this many seconds (checked after each step; the epoch then ends early); 0 means no limit."))


@dataclass
class RuntimeConfig:
    strategy: str = field(default="auto", metadata=doc(
        "Distribution: `auto` (a TPU, else TF_CONFIG's workers, else all GPUs, else the CPU), `cpu`, `gpu`, `mirrored` (all local "
        "devices), `tpu` or `multi-worker`. train.batch_size is per replica."))
    loop: str = field(default="auto", metadata=doc(
        "Training loop: `auto` (`fit`, or `custom` where fit cannot run: multi-worker, TPU, XLA over several devices), "
        "`fit` (Keras) or `custom` (a `strategy.run` step, TensorFlow only)."))
    precision: str = field(default="float32", metadata=doc(
        "`float32`, `mixed_bfloat16` (TPUs, CPUs with AVX-512-BF16) or `mixed_float16` (GPUs; with loss scaling). Logits and "
        "loss stay float32."))
    worker_timeout: float = field(default=120.0, metadata=doc(
        "Multi-worker: seconds a collective waits for the other workers before the job fails (a dead worker ends it "
        "instead of hanging it); 0 waits forever."))
    jit_compile: bool = field(default=False, metadata=doc("Compile train steps with XLA."))
    steps_per_execution: int = field(default=1, metadata=doc("Train steps run per call into the graph."))
    deterministic: bool = field(default=False, metadata=doc("Enable TensorFlow op determinism (slower; for exact repeats)."))


@dataclass
class FinetuneConfig:
    base: str = field(default="", metadata=doc(
        "The model this run starts from (set by `kerasllm finetune`): a run folder, a .keras/.h5 file or a keras-hub preset.",
        internal=True))
    base_sha256: str = field(default="", metadata=doc("sha256 of the base's model file (lineage; empty for presets).", internal=True))
    method: str = field(default="full", metadata=doc(
        "`full` (every weight trains), `freeze` (only the new head trains) or `lora` (low-rank adapters in the attention "
        "layers and the head train)."))
    lora_rank: int = field(default=8, metadata=doc("Rank of the LoRA adapters."))
    lora_alpha: float = field(default=0.0, metadata=doc("LoRA scale numerator (the update is scaled by alpha / rank); 0 means alpha = rank."))
    unfreeze_after: int = field(default=0, metadata=doc(
        "With method `freeze`: after this many epochs the whole model trains (0: never)."))
    unfreeze_learning_rate_ratio: float = field(default=0.1, metadata=doc(
        "Once unfrozen, the learning rate is this fraction of train.learning_rate."))
    sparsity: float = field(default=0.0, metadata=doc(
        "Magnitude pruning while fine-tuning: the share of each kernel's weights set to zero by the end (0: off)."))
    prune_end: float = field(default=0.75, metadata=doc(
        "Pruning reaches finetune.sparsity after this share of the run's steps; the rest fine-tunes at it."))
    prune_frequency: int = field(default=10, metadata=doc("Pruning masks are recomputed every this many steps."))
    teacher: str = field(default="", metadata=doc(
        "Distillation (set by `kerasllm compress RUN --method distill`): the teacher's model file; the run trains a student "
        "to match its outputs.", internal=True))
    teacher_sha256: str = field(default="", metadata=doc("sha256 of the teacher's model file (lineage).", internal=True))
    distill_temperature: float = field(default=2.0, metadata=doc(
        "Distillation: both models' logits are divided by this before their softmaxes are compared (Hinton et al., 2015)."))
    distill_alpha: float = field(default=0.5, metadata=doc(
        "Distillation: the weight of the loss on the true labels; 1 - alpha goes to matching the teacher."))


SECTIONS = {"data": DataConfig, "train": TrainConfig, "runtime": RuntimeConfig, "finetune": FinetuneConfig}


SOURCE_FIELDS = ("base", "teacher")  # finetune.*: the run (or preset) a run starts from, the teacher it learns from


@dataclass
class RunConfig:
    """A run's whole config. `sections` holds the sections the model's tasks declare (`Task.config_sections`, e.g.
    `seq2seq`); each is also an attribute (`config.seq2seq.source_lang`). `notes` are one-line messages about how the
    config was read (a key that moved), for the command to print; they are not saved."""

    model: str
    model_args: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sections: dict = field(default_factory=dict)
    notes: list = field(default_factory=list, compare=False, repr=False)

    def __getattr__(self, name: str):
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"RunConfig has no section {name!r}")

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_args": dataclasses.asdict(self.model_args),
            "data": dataclasses.asdict(self.data),
            "train": dataclasses.asdict(self.train),
            "runtime": dataclasses.asdict(self.runtime),
            "finetune": dataclasses.asdict(self.finetune),
            **{name: dataclasses.asdict(section) for name, section in self.sections.items()},
        }

    def to_yaml(self, run_dir: Path | None = None) -> str:
        """The config as YAML; written into `run_dir`, the runs it came from (`SOURCE_FIELDS`) as `files.portable`."""
        saved = self.to_dict()
        if run_dir is not None:
            saved["finetune"].update({name: files.portable(saved["finetune"][name], run_dir) for name in SOURCE_FIELDS})
        return yaml.safe_dump(saved, sort_keys=False, allow_unicode=True)


def fields_help(cls) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field of a config dataclass."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (item_type, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list of {_type_name(item_type)}, got {value!r}; write it as [a, b]")
        return origin(_coerce(v, item_type, key) for v in value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool):
        raise UserError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        raise UserError(f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return value


# Keys renamed since kerasllm 0.1; configs of older runs still load.
ALIASES = {"data": {"level": "tokenizer", "max_vocab": "vocab_size"}}

# Keys that moved from the shared sections into a task's own section: (new section, the old default). Old config files
# and `--set` keep working: the value goes to the new key, with one note naming it; a model without that section
# ignores the old default (every old config.yaml has it) and refuses any other value.
MOVED = {
    "data": {"source_lang": ("seq2seq", ""), "target_lang": ("seq2seq", ""), "source_field": ("seq2seq", "source"),
             "target_field": ("seq2seq", "target"), "target_lists": ("seq2seq", "expand"), "shared_vocab": ("seq2seq", True),
             "target_length": ("seq2seq", 0), "long_pairs": ("seq2seq", "truncate")},
    "train": {"label_smoothing": ("seq2seq", 0.0), "class_weight": ("classification", "none")},
}


def _no_section(config: RunConfig, section: str, key: str, target: str) -> UserError:
    return UserError(f"{section}.{key} is now {target}.{key}, and {config.model} has no {target} section; drop it")


def _moved(config: RunConfig, section: str, values: dict) -> dict:
    """`values` for `section` less the keys that moved, which go to their new section (see `MOVED`)."""
    kept, notes = {}, []
    for key, value in values.items():
        if key not in MOVED.get(section, {}):
            kept[key] = value
            continue
        target, old_default = MOVED[section][key]
        if target in config.sections:
            _update(config.sections[target], {key: value}, target)
            if value != old_default:
                notes.append(f"{section}.{key} is now {target}.{key}")
        elif value != old_default:
            raise _no_section(config, section, key, target)
    if notes:
        config.notes.append("; ".join(notes) + " (the old key still works)")
    return kept


def _update(instance, values: dict, section: str):
    if not isinstance(values, dict):
        raise UserError(f"config section {section!r} must be a mapping of keys to values")
    values = {ALIASES.get(section, {}).get(key, key): value for key, value in values.items()}
    hints = typing.get_type_hints(type(instance))
    valid = [f.name for f in dataclasses.fields(instance)]
    for key, value in values.items():
        if key not in hints:
            raise UserError(f"unknown config key {section}.{key}; valid keys in {section}: {', '.join(valid)}")
        setattr(instance, key, _coerce(value, hints[key], f"{section}.{key}"))
    return instance


def default_config(spec) -> RunConfig:
    """The model's defaults: the generic ones, its tasks' sections (`spec.sections`), then its recipe (`spec.defaults`)."""
    config = RunConfig(model=spec.name, model_args=spec.hparams(),
                       sections={name: cls() for name, cls in getattr(spec, "sections", {}).items()})
    config.data.source = spec.default_data
    for section, values in spec.defaults.items():
        _update(getattr(config, section), dict(values), section)
    return config


def read_config_file(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} {absent(path)}; pass an existing .yaml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise UserError(f"cannot parse config file {path}: {str(error).splitlines()[0]}; fix its syntax") from error
    if not isinstance(loaded, dict):
        raise UserError(f"config file {path} must hold a mapping (model, model_args, data, train, runtime)")
    finetune = loaded.get("finetune")
    if isinstance(finetune, dict):  # a run's sources, recorded beside it (`RunConfig.to_yaml`), are found from its folder
        finetune.update({name: files.located(finetune[name], path.parent) for name in SOURCE_FIELDS
                         if isinstance(finetune.get(name), str)})
    return loaded


def apply_file(config: RunConfig, loaded: dict) -> RunConfig:
    for section, values in loaded.items():
        if section == "model":
            if values != config.model:
                raise UserError(f"config file is for model {values!r}, not {config.model!r}; drop the model name or the file")
        elif section == "model_args":
            _update(config.model_args, values, "model_args")
        elif section in SECTIONS:
            _update(getattr(config, section), _moved(config, section, _mapping(values, section)), section)
        elif section in config.sections:
            _update(config.sections[section], values, section)
        else:
            valid = ", ".join(["model", "model_args", *SECTIONS, *config.sections])
            raise UserError(f"unknown config section {section!r}; valid sections for {config.model}: {valid}")
    return config


def _mapping(values, section: str) -> dict:
    if not isinstance(values, dict):
        raise UserError(f"config section {section!r} must be a mapping of keys to values")
    return values


def _sections(config: RunConfig) -> dict[str, Any]:
    return {"model_args": config.model_args, **{name: getattr(config, name) for name in SECTIONS}, **config.sections}


def _locate(key: str, sections: dict[str, Any]) -> tuple[str, str]:
    """(section, field) that `--set KEY=…` names: `section.field`, or a bare field that exactly one section has."""
    if "." in key:
        section, _, name = key.partition(".")
        section = "model_args" if section == "model" else section  # `model.units` reads naturally too
        if section not in sections:
            raise UserError(f"unknown config section {section!r} in {key!r}; valid sections: {', '.join(sections)}")
        return section, ALIASES.get(section, {}).get(name, name)
    owners = [s for s, obj in sections.items() if any(f.name == key for f in dataclasses.fields(obj))]
    if len(owners) != 1:
        valid = ", ".join(f"{s}.{f.name}" for s, obj in sections.items() for f in dataclasses.fields(obj))
        problem = "is ambiguous" if owners else "is not a config key"
        raise UserError(f"{key!r} {problem}; valid keys: {valid}")
    return owners[0], key


def _parse_value(key: str, raw: str, hint) -> Any:
    """A `--set` value as YAML, then as the field's type asks: strings stay as typed, `1e-3` is a float."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise UserError(f"cannot parse the value of {key!r}: {raw!r}; quote strings and write lists as [a, b]") from error
    if value is None:
        return raw
    if hint is str and not isinstance(value, str):
        return raw.strip()  # `--set data.source=123` means the string "123"
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads `1e-3` as a string
        except ValueError:
            return value
    return value


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply `key=value` strings in order (later wins)."""
    sections = _sections(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects key=value, got {item!r}; for example --set train.epochs=3")
        section, name = _locate(key, sections)
        if name in MOVED.get(section, {}):
            target = MOVED[section][name][0]
            if target not in config.sections:
                raise _no_section(config, section, name, target)
            config.notes.append(f"{section}.{name} is now {target}.{name} (the old key still works)")
            section = target
        value = _parse_value(key, raw, typing.get_type_hints(type(sections[section])).get(name))
        _update(sections[section], {name: value}, section)
    return config


def flag_overrides(flags: dict[str, Any]) -> list[str]:
    """`key=value` overrides from the command-line flags named after config keys; flags left unset (None) are skipped.
    They go after `--set` in `resolve`'s overrides, so a flag wins over `--set` of the same key."""
    return [f"{key}={value}" for key, value in flags.items() if value is not None]


def local_paths(*sources: str) -> list[Path]:
    """The sources that are local paths (made absolute by `resolve`): what a new run folder must never replace."""
    return [Path(source) for source in sources if source and Path(source).is_absolute()]


def absolute_source(source: str, base: Path | None = None) -> str:
    """A local data path as an absolute path (so a run can be evaluated from any folder); other sources as they are."""
    if not source or ":" in source.split("/")[0]:
        return source  # empty, tfds:NAME, builtin:NAME
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve()) if path.exists() else source  # a missing path is reported as given


def resolve(spec, config_file: Path | None = None, overrides: list[str] = (), preset: str | None = None,
            inherited: dict | None = None) -> RunConfig:
    """The one config pipeline, for `train`, `finetune` and everything after them: builder defaults ← preset ← what a
    fine-tuning run inherits from its base (`inherited`, a config mapping) ← config file ← overrides (`--set`, then the
    flags named after keys), validated; local data paths made absolute."""
    config = default_config(spec)
    if preset is not None:
        if preset not in spec.presets:
            known = ", ".join(spec.presets) or "none"
            raise UserError(f"{spec.name} has no preset {preset!r}; its presets: {known}")
        values = dict(spec.presets[preset])
        _update(config.model_args, {k: v for k, v in values.items() if "." not in k}, "model_args")
        for key, value in values.items():  # a preset may also set other sections: `data.sequence_length`
            if "." in key:
                section, _, name = key.partition(".")
                _update(getattr(config, section), {name: value}, section)
    if inherited:
        apply_file(config, inherited)
    if config_file is not None:
        apply_file(config, read_config_file(config_file))
    apply_overrides(config, list(overrides))
    config.data.source = absolute_source(config.data.source)
    return validate(config)


def from_dict(spec, loaded: dict) -> RunConfig:
    """A saved config (a run's config.yaml, as `RunConfig.to_yaml` writes it), checked like a config file."""
    return validate(apply_file(default_config(spec), loaded))
