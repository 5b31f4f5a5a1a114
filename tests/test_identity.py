"""Identity by content (ablate/core/identity.py): a result is named by the bytes it was
computed on and the precision it computed in, never by the paths it read them from; and a
database written before this rule keeps working (tests/data/results_v4.db was written by the
schema-v4 ablate, commit 5cce7f9: one tiny sweep `v4`, and `v4path` on a tiny-sd15 twin
saved with save_pretrained and read back from /tmp/v4run/twin)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import TINY_RUN

import ablate.reuse_key as keys
from ablate.core.identity import identity, resolve_precision
from ablate.recipe import compose, recipe_hash, result_dict
from ablate.results import ResultsDB
from ablate.results.schema import SCHEMA_VERSION
from ablate.reuse_key import reuse_key
from ablate.schedule import run_precision

FIXTURE = Path(__file__).parent / "data" / "results_v4.db"
# the recipe of the fixture's trials, as its sweeps composed it (space fixed part + tests)
FIXTURE_RECIPE = ["teacher=tiny-sd15", "backbone=tiny", "image_size=32", "data.train=synth-blend",
                  "train=cpu", "train.steps=4", "train.batch_size=4", "train.eval_every=2",
                  "train.log_every=2", "data.tests=[synth-colour]", "seed=0"]


@pytest.fixture
def digests(tmp_path, monkeypatch):
    """File digests cached in tmp (the shared benchmark stays shared)."""
    monkeypatch.setenv("ABLATE_CACHE", str(Path("results").resolve()))
    monkeypatch.setattr(keys, "cache_folder", lambda: tmp_path / "cache")
    return tmp_path


def _twin(folder: Path, tiny_teachers) -> Path:  # noqa: ANN001
    tiny_teachers["tiny-sd15"].save_pretrained(folder)
    return folder


def test_same_teacher_weights_at_two_paths_are_one_identity_and_new_bytes_another(
        digests, tiny_teachers):
    here = _twin(digests / "mount-a" / "sd15", tiny_teachers)
    there = shutil.copytree(here, digests / "mount-b" / "elsewhere")
    a = reuse_key(compose([*TINY_RUN, f"teacher.path={here}"]))
    b = reuse_key(compose([*TINY_RUN, f"teacher.path={there}"]))
    assert a == b  # recipe hash, teacher digest and identity alike

    unet = there / "unet" / "diffusion_pytorch_model.safetensors"
    blob = bytearray(unet.read_bytes())
    blob[-1] ^= 1  # one bit of one weight: other bytes behind the same path
    unet.write_bytes(bytes(blob))
    changed = reuse_key(compose([*TINY_RUN, f"teacher.path={there}"]))
    assert changed["recipe_hash"] == a["recipe_hash"]  # the settings are the same
    assert changed["teacher_sha"] != a["teacher_sha"] and changed["identity"] != a["identity"]
    # a path is still not nothing: weights read from a file are not the twin built in code
    assert recipe_hash(compose(TINY_RUN)) != a["recipe_hash"]


def test_encoder_weights_count_by_bytes_not_path(digests):
    first = digests / "a" / "b4.safetensors"
    first.parent.mkdir()
    first.write_bytes(b"\x01" * 4096)
    second = digests / "b" / "renamed.safetensors"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    a, b = (reuse_key(compose([*TINY_RUN, f"backbone.pretrained_path={p}"]))
            for p in (first, second))
    assert a == b
    second.write_bytes(b"\x02" * 4096)
    c = reuse_key(compose([*TINY_RUN, f"backbone.pretrained_path={second}"]))
    assert c["identity"] != a["identity"]
    none = reuse_key(compose(TINY_RUN))
    assert none["identity"] != a["identity"] and none["recipe_hash"] != a["recipe_hash"]


def test_a_manifest_counts_by_its_rows_not_its_folder(digests):
    from ablate.data import sources

    table = sources.resolve_dataset("synth-colour")
    one, two = digests / "x" / "colour.csv", digests / "y" / "colour.csv"
    for path in (one, two):
        path.parent.mkdir()
        table.to_csv(path, index=False)
    a, b = (compose([*TINY_RUN, f"data.tests=[{p}]"]) for p in (one, two))
    assert recipe_hash(a) == recipe_hash(b)
    assert result_dict(a)["data"]["tests"] == ["colour.csv"]  # the column header it gets
    assert reuse_key(a) == reuse_key(b)


def test_precision_auto_enters_the_identity_resolved():
    # the rule, against a hand-worked table
    assert resolve_precision("auto", on_gpu=False, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", on_gpu=True, bf16_supported=False) == "fp32"
    assert resolve_precision("fp32", on_gpu=True, bf16_supported=True) == "fp32"
    # this CPU machine: auto computes in fp32, an explicit bf16 in bf16
    assert run_precision(compose([*TINY_RUN, "train.precision=auto"])) == "fp32"
    assert run_precision(compose([*TINY_RUN, "train.precision=bf16"])) == "bf16"
    cfg = compose([*TINY_RUN, "train.precision=auto"])
    on_cpu, on_gpu = reuse_key(cfg, "fp32"), reuse_key(cfg, "bf16")
    assert on_cpu["recipe_hash"] == on_gpu["recipe_hash"]  # one request ...
    assert on_cpu["identity"] != on_gpu["identity"]  # ... two computations


def _open_copy(tmp_path: Path) -> str:
    copy = tmp_path / "old.db"
    shutil.copy(FIXTURE, copy)
    return f"sqlite:///{copy}"


def test_database_of_the_v4_ablate_keeps_working(tmp_path, digests, tiny_teachers):
    url = _open_copy(tmp_path)
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        before = dict(conn.execute("SELECT id, identity FROM ablate_trials").fetchall())
    with ResultsDB(url) as db:
        trials = db.trials().set_index("id")
        plain, weights = trials.loc[1], trials.loc[2]
        # no path, fp32 (a CPU sweep): the stored identity was already right and stays
        assert plain["identity"] == before[1]
        assert plain["identity"] == reuse_key(compose(FIXTURE_RECIPE))["identity"]
        # the teacher read from /tmp/v4run/twin: the same bytes elsewhere are the same result
        moved = _twin(digests / "another-mount" / "twin", tiny_teachers)
        now = reuse_key(compose([*FIXTURE_RECIPE, f"teacher.path={moved}"]))
        assert weights["identity"] != before[2] and weights["identity"] == now["identity"]
        assert weights["recipe_hash"] == now["recipe_hash"]
        assert "/tmp/v4run" not in weights["recipe_json"]  # stored recipes are path-free too
        assert db.finished_trial(now["identity"], 0)["id"] == 2  # what a sweep reuses


def test_migration_never_guesses_a_precision(tmp_path):
    """An old trial whose sweep had GPUs and whose run folder is gone computed in bf16 or in
    fp32: nobody knows, so it is never reused; one whose run.json says bf16 gets bf16."""
    url = _open_copy(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"speed": {"precision": "bf16"}}))
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        conn.execute("UPDATE ablate_sweeps SET settings_json = :s",
                     {"s": json.dumps({"resources": {"cpu": 1, "gpu": 1}})})
        conn.execute("UPDATE ablate_trials SET run_dir = '/gone' WHERE id = 1")
        conn.execute("UPDATE ablate_trials SET run_dir = :r WHERE id = 2", {"r": str(run)})
        stored = {r[0]: r[1:] for r in conn.execute(
            "SELECT id, recipe_hash, data_sha, teacher_sha FROM ablate_trials")}
    with ResultsDB(url) as db:
        trials = db.trials().set_index("id")
    assert trials.loc[1, "identity"] is None or trials["identity"].isna()[1]
    h, data, teacher = trials.loc[2, ["recipe_hash", "data_sha", "teacher_sha"]]
    assert (data, teacher) == stored[2][1:]
    assert trials.loc[2, "identity"] == identity(h, data, teacher, precision="bf16")
    assert trials.loc[2, "identity"] != identity(h, data, teacher)  # not the fp32 one


@pytest.mark.slow
def test_a_run_moved_to_another_path_is_reused(tmp_path, digests, tiny_teachers, monkeypatch):
    """The fixture's teacher-from-a-path trial, its weights now at another path: a sweep of
    the same recipe reuses it instead of training."""
    from ablate.sweep import run_sweep

    url = _open_copy(tmp_path)
    moved = _twin(tmp_path / "moved-teacher", tiny_teachers)
    space = (Path(__file__).parent / "data" / "results_v4_space.yaml").read_text()
    (tmp_path / "space.yaml").write_text(space.replace("TEACHER_PATH", str(moved)))
    monkeypatch.chdir(tmp_path)
    # the fixture's code version is not this one: reused only when asked (by design)
    run_sweep(str(tmp_path / "space.yaml"), db_url=url, name="moved", n_boot=20,
              reuse_any_version=True)
    rows = ResultsDB(url).trials("moved")
    assert list(rows["status"]) == ["reused"] and list(rows["reused_from"]) == [2]
    assert not list((tmp_path / "results" / "runs" / "moved").glob("*"))  # nothing trained
    with sa.create_engine(url).connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM ablate_schema")).scalar() == SCHEMA_VERSION
