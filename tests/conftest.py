import os

import pytest
import torch

os.environ.setdefault("ABLATE_CACHE", "results")  # one benchmark build shared by all tests
torch.set_num_threads(2)

TINY_TEACHERS = ["tiny-sd15", "tiny-sd21", "tiny-sdxl"]


@pytest.fixture(scope="session")
def tiny_teachers():
    """Each tiny twin built once per session (they are frozen, so sharing is safe)."""
    from ablate.registry import build

    return {name: build("teacher", name) for name in TINY_TEACHERS}


def fixed_batch(size: int = 64, batch: int = 4, seed: int = 0) -> dict:
    """A fixed batch of images/sources/targets in [-1, 1] and mixed labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    labels = torch.tensor([0.0, 1.0] * (batch // 2))
    sources = torch.where(labels.view(-1, 1, 1, 1) > 0,
                          torch.rand(batch, 3, size, size, generator=g) * 2 - 1, images)
    targets = torch.where(labels.view(-1, 1, 1, 1) > 0, images.flip(-1), images)
    return {"image": images, "source": sources, "target": targets, "label": labels,
            "video_id": [f"v{i}" for i in range(batch)], "path": [f"p{i}" for i in range(batch)]}


def run_cli(*args: str, cwd, env: dict | None = None) -> tuple[int, str, str]:
    """`ablate ARGS` through the real entry point (`ablate.cli.main`), in this process:
    (exit code, stdout, stderr). For the many one-line-error cases, which would otherwise
    each pay ~8 s of torch/diffusers imports in a fresh process; each test file keeps at
    least one real-subprocess case of the same path."""
    import contextlib
    import io
    import sys

    from ablate import cli

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, old_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.argv = ["ablate", *args]
    os.environ.update(env or {})
    os.chdir(cwd)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(old_env)
        cli._State.debug = False
    return code, out.getvalue(), err.getvalue()
