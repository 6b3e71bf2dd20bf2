"""Ctrl-C and SIGTERM during training: a checkpoint at the next step's end, then one line; a second signal stops at once.

A process blocked inside TensorFlow (a worker waiting on a collective for a peer that is gone) runs no Python signal
handler until the call returns, which is why such a worker once ignored SIGTERM. So the signal is also written to a
wakeup pipe that a watcher thread reads: if the training loop has not stopped `grace_seconds` after the first
signal, the watcher prints one line and ends the process (exit code 128 + the signal's number).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 30.0


@contextlib.contextmanager
def graceful_stop(request_stop: Callable[[], None], grace_seconds: float = GRACE_SECONDS, where: str = "") -> Iterator[None]:
    """Inside the block, the first SIGINT/SIGTERM calls `request_stop()` (the loop checkpoints and stops); a second
    raises KeyboardInterrupt. Outside the main thread (where Python cannot set handlers) the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt
        request_stop()

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {number: signal.signal(number, handler) for number in SIGNALS}
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_fd, done, grace_seconds, where), daemon=True, name="kerasllm-signals")
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(previous_fd)
        for number, old in previous.items():
            signal.signal(number, old)
        os.close(write_fd)  # the watcher's read returns: it ends
        watcher.join(timeout=5)
        os.close(read_fd)


def _watch(read_fd: int, done: threading.Event, grace_seconds: float, where: str) -> None:
    """Wait for a signal byte; if the loop is still running `grace_seconds` later, end the process with one line."""
    try:
        data = os.read(read_fd, 1)
    except OSError:
        return
    if not data or done.is_set():
        return
    if done.wait(grace_seconds):
        return
    resume = f"; continue with `kerasllm train --resume {where}`" if where else ""
    sys.stderr.write(f"stopped: training did not reach a step's end within {grace_seconds:g} s of the signal "
                     f"(waiting on another worker?){resume}\n")
    sys.stderr.flush()
    os._exit(128 + data[0])


# Why a separate process: a Python thread cannot act while TensorFlow holds the GIL. Measured here (TF 2.21, 2 cores,
# a MultiWorkerMirroredStrategy whose peer never starts): a `threading.Timer` set for 10 s had not fired after 12
# minutes, and `timeout 60`'s SIGTERM went unanswered as well; with `deadline(10, …)` the process ended at 15.5 s
# of wall time (5 s of it importing TensorFlow). The watcher costs one small Python process for the join's length.
EXIT_SIGNAL = signal.SIGINT  # the watcher's signal: libc's `_exit` as its handler exits with its number, 2


def _exit_on_signal(signum: int) -> Callable[[], None] | None:
    """Make libc's `_exit` the C-level handler of `signum`: the kernel calls it with the signal's number, so a process
    blocked in C with the GIL held exits with status `signum` (2 for SIGINT: the status of kerasllm's one-line errors)
    without any Python running. Returns what puts Python's own handler back; None where libc is out of reach."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]
        libc.signal(signum, ctypes.cast(libc._exit, ctypes.c_void_p).value)
    except (OSError, AttributeError, TypeError):
        return None
    python_handler = signal.getsignal(signum)  # what Python still records: installed again, with Python's own flags
    return lambda: signal.signal(signum, python_handler)


@contextlib.contextmanager
def deadline(seconds: float, message: str) -> Iterator[None]:
    """If the block has not finished `seconds` after it began, `message` is written as one line and the process ends
    with exit status 2: for a call that blocks inside TensorFlow with no timeout of its own (joining workers that never
    started) and holds the GIL while it waits, so no Python thread or handler of this process could act. The watcher
    is a small separate process, stopped when the block ends: it sends SIGINT, whose handler during the block is
    libc's `_exit` (`_exit_on_signal`), and SIGKILL 3 s later if the process is still there (exit 137; also where libc's
    `_exit` could not be set). Ctrl-C during the block ends the process the same way. 0: no limit."""
    if not seconds:
        yield
        return
    restore = _exit_on_signal(EXIT_SIGNAL) if threading.current_thread() is threading.main_thread() else None
    parent = os.getpid()
    code = (f"import os, signal, sys, time\ntime.sleep({float(seconds)!r})\n"
            f"sys.stderr.write({('error: ' + message + chr(10))!r})\nsys.stderr.flush()\n"
            f"os.kill({parent}, {int(EXIT_SIGNAL) if restore else int(signal.SIGKILL)})\ntime.sleep(3)\n"
            f"if os.getppid() == {parent}:\n    os.kill({parent}, signal.SIGKILL)\n")  # still there, and still ours
    watcher = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield
    finally:
        watcher.kill()
        watcher.wait()
        if restore:
            restore()
