"""The wheel: everything is installed under kerasllm's name (`cli.py` and `zoo/` stay at the top of the repository)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_the_wheel_installs_only_kerasllm(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("kerasllm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"kerasllm", wheel.name.split("-py")[0] + ".dist-info"}
    assert {"kerasllm/cli.py", "kerasllm/zoo/__init__.py", "kerasllm/zoo/layers.py", "kerasllm/zoo/transformer_lm.py"} <= set(names)
    entry_points = zipfile.ZipFile(wheel).read(next(name for name in names if name.endswith("entry_points.txt"))).decode()
    assert "kerasllm = kerasllm.cli:main" in entry_points

    # Installed on its own (outside the repository, so its top-level cli.py and zoo/ are not on the path):
    # the command line and the zoo import under kerasllm's name, and there is no top-level `cli` or `zoo`.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True, cwd=tmp_path)
    probe = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]); import kerasllm.cli, kerasllm.zoo; "
             "print(kerasllm.zoo.__file__, len(kerasllm.zoo.SPECS), importlib.util.find_spec('cli'), importlib.util.find_spec('zoo'))")
    found = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "site")], capture_output=True, text=True, cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    where, specs, cli, zoo = found.stdout.split()
    assert where.startswith(str(tmp_path / "site" / "kerasllm" / "zoo")) and int(specs) >= 8 and cli == zoo == "None"
