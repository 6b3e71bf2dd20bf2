"""Keep TensorFlow's C++ start-up lines off the terminal (unless --debug).

TF 2.21 logs "All log messages before absl::InitializeLog()...", oneDNN, cudart_stub
and `cuInit` lines to file descriptor 2 before absl is initialised, so
`TF_CPP_MIN_LOG_LEVEL` cannot silence them. `captured_stderr` points fd 2 at a
temporary file while TensorFlow loads and finds its devices; if that fails, what
was caught is written to the real stderr before the error goes on.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import sys
import tempfile

# Lazy imports: TensorFlow and Keras are imported inside `load_tensorflow`, whose job is to import them quietly.


@contextlib.contextmanager
def captured_stderr(enabled: bool = True):
    """Send fd 2 (C++ and Python writes alike) to a temporary file inside the block."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                sink.seek(0)
                sys.stderr.write(sink.read().decode("utf-8", "replace"))
                sys.stderr.flush()


# Packages TensorFlow and Keras import at start-up when installed, for features kerasllm never uses: JAX for
# TFLite's `experimental_from_jax`, scikit-learn for Keras' sklearn wrappers, matplotlib for `keras.visualization`,
# SciPy for tf.keras-1 sparse inputs. All are optional imports there. Hiding them pays for itself: with all four
# installed (the test extras), `load_tensorflow` peaks at 661 MB in 2.3 s hidden against 909 MB in 3.6 s not
# (about 248 MB and 1.2–1.8 s less: bench/RESULTS.md, "Start-up", `python bench/quiet_start.py`).
UNUSED_AT_START = ("jax", "sklearn", "matplotlib", "scipy")
NEEDED_BY_JAX = ("jax", "scipy")  # Keras' JAX backend imports jax.experimental.sparse, which imports SciPy


def keras_backend() -> str:
    """The backend Keras will load, found as Keras finds it: KERAS_BACKEND, else keras.json, else TensorFlow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            return json.load(handle).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


@contextlib.contextmanager
def unused_imports_hidden():
    """Hide `UNUSED_AT_START` while TensorFlow and Keras import (JAX and SciPy stay when Keras runs on JAX).

    A package imported already is left alone; after the block `import matplotlib` and the others work as usual
    (kerasllm draws its curves with matplotlib later, when a run ends).
    """
    keep = NEEDED_BY_JAX if keras_backend() == "jax" else ()
    names = [name for name in UNUSED_AT_START if name not in sys.modules and name not in keep]
    for name in names:
        sys.modules[name] = None  # makes `import name` raise ImportError
    try:
        yield
    finally:
        for name in names:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def load_tensorflow(debug: bool = False) -> None:
    """Import TensorFlow and Keras and discover devices with start-up noise hidden (shown with `debug`)."""
    # 3 hides C++ ERROR lines too: loading a cached XLA program logs one at ERROR level on every run (XLA:CPU's
    # tuning features, "+prefer-no-gather", are not host features); kerasllm's own errors say what went wrong
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if debug else "3"
    with captured_stderr(not debug), unused_imports_hidden():
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # cuInit / cudart messages come from here
        tf.get_logger()  # TensorFlow gives its logger a stderr handler on first use; keep_library_output replaces it
    if not debug:
        keep_library_output()


# Python loggers of the libraries under kerasllm; their records (TensorFlow's "… triggered tf.function retracing",
# absl, urllib3's retries, matplotlib's font search …) are kept rather than printed unless --debug. Python warnings
# reach them through `logging.captureWarnings` (the "py.warnings" logger).
LIBRARY_LOGGERS = ("tensorflow", "absl", "keras", "keras_hub", "jax", "urllib3", "matplotlib", "h5py", "PIL", "httpx", "kagglehub",
                   "huggingface_hub", "tensorflow_datasets", "py.warnings")
KEPT_LINES = 5_000  # the most lines kept (a server that runs for days keeps the newest): a run's library.log is bounded


class _Heard:
    """What the libraries said, newest last, numbered so that a run can ask for what it heard itself."""

    def __init__(self, limit: int = KEPT_LINES):
        self.lines: collections.deque = collections.deque(maxlen=limit)
        self.count = 0

    def add(self, line: str) -> None:
        self.count += 1
        self.lines.append((self.count, line.rstrip("\n")))


HEARD = _Heard()


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "py.warnings":  # "FILE:LINE: Category: message" as warnings.formatwarning writes it
            file_line, _, rest = record.getMessage().strip().partition(": ")
            HEARD.add(f"{rest.splitlines()[0] if rest else file_line} ({file_line})")
        else:
            HEARD.add(f"{record.name} {record.levelname}: {record.getMessage()}")


_saved: dict | None = None  # the loggers' own settings while they are kept, to put back


def keep_library_output() -> None:
    """Keep Python warnings and the libraries' log records (`HEARD`) instead of printing them (Keras' UserWarnings
    while an old `.h5` file migrates, HDF5's "legacy" note, matplotlib's missing glyphs for non-Latin paths …).
    kerasllm says what a user needs in its own words; `--debug` leaves all of this on stderr. Called again (once
    TensorFlow has given its logger a handler of its own), it keeps that one's records too; `restore_library_output`
    puts back what was there before the first call."""
    global _saved
    if _saved is None:
        _saved = {name: _settings(logging.getLogger(name)) for name in LIBRARY_LOGGERS}
        logging.captureWarnings(True)  # warnings.showwarning is logging's now; captureWarnings(False) puts it back
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [_Keep()]  # TensorFlow's own stderr handler too ("WARNING:tensorflow:… retracing" on serve)
        logger.propagate = False
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _settings(logger: logging.Logger) -> tuple:
    return list(logger.handlers), logger.propagate, logger.level


def restore_library_output() -> None:
    """Put back the warnings display and the loggers as they were before `keep_library_output` (the CLI does this when
    a command ends, so a program or a test that runs a command finds its own settings afterwards)."""
    global _saved
    if _saved is None:
        return
    logging.captureWarnings(False)
    for name, (handlers, propagate, level) in _saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = handlers, propagate
        logger.setLevel(level)
    _saved = None


def heard_mark() -> int:
    """A mark: `heard_since(mark)` is what the libraries said after it (a run takes one as it starts)."""
    return HEARD.count


def heard_since(mark: int = 0) -> str:
    """What the libraries said after `mark` and is still kept ('' when nothing)."""
    return "".join(line + "\n" for number, line in HEARD.lines if number > mark)
