"""`kerasllm doctor`: what this installation is, what it can run on, and the known traps with their fixes.

`versions()` reads package metadata (no import). `environment()` imports TensorFlow to list
devices and the strategy `--strategy auto` would pick. `traps(...)` takes its facts as
arguments, so every trap is testable without the hardware it is about.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

from kerasllm import compilation, distribute
from kerasllm.core import quiet
from kerasllm.distribute import tpu_present

# Lazy imports: TensorFlow, Keras and JAX are imported inside functions: the backend must be set before Keras loads.

PACKAGES = ("tensorflow", "keras", "tensorflow-text", "tensorflow-datasets", "keras-hub", "jax", "tensorflow-tpu", "libtpu")


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def cpu_flags() -> set[str]:
    return set(compilation.cpuinfo("flags").split())


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def traps(found: dict, env: dict, flags: set[str], tpu: bool, backend: str = "tensorflow") -> list[dict]:
    """The known traps that apply (`backend`: the Keras backend commands will run on): each `{"trap", "detail", "fix"}`."""
    hits = []
    if env.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        hits.append({"trap": "TF_USE_LEGACY_KERAS is set",
                     "detail": "tf.keras becomes Keras 2 (tf-keras); kerasllm's models are Keras 3",
                     "fix": "unset TF_USE_LEGACY_KERAS"})
    tf_minor, text_minor = _minor(found.get("tensorflow")), _minor(found.get("tensorflow-text"))
    if tf_minor and text_minor and tf_minor != text_minor:
        hits.append({"trap": "tensorflow-text does not match TensorFlow",
                     "detail": f"tensorflow {found['tensorflow']} with tensorflow-text {found['tensorflow-text']}: its ops fail to load",
                     "fix": f"pip install 'tensorflow-text=={tf_minor}.*'"})
    if tpu and backend == "tensorflow" and found.get("tensorflow") and not found.get("tensorflow-tpu"):
        hits.append({"trap": "TensorFlow on a TPU runtime without tensorflow-tpu",
                     "detail": "TensorFlow will not see the TPU (Colab TPU runtimes ship JAX, not TensorFlow)",
                     "fix": "use --backend jax --strategy tpu, or install tensorflow-tpu with a matching TensorFlow (2.20)"})
    if tpu and found.get("jax") and found.get("tensorflow-tpu"):
        hits.append({"trap": "JAX and TensorFlow both installed for the TPU",
                     "detail": "only one process framework can own the TPU; the second to start fails",
                     "fix": "pick one backend per process (KERAS_BACKEND=jax with tensorflow-cpu for input pipelines)"})
    if not (BF16_FLAGS & flags) and flags:
        hits.append({"trap": "no AVX-512-BF16 / AMX-BF16 on this CPU",
                     "detail": "bfloat16 (mixed_bfloat16) runs emulated and slower here",
                     "fix": "keep float32 on this CPU; use bfloat16 on TPUs or CPUs with AVX-512-BF16"})
    return hits


BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


def bfloat16_note(precision: str, strategy: str, flags: set[str] | None = None, accelerators: int | None = None) -> str | None:
    """A note when `mixed_bfloat16` would run on a CPU that has no bfloat16 units (emulated: slower than float32),
    the trap `kerasllm doctor` names; None elsewhere. `accelerators`: GPUs and TPUs found (None: ask TensorFlow)."""
    flags = cpu_flags() if flags is None else flags
    if precision != "mixed_bfloat16" or not flags or BF16_FLAGS & flags or strategy not in ("auto", "cpu"):
        return None
    if accelerators is None and strategy == "auto":
        import tensorflow as tf

        accelerators = len(tf.config.list_physical_devices("GPU")) + int(tpu_present())
    if accelerators:
        return None
    return ("this CPU has no AVX-512-BF16 or AMX-BF16, so mixed_bfloat16 runs emulated here, slower than float32; "
            "keep float32 on it (bfloat16 pays on TPUs and on CPUs that have those units; see `kerasllm doctor`)")


def environment() -> dict:
    """Backend, devices and the strategy `--strategy auto` picks (imports Keras and its backend). The choice is made
    from the facts, without creating the strategy (a multi-worker one would wait for its peers)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        devices = [{"name": str(d), "type": d.platform.upper()} for d in jax.devices()]
        kind = distribute.jax_kind("auto")
    else:
        import tensorflow as tf

        devices = [{"name": d.name, "type": d.device_type} for d in tf.config.list_logical_devices()]
        kind = distribute.choose("auto", tpu=tpu_present(), workers=distribute.workers_in(distribute.tf_config()),
                                 gpus=sum(d["type"] == "GPU" for d in devices))
    return {"keras_backend": keras.backend.backend(), "devices": devices, "auto_strategy": AUTO_NAMES[kind]}


AUTO_NAMES = {"tpu": "tpu (TPUStrategy / DataParallel over the TPU cores)", "multi-worker": "multi-worker (TF_CONFIG's workers)",
              "mirrored": "mirrored (all local devices)", "gpu": "gpu (one GPU, the default strategy)",
              "cpu": "cpu (the default strategy)"}


def compilation_cache(backend: str) -> dict | None:
    """The persistent compilation cache's folder, its programs and size; None when it is turned off."""
    folder = compilation.compilation_cache_dir(backend)
    if folder is None:
        return None
    entries = [path for path in folder.rglob("*") if path.is_file()] if folder.is_dir() else []
    return {"folder": str(folder), "programs": len(entries), "megabytes": round(sum(p.stat().st_size for p in entries) / 2**20, 1)}


def step_defaults(backend: str, env: dict | None = None) -> dict:
    """The fast-path defaults this process takes on this CPU: its kind, kerasllm's XLA CPU flags for it, and the XLA_FLAGS in
    effect (the user's own first)."""
    env = os.environ if env is None else env
    vendor = compilation.cpu_vendor()
    return {"cpu_kind": compilation.CPU_KINDS.get(vendor, vendor or "unknown"),
            "xla_cpu_defaults": compilation.xla_cpu_defaults(vendor) if backend == "tensorflow" else "(none: JAX's XLA)",
            "xla_flags": env.get("XLA_FLAGS", "")}


def report() -> dict:
    found = versions()
    flags = cpu_flags()
    backend = quiet.keras_backend()
    return {"versions": found, **environment(), **step_defaults(backend), "compilation_cache": compilation_cache(backend),
            "cpu_bfloat16": bool(BF16_FLAGS & flags),
            "traps": traps(found, dict(os.environ), flags, tpu_present(), backend)}
