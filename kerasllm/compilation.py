"""XLA on the CPU and the compilation cache: set before TensorFlow or JAX loads.

`set_xla_defaults(backend)` (the command line calls it first) gives XLA kerasllm's CPU flags for this kind of CPU and
points TensorFlow's or JAX's persistent compilation cache at a folder per CPU kind and library version, so a second
identical run, or a resumed one, loads its compiled programs. `kerasllm doctor` reports both (`cpu_vendor`,
`compilation_cache_dir`).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

# XLA's CPU options that ran transformer-lm's compiled train step fastest, per CPU kind (nanoGPT's CPU config, 2 cores,
# `python bench/step_levers.py`, bench/RESULTS.md); a user's own XLA_FLAGS come first, flag by flag:
# - Intel Xeon: XLA's older CPU runtime (28.9 against 33.8 ms per step; oneDNN in XLA 31.9 ms);
# - AMD EPYC: the same; the older runtime, the newer one and oneDNN in XLA ran within the machine's noise
#   (34.7-38.7, 36.6-44.1 and 34.3-40.9 ms per step in alternating runs), bfloat16 and JAX slower.
XLA_CPU_DEFAULT = "--xla_cpu_use_thunk_runtime=false"
XLA_CPU_DEFAULTS = {"GenuineIntel": XLA_CPU_DEFAULT, "AuthenticAMD": XLA_CPU_DEFAULT}
CPU_KINDS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


def cpuinfo(field: str) -> str:
    """The first CPU's `field` in /proc/cpuinfo (vendor_id, model name, flags, ...), '' where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    return next((line.partition(":")[2].strip() for line in text.splitlines() if line.partition(":")[0].strip() == field), "")


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id (GenuineIntel, AuthenticAMD, ...), '' where it cannot be read."""
    return cpuinfo("vendor_id")


def xla_cpu_defaults(vendor: str | None = None) -> str:
    """kerasllm's XLA CPU flags for this kind of CPU (TensorFlow backend); the Intel ones where the kind is unknown."""
    return XLA_CPU_DEFAULTS.get(cpu_vendor() if vendor is None else vendor, XLA_CPU_DEFAULT)


# Compiled XLA programs are kept on disk, so a second identical run, or a resumed one, loads its programs instead of
# compiling them again (XLA's compilation: 1.7-2.5 s of a ~100 s run at nanoGPT's CPU config on TensorFlow, which still
# traces the step; on JAX a second run's first train call went 6.3 -> 0.8 s; bench/RESULTS.md).
# `KERASLLM_COMPILATION_CACHE=0` turns this off; `KERASLLM_CACHE_DIR` moves the folder (default:
# $XDG_CACHE_HOME/kerasllm, else ~/.cache/kerasllm).
CACHE_SWITCH, CACHE_HOME = "KERASLLM_COMPILATION_CACHE", "KERASLLM_CACHE_DIR"


def cache_home(env: dict | None = None) -> Path:
    """kerasllm's cache folder: KERASLLM_CACHE_DIR, else $XDG_CACHE_HOME/kerasllm, else ~/.cache/kerasllm."""
    env = os.environ if env is None else env
    if env.get(CACHE_HOME):
        return Path(env[CACHE_HOME]).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kerasllm"


def cpu_fingerprint() -> str:
    """A short name for this CPU's kind: its model name and instruction-set flags (an XLA program compiled for one CPU
    may use instructions another lacks, so each kind of CPU gets its own compilation cache)."""
    import hashlib
    import platform

    wanted = [cpuinfo("model name"), cpuinfo("flags")] if Path("/proc/cpuinfo").is_file() else [platform.processor()]
    return hashlib.sha256("\n".join([platform.machine(), *wanted]).encode()).hexdigest()[:12]


def compilation_cache_dir(backend: str, env: dict | None = None) -> Path | None:
    """Where `backend`'s compiled XLA programs are kept for this CPU kind and library version; None when turned off."""
    env = os.environ if env is None else env
    if env.get(CACHE_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    from importlib import metadata

    package = "tensorflow" if backend == "tensorflow" else "jaxlib"
    try:
        version = metadata.version(package)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return cache_home(env) / "xla" / f"{backend}-{version}-{cpu_fingerprint()}"


def set_xla_defaults(backend: str) -> None:
    """Before TensorFlow (or JAX) loads: XLA_FLAGS gets kerasllm's CPU defaults for this CPU kind, each unless the user
    set that flag (TensorFlow only: the XLA inside jaxlib no longer has the old runtime and rejects the flag), and
    compiled programs go to the persistent compilation cache (`compilation_cache_dir`) unless the user set one or
    turned it off."""
    flags = os.environ.get("XLA_FLAGS", "")
    if backend == "tensorflow":
        mine = [flag for flag in xla_cpu_defaults().split() if flag.partition("=")[0] not in flags]
        os.environ["XLA_FLAGS"] = " ".join([flags, *mine]).strip()
    folder = compilation_cache_dir(backend)
    if folder is None:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return
    if backend == "tensorflow":
        tf_flags = os.environ.get("TF_XLA_FLAGS", "")
        if "tf_xla_persistent_cache_directory" not in tf_flags:
            os.environ["TF_XLA_FLAGS"] = f"{tf_flags} --tf_xla_persistent_cache_directory={folder}".strip()
    else:
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(folder))
        if "jax" in sys.modules:  # imported already (JAX reads the variable once, as it loads): set its config directly
            import jax

            if not jax.config.jax_compilation_cache_dir:
                jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])


CACHE_NAME = re.compile(r"^(tensorflow|jax)-.+-[0-9a-f]{12}$")  # compilation_cache_dir's folder names


def clear_compilation_caches(env: dict | None = None) -> tuple[int, int]:
    """Delete the compilation caches kerasllm made (every backend, version and CPU kind under `cache_home()/xla`, and
    nothing else there); returns (folders, bytes) freed. The next run compiles its programs again."""
    root = cache_home(env) / "xla"
    folders = [path for path in root.iterdir() if path.is_dir() and CACHE_NAME.match(path.name)] if root.is_dir() else []
    freed = sum(item.stat().st_size for folder in folders for item in folder.rglob("*") if item.is_file())
    for folder in folders:
        shutil.rmtree(folder)
    return len(folders), freed
