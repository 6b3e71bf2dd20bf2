"""interrupts.deadline: a block that hangs in C with the GIL held ends the process with one line and exit status 2."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each starts a Python process
ROOT = Path(__file__).resolve().parents[2]
HANG = """
import ctypes, sys
from kerasllm.core import interrupts
with interrupts.deadline(1, "the workers did not join; start them all"):
    ctypes.PyDLL(None).sleep(60)  # libc's sleep with the GIL held, as TensorFlow's join holds it
print("never here")
"""
AFTER = """
import os, signal, time
from kerasllm.core import interrupts
with interrupts.deadline(60, "never"):
    pass
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
except KeyboardInterrupt:
    print("Ctrl-C raises KeyboardInterrupt again")
"""


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=ROOT)


def test_a_block_that_holds_the_gil_past_its_deadline_ends_with_one_line_and_status_2():
    done = python(HANG)
    assert done.returncode == 2 and "never here" not in done.stdout
    assert done.stderr.strip().splitlines() == ["error: the workers did not join; start them all"]


def test_after_the_block_ctrl_c_is_pythons_again():
    done = python(AFTER)
    assert done.returncode == 0 and "KeyboardInterrupt again" in done.stdout, done.stderr
