"""Keep TensorFlow's C++ start-up lines off the terminal (unless --debug).

TF 2.21 logs "All log messages before absl::InitializeLog()...", oneDNN, cudart_stub
and `cuInit` lines to file descriptor 2 before absl is initialised, so
`TF_CPP_MIN_LOG_LEVEL` cannot silence them. `captured_stderr` points fd 2 at a
temporary file while TensorFlow loads and finds its devices; if that fails, what
was caught is written to the real stderr before the error goes on.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


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


# XLA's older CPU runtime ran transformer-lm's compiled train step 15 % faster on 2 cores
# (28.9 vs 33.8 ms per step, nanoGPT's CPU config); a user's own XLA_FLAGS come first.
XLA_CPU_DEFAULT = "--xla_cpu_use_thunk_runtime=false"


def set_xla_defaults() -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_use_thunk_runtime" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_DEFAULT}".strip()


def load_tensorflow(debug: bool = False) -> None:
    """Import TensorFlow and Keras and discover devices with start-up noise hidden (shown with `debug`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "2")
    set_xla_defaults()
    with captured_stderr(not debug):
        import keras  # noqa: F401
        import tensorflow as tf

        tf.config.list_physical_devices()  # cuInit / cudart messages come from here
