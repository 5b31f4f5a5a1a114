"""How much host memory and disk a recipe's frames need, known before a frame is decoded.

Why: a run decodes every frame it reads into a uint8 cache before step 1 (S*S*3 bytes a
frame). FF++ sampled as in the paper is about a million frames, ~150 GB at 224 px per
trial: decoded into RAM, that is the OOM killer's, minutes (or hours) into a run. So the
frames needed are counted from the manifests (rows, never pixels), and where they do not fit
the budget (`data.host_memory_gb`, default half the RAM available) they go to the
memory-mapped frame store on disk (ablate/data/frame_store.py) at a default folder shared by
trials; where the disk has no room either, the run stops before decoding, saying so.

Phases, each its own cache, as the run holds them: `train` = the train split (with the
source and target frames of its fakes when the recipe is guided) and the val split, once per
data-parallel process (`train.processes`), beside the latent cache's budget
(`train.latent_cache_mb`); `test` = the test splits of `data.tests`, after training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablate.core.errors import AblateError
from ablate.core.paths import FRAME_STORE_DIR, RESULTS
from ablate.core.schema import setting
from ablate.data.sources import dataset_overrides, recipe_overrides, resolve_dataset
from ablate.locations import cache_base
from ablate.recipe import is_guided

log = logging.getLogger(__name__)

GIB = 2**30
MIB = 2**20
AUTO_FRACTION = 0.5  # data.host_memory_gb=auto: this share of the RAM available now
# a frame's key in a store shard's JSON index: '"<abs path>|<mtime ns>|<size>", '
INDEX_BYTES = len('"||", ') + 19 + 10
SETTING = "data.host_memory_gb"
LATENT_CHANNELS = 16  # the widest teacher latent (SD3, FLUX); SD 1.5/2.1/XL have 4


def human(n: float) -> str:
    """Bytes for a person: 1.23 GiB, 54.0 KiB."""
    for unit, scale in (("TiB", 2**40), ("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= scale:
            return f"{n / scale:.{2 if scale >= GIB else 1}f} {unit}"
    return f"{int(n)} bytes"


def needed_files(rows: pd.DataFrame, guided: bool) -> set[str]:
    """The files a dataset over `rows` decodes: every row's image and, guided, the source
    and target frames of its fakes (reals are their own partners). ManifestDataset preloads
    exactly these, so the plan counts what a run decodes."""
    files = set(rows["path"])
    if guided:
        fakes = rows[rows["label"] == 1]
        files |= set(fakes["source_path"].dropna()) | set(fakes["target_path"].dropna())
    return files


def frame_bytes(size: int) -> int:
    """One decoded frame: uint8 [size, size, 3]."""
    return size * size * 3


def disk_bytes(files: Iterable[str], size: int) -> int:
    """What `files` take in the frame store: the pixels plus their keys in the JSON index."""
    return sum(frame_bytes(size) + len(os.path.abspath(f)) + INDEX_BYTES for f in files)


# ------------------------------------------------------------------------- the machine


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What the container's memory limit leaves (cgroup v2, then v1): the OOM killer acts
    on it, not on the machine's free RAM. None without a limit."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:  # v1 writes a huge number for "no limit"
            return max(int(cap) - used, 0)
    return None


def available_memory() -> int:
    """Bytes of RAM a new allocation can take now: MemAvailable, or less where a cgroup
    limit leaves less (0 when neither can be read: then only disk is trusted)."""
    found = [b for b in (_meminfo_available(), _cgroup_room()) if b is not None]
    return min(found) if found else 0


def host_budget(cfg: Any) -> tuple[int, str]:
    """(bytes the decoded frames and the latent cache may take, how that was decided)."""
    value = setting(cfg, SETTING)
    if value == "auto":
        free = available_memory()
        return int(AUTO_FRACTION * free), (f"{SETTING}=auto: {AUTO_FRACTION:.0%} of "
                                           f"{human(free)} available")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise AblateError(f"{SETTING} must be auto or a number of GiB > 0, not {value!r}")
    return int(value * GIB), f"{SETTING}={value:g}"


def latent_reserve(cfg: Any, frames: int) -> int:
    """What the latent cache may hold beside the frames while training (guided): its budget
    (`train.latent_cache_mb`), or less where `frames` posteriors cannot fill it (one is
    2 x C x (S/8)^2 float32 = C*S*S/8 bytes; C <= 16 for the teachers here), so a small run
    on a small machine is not sent to disk for a budget it would never use."""
    if not is_guided(cfg) or not setting(cfg, "train.latent_cache"):
        return 0
    size = int(cfg.image_size)
    cap = int(float(setting(cfg, "train.latent_cache_mb")) * MIB)
    return min(cap, frames * LATENT_CHANNELS * size * size // 8)


def default_store() -> Path:
    """The shared frame store a run falls back to: results/cache/frames ($ABLATE_CACHE's)."""
    return cache_base() / FRAME_STORE_DIR.relative_to(RESULTS)


def disk_free(folder: Path) -> int:
    """Free bytes on the file system `folder` is (or would be) on."""
    probe = folder.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def stored_paths(folder: Path, size: int) -> set[str]:
    """Files whose decoded frame at `size` the store under `folder` already holds (by
    path, as its shard indexes list them; an edited file is decoded again, which the
    shortfall of a plan ignores)."""
    found: set[str] = set()
    for index in (folder.expanduser() / f"{size}px").glob("shard-*.json"):
        try:
            keys = json.loads(index.read_text()).get("keys", [])
        except (OSError, ValueError):
            continue
        found.update(str(k).rsplit("|", 2)[0] for k in keys)
    return found


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Phase:
    """One cache's frames and where they would go."""

    name: str  # train | test
    frames: int  # distinct files decoded
    ram_bytes: int  # decoded in memory, over all copies
    disk_bytes: int  # in the frame store, frames it does not hold yet
    budget_bytes: int  # what RAM may take for them
    place: str  # memory | disk | none (fits neither)


@dataclass(frozen=True)
class HostPlan:
    """A recipe's frames, their bytes in RAM and on disk, against the host's room."""

    image_size: int
    frame_bytes: int
    processes: int  # data-parallel copies of the train cache in RAM
    train_rows: int
    val_rows: int
    partner_frames: int  # source/target frames that are no train/val row's image
    train_frames: int  # distinct frames of the train phase (train + partners + val)
    train_ram_bytes: int
    train_disk_bytes: int
    test_frames: dict[str, int]  # per test set (its test split's images)
    test_total_frames: int  # distinct over all test sets
    test_ram_bytes: int
    test_disk_bytes: int
    latent_cache_bytes: int
    host_budget_bytes: int
    budget_source: str
    store: str  # where frames go on disk: data.frame_cache_dir or the shared default
    store_given: bool  # data.frame_cache_dir set: frames go there whatever fits
    disk_free_bytes: int
    phases: tuple[Phase, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phase(self, name: str) -> Phase:
        return next(p for p in self.phases if p.name == name)

    def describe(self) -> str:
        """One paragraph: what a run's frames take in RAM and on disk."""
        train = self.phase("train")
        where = {"memory": "fits in memory", "disk": f"goes to the frame store {self.store}",
                 "none": "fits neither RAM nor disk"}
        tests = ", ".join(f"{k} {v:,}" for k, v in self.test_frames.items()) or "none"
        return (
            f"Training reads {self.train_frames:,} distinct frames at {self.image_size}px "
            f"({self.train_rows:,} train rows, {self.val_rows:,} val rows, "
            f"{self.partner_frames:,} more source/target frames), {self.frame_bytes:,} bytes "
            f"each: {human(self.train_ram_bytes)} in RAM decoded"
            f"{f' (x{self.processes} processes)' if self.processes > 1 else ''}, "
            f"{human(self.train_disk_bytes)} more on disk in the frame store; the latent cache "
            f"may take {human(self.latent_cache_bytes)} beside them. Testing streams "
            f"{self.test_total_frames:,} frames ({tests}) and holds none (held, they would take "
            f"{human(self.test_ram_bytes)}). Host budget {human(self.host_budget_bytes)}"
            f" ({self.budget_source}); {human(self.disk_free_bytes)} free on disk at "
            f"{self.store}. Training {where[train.place]}."
        )

    def check(self) -> None:
        """A preflight: stop now, in one line, where training's frames fit neither RAM nor
        disk (evaluation streams its frames, so it always fits)."""
        for phase in self.phases:
            if phase.name == "train" and phase.place == "none":
                raise AblateError(_no_room(phase, self.image_size, self.budget_source,
                                           self.store, self.disk_free_bytes))


def host_plan(cfg: Any, train_table: pd.DataFrame | None = None,
              test_tables: Mapping[str, pd.DataFrame] | None = None) -> HostPlan:
    """The plan of recipe `cfg` from its manifests (read, or built from frame folders on
    first use, as a run would; pixels are never decoded). Tables already loaded may be
    given. Cheap: a few reads of CSVs and of the store's shard indexes."""
    size, guided = int(cfg.image_size), is_guided(cfg)
    if train_table is None:
        train_table = resolve_dataset(str(cfg.data.train), recipe_overrides(cfg))
    if test_tables is None:
        test_tables = {str(n): resolve_dataset(str(n), dataset_overrides(cfg, str(n)))
                       for n in setting(cfg, "data.tests")}
    train_rows = train_table[train_table["split"] == "train"]
    val_rows = train_table[train_table["split"] == "val"]
    images = set(train_rows["path"]) | set(val_rows["path"])
    train_files = needed_files(train_rows, guided) | images
    per_test = {name: set(t.loc[t["split"] == "test", "path"]) for name, t in test_tables.items()}
    test_files = set().union(*per_test.values()) if per_test else set()

    store, given = _store(cfg)
    budget, source = host_budget(cfg)
    processes = max(int(setting(cfg, "train.processes")), 1)
    reserve = latent_reserve(cfg, len(train_files))
    stored = stored_paths(store, size) if store.is_dir() else set()
    free = disk_free(store)
    train = _phase("train", train_files, size, processes, budget - reserve, given, stored, free)
    left = free - train.disk_bytes if train.place == "disk" else free  # the store keeps them
    phases = (train, _phase("test", test_files, size, 1, budget, given, stored, left))
    return HostPlan(
        image_size=size, frame_bytes=frame_bytes(size), processes=processes,
        train_rows=len(train_rows), val_rows=len(val_rows),
        partner_frames=len(train_files - images), train_frames=len(train_files),
        train_ram_bytes=phases[0].ram_bytes, train_disk_bytes=phases[0].disk_bytes,
        test_frames={k: len(v) for k, v in per_test.items()},
        test_total_frames=len(test_files), test_ram_bytes=phases[1].ram_bytes,
        test_disk_bytes=phases[1].disk_bytes, latent_cache_bytes=reserve,
        host_budget_bytes=budget, budget_source=source, store=str(store), store_given=given,
        disk_free_bytes=free, phases=phases,
    )


def _store(cfg: Any) -> tuple[Path, bool]:
    given = setting(cfg, "data.frame_cache_dir")
    return (Path(str(given)).expanduser(), True) if given else (default_store(), False)


def _phase(name: str, files: Collection[str], size: int, copies: int, budget: int,
           given: bool, stored: set[str], free: int) -> Phase:
    ram = len(files) * frame_bytes(size) * copies
    disk = disk_bytes((f for f in files if f not in stored), size)
    if not given and ram <= budget:
        place = "memory"
    else:
        place = "disk" if disk <= free else "none"
    return Phase(name, len(files), ram, disk, max(budget, 0), place)


def _no_room(phase: Phase, size: int, source: str, store: Path | str, free: int) -> str:
    return (
        f"the {phase.name} frames fit neither RAM nor disk: {phase.frames:,} frames at "
        f"{size}px need {human(phase.ram_bytes)} in RAM (budget "
        f"{human(phase.budget_bytes)}, {source}) or {human(phase.disk_bytes)} "
        f"on disk in {store} ({human(free)} free); free disk there, set "
        f"data.frame_cache_dir to a folder with room, or raise {SETTING} on a bigger machine"
    )


def frame_cache_dir(cfg: Any, files: Collection[str], phase: str = "train") -> str | None:
    """Where a run's cache of `files` lives, decided before any is decoded: None (memory)
    where they fit the host budget, else the frame store (data.frame_cache_dir, or the
    shared default, logged in one line); an AblateError with the plan where the disk has
    no room either. data.frame_cache_dir set: always there (if its disk has room)."""
    size = int(cfg.image_size)
    budget, source = host_budget(cfg)
    copies = 1
    if phase == "train":
        budget -= latent_reserve(cfg, len(files))
        copies = max(int(setting(cfg, "train.processes")), 1)
    store, given = _store(cfg)
    if not given and len(files) * frame_bytes(size) * copies <= budget:
        return None
    stored = stored_paths(store, size) if store.is_dir() else set()
    free = disk_free(store)
    found = _phase(phase, files, size, copies, budget, given, stored, free)
    if found.place == "none":
        raise AblateError(_no_room(found, size, source, store, free))
    if not given:
        log.warning("%s frames: %s frames at %dpx need %s decoded, over the %s host budget "
                    "(%s); using the on-disk frame store %s (%s more there)", phase,
                    f"{found.frames:,}", size, human(found.ram_bytes),
                    human(found.budget_bytes), source, store, human(found.disk_bytes))
    return str(store)
