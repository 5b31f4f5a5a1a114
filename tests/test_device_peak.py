"""A run's CPU peak memory is its own: a reused process (a Ray worker's next trial) once
reported the largest peak of every run before it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a fresh process, so the allocator holds no free pages from earlier tests (an xdist
# worker's heap can serve 50 MB without the resident set growing at all).
CHILD = """
import json
import numpy as np
from ablate.device import host_peak_mb, reset_host_peak

big = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MB, every page touched
after_big = host_peak_mb()
del big
reset_host_peak()
fresh = host_peak_mb()
small = np.ones(100 * 2**20, dtype=np.uint8)
print(json.dumps({"after_big": after_big, "fresh": fresh, "after_small": host_peak_mb()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_the_peak_starts_afresh_for_the_next_run():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    peaks = json.loads(out.strip().splitlines()[-1])
    assert peaks["fresh"] < peaks["after_big"] - 300, peaks  # the 400 MB no longer count
    assert peaks["after_small"] >= peaks["fresh"] + 80, peaks  # what comes after does
