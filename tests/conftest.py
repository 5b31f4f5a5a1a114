import fcntl
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("ABLATE_CACHE", "results")  # one benchmark build shared by all tests
torch.set_num_threads(2)

TINY_TEACHERS = ["tiny-sd15", "tiny-sd21", "tiny-sdxl"]


@pytest.fixture(autouse=True)
def _same_random_state_whatever_ran_before():
    """Each test starts from one RNG state, so its outcome does not depend on which tests
    an xdist worker happened to run before it (CI once failed a loss-ratio test that way)."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# One lock file per user for the whole machine: every xdist worker and every concurrent pytest
# run of this suite (any checkout) takes turns on it.
HEAVY_LOCK = Path(tempfile.gettempdir()) / f"ablate-one-heavy-test-{os.getuid()}.lock"


@pytest.fixture
def one_heavy_test_at_a_time():
    """Holds an inter-process lock (flock on HEAVY_LOCK) for the test's whole duration, so
    two tests that each need several GB (full-size models) never run at once: `make test`
    runs two xdist workers on a 24 GB machine, and two such tests side by side do not fit.
    A test that requests it waits for the one holding it; the lock goes with its process
    (a crashed worker never leaves it held)."""
    with open(HEAVY_LOCK, "a") as handle:
        start = time.perf_counter()
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks while another heavy test runs
        waited = time.perf_counter() - start
        if waited > 1:
            print(f"waited {waited:.0f}s for another heavy test ({HEAVY_LOCK})")
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_teachers():
    """Each tiny twin built once per session (they are frozen, so sharing is safe)."""
    from ablate.registry import build

    return {name: build("teacher", name) for name in TINY_TEACHERS}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in a temp folder (sweep tests) (results/ray, results/runs land there); share the benchmark cache."""
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


TINY_RUN = ["backbone=tiny", "image_size=32", "train=cpu", "train.steps=4", "train.batch_size=4",
            "data.train=synth-blend", "data.tests=[synth-colour,synth-warp]", "train.eval_every=0"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One tiny guided run per test worker, trained once and shared by the modules that only
    evaluate or reload it (eval only at the end: the selected classifier is the final one)."""
    from ablate.recipe import compose
    from ablate.train import train

    out = tmp_path_factory.mktemp("tiny-run")
    return train(compose([*TINY_RUN, f"run.out_dir={out}", "run.name=r"]), progress=False).folder


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


# ---------------------------------------------------------------- test tiers
# Every test is marked from what it uses, so a new one cannot land in the fast tier by
# forgetting a marker: the names its code (and its fixtures' and its module's helpers'
# code, followed three calls deep) refers to, and the fixtures it requests. `make
# test-fast` runs the tests with none of these marks; `make test` runs every test.

TIER_MARKS = {
    "slow": "full-size model builds, trained runs and end-to-end runs",
    "ray": "starts Ray (a sweep, compare-teachers, data-parallel training)",
    "subprocess": "runs the `ablate` CLI or Python in a child process",
    "postgres": "needs the throwaway PostgreSQL server (tests/pg.py)",
    "browser": "drives headless Chromium",
}
USES = {  # mark -> names whose use in a test's code implies it
    "ray": {"run_sweep", "compare_teachers", "TorchTrainer", "run_data_parallel",
            "train_parallel", "connect_ray", "ray"},
    "subprocess": {"subprocess", "Popen", "check_output"},
    "postgres": {"postgres_url", "fresh_postgres_url", "psycopg"},
    "browser": {"chromium"},
}
SLOW_FIXTURES = {  # fixtures that train, fit or build something large (seconds each)
    "run_folder", "tiny_run", "setup", "uninterrupted", "fitted", "adapted", "root", "two_processes",
    "twins", "files", "dit_teachers", "saved", "site", "mtcnn", "clips", "ffpp", "frames",
    "video", "small", "stats", "one_heavy_test_at_a_time",
}


def pytest_configure(config: pytest.Config) -> None:
    for mark, why in TIER_MARKS.items():
        config.addinivalue_line("markers", f"{mark}: {why}")


def _names(code, module_globals: dict, seen: set, depth: int) -> set[str]:  # noqa: ANN001
    """Names and strings a code object refers to, with those of the module's own helper
    functions it calls, `depth` calls deep."""
    import types

    if code in seen:
        return set()
    seen.add(code)
    found = set(code.co_names) | {c for c in code.co_consts if isinstance(c, str)}
    for const in code.co_consts:  # nested functions and lambdas
        if isinstance(const, types.CodeType):
            found |= _names(const, module_globals, seen, depth)
    if depth > 0:
        for name in list(found):
            helper = module_globals.get(name)
            inner = getattr(helper, "__code__", None)
            if inner is not None and getattr(helper, "__module__", None) == \
                    module_globals.get("__name__"):
                found |= _names(inner, module_globals, seen, depth - 1)
    return found


def tier_marks(item: pytest.Item) -> set[str]:
    """The tier marks a collected test earns from what it uses."""
    func = getattr(item, "function", None)
    if func is None:
        return set()
    fixtures = set(getattr(item, "fixturenames", ()))
    names: set[str] = set(fixtures)
    seen: set = set()
    names |= _names(func.__code__, func.__globals__, seen, 3)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for d in defs:
            f = getattr(d, "func", None)
            if f is not None and hasattr(f, "__code__"):
                names |= _names(f.__code__, f.__globals__, seen, 3)
    marks = {mark for mark, used in USES.items() if names & used}
    if any(n.startswith("train.processes=") and n != "train.processes=1" for n in names):
        marks.add("ray")  # a data-parallel run: Ray Train workers
    if names & {"memory_matrix", "--memory-matrix", "multiprocessing"}:
        marks.add("subprocess")  # one process per row (ablate.bench.levers)
    if fixtures & SLOW_FIXTURES:
        marks.add("slow")
    return marks


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for mark in tier_marks(item) - have:
            item.add_marker(getattr(pytest.mark, mark))
