"""What hiding the packages TensorFlow and Keras would import for nothing (`kerasllm.core.quiet.UNUSED_AT_START`)
saves at start-up: peak RSS and seconds of `quiet.load_tensorflow()`, hidden and not, each in a fresh process.

    python bench/quiet_start.py [--runs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import contextlib, resource, sys, time
started = time.perf_counter()
from kerasllm.core import quiet
if sys.argv[1] == "shown":
    quiet.unused_imports_hidden = contextlib.nullcontext
quiet.load_tensorflow()
loaded = sorted(name for name in quiet.UNUSED_AT_START if name in sys.modules)
print(f"{sys.argv[1]:6} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:5.0f} MB {time.perf_counter() - started:5.2f} s "
      f"imported: {', '.join(loaded) or 'none of them'}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    runs = parser.parse_args().runs
    for _ in range(runs):
        for mode in ("hidden", "shown"):
            print(subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True).stdout.strip())


if __name__ == "__main__":
    main()
