"""The wheel is what a researcher installs: every package, and the configs and search
spaces (the top-level folders, mapped into the package) byte for byte."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = set(find_packages(str(ROOT), include=["ablate*"]))
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


def test_wheel_ships_configs_and_spaces_as_in_the_checkout(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True,
                   capture_output=True, timeout=300)
    wheel, = tmp_path.glob("ablate-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = {n: z.read(n) for n in z.namelist()
                   if n.startswith(("ablate/configs/", "ablate/search_spaces/"))}
    expected = {f"ablate/{p.relative_to(ROOT)}": p.read_bytes()
                for folder in ("configs", "search_spaces") for p in (ROOT / folder).rglob("*.yaml")}
    assert shipped == expected
