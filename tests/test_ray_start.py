"""A local Ray whose GCS does not come up (two Rays starting at one moment on one machine)
is started again; any other failure, or the last try's, is the usual one line."""

from __future__ import annotations

import pytest

from ablate.core.errors import AblateError
from ablate.sweep import cluster


def fake_ray(monkeypatch, failures: list[str]) -> list[str]:  # noqa: ANN001
    import ray

    calls: list[str] = []

    def init(**kwargs):  # noqa: ANN003, ANN202
        calls.append("init")
        if failures:
            raise RuntimeError(failures.pop(0))

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)
    return calls


def test_a_gcs_that_did_not_start_is_started_again(monkeypatch):
    calls = fake_ray(monkeypatch, ["Failed to start GCS.  Last 0 lines of error files:"])
    cluster.connect_ray(None, num_cpus=1)
    assert calls == ["init", "shutdown", "init"]


def test_other_failures_and_the_last_try_are_one_line(monkeypatch):
    calls = fake_ray(monkeypatch, ["Failed to start GCS."] * cluster.LOCAL_START_TRIES)
    with pytest.raises(AblateError, match="cannot reach a Ray cluster at None: Failed to start"):
        cluster.connect_ray(None, num_cpus=1)
    assert calls.count("init") == cluster.LOCAL_START_TRIES
    calls = fake_ray(monkeypatch, ["something else"])
    with pytest.raises(AblateError, match="something else"):
        cluster.connect_ray(None, num_cpus=1)
    assert calls == ["init"]  # not a start race: not retried
