"""Ray for a sweep: a local Ray or a cluster, checked before any trial is scheduled.

A trial that asks for more than any node has would wait for ever (Tune then
ends "finished" with no trials), and a node with a different ablate would
compute different numbers under the same name: both are one-line errors here.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from ablate.core.errors import AblateError, first_line
from ablate.core.paths import CONFIG_DIR_ENV, CONFIG_PATH_ENV, SPACES_DIR_ENV, SPACES_PATH_ENV
from ablate.plugins import ENV
from ablate.version import code_version

log = logging.getLogger(__name__)
# a local Ray whose GCS did not come up is started again this many times: two Rays starting
# on one machine at the same moment (two sweeps, two test workers) can miss each other's start
LOCAL_START_TRIES = 3


def check_request(cpus: float, gpus: float) -> None:
    """--cpus / --gpus are positive (cpu) and non-negative (gpu) numbers."""
    if cpus is None or cpus <= 0:
        raise AblateError(f"--cpus must be a positive number of CPUs per trial, not {cpus:g}")
    if gpus is None or gpus < 0:
        raise AblateError(f"--gpus must be 0 or more GPUs per trial, not {gpus:g}")


def local_capacity() -> dict[str, float]:
    """What a local Ray started by the sweep will have (without starting it)."""
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        pass
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def check_fits(per_trial: dict[str, float], nodes: list[dict[str, float]],
               where: str) -> None:
    """AblateError unless one trial's request fits on at least one node."""
    cpu, gpu = float(per_trial.get("cpu", 1)), float(per_trial.get("gpu", 0))
    if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
        return
    have = "; ".join(f"node {i + 1}: {_count(n.get('CPU', 0))} CPU, {_count(n.get('GPU', 0))} GPU"
                     for i, n in enumerate(nodes)) or "no nodes"
    raise AblateError(f"a trial asks for {_count(cpu)} CPU and {_count(gpu)} GPU but {where} "
                      f"has no node that large ({have}); lower --cpus/--gpus or the space's "
                      "resources, or add a bigger node")


def cluster_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]


def _count(value: float) -> str:
    return f"{value:g}"


def connect_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start a local Ray with
    `num_cpus` (default: this machine's)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our own live lines replace Tune's tables
    env = {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **plugin_env()}}
    if address:
        probe_ray(address)
    try:
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=False,
                     ignore_reinit_error=True)
        else:
            _start_local(num_cpus, env)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise AblateError(
            f"cannot reach a Ray cluster at {address}: {first_line(err)}; start one with "
            "`ray start --head` or drop --address to run locally"
        ) from None


def _start_local(num_cpus: int | None, env: dict[str, Any]) -> None:
    """A new local Ray of our own ("local": never one a killed driver left behind), started
    again after a short wait when its GCS did not come up (LOCAL_START_TRIES)."""
    import ray

    # Ray 2.60 turns token auth on for every new local cluster; after an earlier Ray in the
    # same process its driver can health-check the new GCS without the token and report
    # "Failed to start GCS" (seen in the suite, every time for the same tests). A cluster
    # ablate starts for itself and stops after the sweep runs without it unless the user
    # asks for it (RAY_AUTH_MODE=token); a cluster joined with --address keeps its own.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for attempt in range(1, LOCAL_START_TRIES + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                     include_dashboard=False, runtime_env=env, log_to_driver=False,
                     ignore_reinit_error=True)
            return
        except RuntimeError as err:
            if "Failed to start GCS" not in str(err) or attempt == LOCAL_START_TRIES:
                raise
            log.warning("local Ray did not start (%s); starting it again", first_line(err))
            ray.shutdown()
            time.sleep(2 * attempt)


def probe_ray(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on an unreachable address (ray.init would retry for minutes)."""
    if address == "auto":
        return  # ray finds the local cluster itself, and fails fast when there is none
    host_port = address.removeprefix("ray://").rsplit("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise AblateError(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT "
                          "(the head node's GCS port, 6379 by default, or client port 10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise AblateError(
            f"cannot reach a Ray cluster at {address} ({err.strerror or err}); start one with "
            "`ray start --head` or drop --address to run locally"
        ) from None


def plugin_env() -> dict[str, str]:
    """Plugins and extra config/space folders of this process, for every worker: each
    node must be able to import the plugin (installed there, or the .py file on a path
    it sees), as it must be able to import ablate itself."""
    names = (ENV, CONFIG_PATH_ENV, SPACES_PATH_ENV, CONFIG_DIR_ENV, SPACES_DIR_ENV)
    return {k: os.environ[k] for k in names if os.environ.get(k)}


def _node_version() -> tuple[str, str]:
    return socket.gethostname(), code_version()


def node_versions(timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """ablate's code version as each live node imports it (one tiny task per node)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(_node_version)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        n["NodeID"], soft=False)).remote() for n in nodes]
    try:
        answers = ray.get(refs, timeout=timeout_s)
    except Exception as err:  # noqa: BLE001 - any failure to import ablate on a node
        raise AblateError(f"a cluster node cannot run ablate ({first_line(err)}); install the same "
                          "ablate on every node (see README: Ray cluster)") from None
    return [{"node": n.get("NodeManagerAddress"), "host": host, "version": version}
            for n, (host, version) in zip(nodes, answers, strict=True)]


def check_versions(expected: str, versions: list[dict[str, Any]]) -> None:
    """AblateError naming each node whose ablate differs from the driver's."""
    wrong = [v for v in versions if v["version"] != expected]
    if wrong:
        listed = ", ".join(f"{v['node']} ({v['host']}) has {v['version']}" for v in wrong)
        raise AblateError(f"this driver runs ablate {expected} but {listed}; install the same "
                          "ablate (and plugins) on every node, then start the sweep again")
