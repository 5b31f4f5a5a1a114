"""The code version a result records: ablate's own, plus every loaded plugin's."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

from ablate import __version__
from ablate.plugins import load_all

_PACKAGE = Path(__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version (the source's when not installed)."""
    try:
        return metadata.version("ablate")
    except metadata.PackageNotFoundError:
        return __version__


def ablate_version() -> str:
    """`git describe` when running from a checkout, else the package version."""
    if not (_PACKAGE.parent / "pyproject.toml").is_file():  # an installed wheel
        return package_version()
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                             text=True, cwd=_PACKAGE, timeout=5)
        return out.stdout.strip() or package_version()
    except (OSError, subprocess.SubprocessError):
        return package_version()


def code_version() -> str:
    """ablate's version, then `+name==version@sha` for each loaded plugin."""
    plugins = [f"+{p.name}=={p.version}@{p.sha256[:8]}" for p in load_all()]
    return ablate_version() + "".join(plugins)
