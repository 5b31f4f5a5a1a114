"""A run's CPU peak memory is its own: a reused process (a Ray worker's next trial) once
reported the largest peak of every run before it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ablate.device import host_peak_mb, reset_host_peak


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_peak_starts_afresh_for_the_next_run():
    big = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MB, every page touched
    after_big = host_peak_mb()
    del big
    reset_host_peak()
    fresh = host_peak_mb()
    assert fresh < after_big - 300, (after_big, fresh)  # the 400 MB are no longer counted
    small = np.ones(50 * 2**20, dtype=np.uint8)
    assert host_peak_mb() >= fresh + 40  # and what the next run allocates is
    del small
