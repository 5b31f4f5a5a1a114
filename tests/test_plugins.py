"""Variants from a researcher's own package: a throwaway package with one filter class
and one YAML, pip-installed (into a temp folder on PYTHONPATH, so the test venv stays
as it is) with an `ablate.variants` entry point, used through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ABLATE = Path(sys.executable).parent / "ablate"
TINY = ["backbone=tiny", "image_size=32", "train.steps=2", "train.batch_size=4",
        "train.eval_every=0"]

VARIANTS = '''
"""A user's filter: ablate's conv-only filter with a learnt output gain."""
import torch
from torch import nn

from ablate.model.filter import FeatureFilter
from ablate.registry import FILTERS


@FILTERS.register("gainfilter", "conv -> upsample -> conv, times a learnt gain (a plugin)")
class GainFilter(nn.Module):
    def __init__(self, in_channels, out_channels, in_size, out_size, gain: float = 1.0):
        super().__init__()
        self.inner = FeatureFilter(in_channels, out_channels, in_size, out_size, width=16,
                                   channel_attn=False, spatial_attn=False, mhsa=False)
        self.gain = nn.Parameter(torch.tensor(float(gain)))

    def forward(self, feats):
        return self.inner(feats) * self.gain
'''

SPACE = """
description: "plugin space: the user's filter against paper"
fixed: {teacher: tiny-sd15, backbone: tiny, image_size: 32, train.steps: 4,
        train.batch_size: 4, train.eval_every: 2, data.train: synth-blend}
params:
  filter: {choice: [gainfilter, paper]}
objectives: [{metric: val_auc, mode: max}]
budget: {trials: 2, max_concurrent: 2}
seeds: 1
early_stopping: {enabled: false}
resources: {cpu: 1, gpu: 0}
tests: [synth-colour]
sampler: {name: grid, seed: 0}
"""


def _write_package(root: Path, variants: str = VARIANTS) -> Path:
    pkg = root / "src" / "mypkg"
    (pkg / "configs" / "filter").mkdir(parents=True)
    (pkg / "search_spaces").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "variants.py").write_text(variants)
    (pkg / "configs" / "filter" / "gainfilter.yaml").write_text("name: gainfilter\ngain: 1.0\n")
    (pkg / "search_spaces" / "mine.yaml").write_text(SPACE)
    (root / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mypkg"
        version = "0.3.0"

        [project.entry-points."ablate.variants"]
        mine = "mypkg.variants"

        [tool.setuptools.packages.find]
        where = ["src"]

        [tool.setuptools.package-data]
        mypkg = ["configs/**/*.yaml", "search_spaces/*.yaml"]
    """))
    return root


def _install(source: Path, target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = _write_package(tmp_path_factory.mktemp("mypkg"))
    return _install(root, tmp_path_factory.mktemp("site"))


def _ablate(*args: str, cwd: Path, site: Path | None = None, timeout: int = 300,
            **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "ABLATE_CACHE": str(Path("results").resolve()), **env}
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site),
                                                              environ.get("PYTHONPATH")]))
    return subprocess.run([str(ABLATE), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environ)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_installed_plugin_is_listed_with_its_origin(site, tmp_path):
    proc = _ablate("list", "filter", cwd=tmp_path, site=site)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "gainfilter" in ln)
    assert "[from mine]" in line
    assert "[from" not in next(ln for ln in proc.stdout.splitlines() if ln.split()[:1] == ["paper"])
    assert "gainfilter" not in _ablate("list", "filter", cwd=tmp_path).stdout  # not installed


def test_plugin_filter_trains_and_its_identity_is_in_the_hash(site, tmp_path):
    proc = _ablate("train", "--quiet", "filter=gainfilter", "filter.gain=0.5", *TINY,
                   cwd=tmp_path, site=site)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / proc.stdout.strip().splitlines()[-1].split("run saved to ")[1]
    recipe = (run / "recipe.yaml").read_text()
    assert "name: gainfilter" in recipe and "gain: 0.5" in recipe  # its YAML composed
    from safetensors.torch import load_file

    trained = load_file(run / "trainable.safetensors")
    assert "filter_source.gain" in trained  # the plugin's own parameter was trained

    def dry_hash(where: Path | None, variant: str = "gainfilter") -> str:
        out = _ablate("train", "--dry-run", f"filter={variant}", *TINY, cwd=tmp_path,
                      site=where)
        assert out.returncode == 0, out.stderr
        return next(ln for ln in out.stdout.splitlines() if ln.startswith("recipe hash:"))

    before = dry_hash(site)
    # the same code installed elsewhere (another node, another venv): the same identity
    again = _install(_write_package(tmp_path / "again"), tmp_path / "site-again")
    assert dry_hash(again) == before
    assert dry_hash(site, "paper") == dry_hash(None, "paper")  # built-ins are not the plugin's
    changed = _write_package(tmp_path / "changed", VARIANTS.replace(
        "self.inner(feats) * self.gain", "self.inner(feats) * self.gain * 2"))
    assert dry_hash(_install(changed, tmp_path / "site2")) != before  # new code, new identity


def test_two_trial_sweep_with_the_plugin_space(site, tmp_path):
    db = f"sqlite:///{tmp_path / 'r.db'}"
    proc = _ablate("sweep", "--space", "mine", "--db", db, "--name", "plug", cwd=tmp_path,
                   site=site, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from ablate.results import ResultsDB

    trials = ResultsDB(db).trials("plug")
    assert sorted(trials["status"]) == ["finished", "finished"]
    recipes = [t for t in trials["recipe_json"] if '"gainfilter"' in t]
    assert len(recipes) == 1 and '"plugins"' in recipes[0] and '"mypkg.variants"' in recipes[0]
    sweep = ResultsDB(db).list_sweeps().set_index("name").loc["plug"]
    assert "+mine==0.3.0@" in sweep["code_version"]


def test_loose_file_plugin_and_config_path(tmp_path):
    conf = tmp_path / "my conf, v2 [draft]"  # Hydra's override grammar must not see these
    (conf / "filter").mkdir(parents=True)
    (conf / "filter" / "gainfilter.yaml").write_text("name: gainfilter\ngain: 2\n")
    (tmp_path / "myfilter.py").write_text(VARIANTS)
    proc = _ablate("--plugin", "myfilter.py", "--config-path", conf.name, "train", "--dry-run",
                   "filter=gainfilter", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    env = _ablate("train", "--dry-run", "filter=gainfilter", *TINY, cwd=tmp_path,
                  ABLATE_PLUGINS=str(tmp_path / "myfilter.py"),
                  ABLATE_CONFIG_PATH=str(conf))
    assert env.returncode == 0, env.stderr
    assert "gain: 2" in proc.stdout and "gain: 2" in env.stdout


def test_bad_plugins_are_one_line_errors_naming_the_plugin(tmp_path):
    assert "plugin nosuchmod: no module named 'nosuchmod'" in _one_error_line(
        _ablate("--plugin", "nosuchmod", "list", cwd=tmp_path))
    (tmp_path / "broken.py").write_text("import math\nraise RuntimeError('typo in my plugin')\n")
    line = _one_error_line(_ablate("--plugin", "broken.py", "list", cwd=tmp_path))
    assert "broken.py" in line and "typo in my plugin" in line
    (tmp_path / "clash.py").write_text(
        "from ablate.registry import FILTERS\n"
        "FILTERS.register('paper', 'mine')(lambda **kw: None)\n")
    line = _one_error_line(_ablate("--plugin", "clash.py", "list", cwd=tmp_path))
    assert "plugin clash.py" in line and "'paper' is registered twice" in line
    (tmp_path / "twice.py").write_text(
        "from ablate.registry import WEIGHTS\n"
        "for _ in range(2):\n    WEIGHTS.register('myweight', 'mine')(lambda **kw: None)\n")
    assert "plugin twice.py" in _one_error_line(
        _ablate("--plugin", "twice.py", "list", cwd=tmp_path))
    (tmp_path / "empty").mkdir()
    assert "no .yaml files" in _one_error_line(
        _ablate("--config-path", "empty", "list", cwd=tmp_path))


BAD_SHAPES = '''
"""Three plugins that break their slot's contract."""
import torch
from torch import nn

from ablate.model.backbone import TimmBackbone
from ablate.registry import BACKBONES, FILTERS, WEIGHTS


@FILTERS.register("offgrid", "forgets to upsample to the latent grid")
class OffGrid(nn.Module):
    def __init__(self, in_channels, out_channels, in_size, out_size):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, feats):
        return self.conv(feats)


@WEIGHTS.register("perchannel", "one weight per channel, not per sample")
class PerChannel(nn.Module):
    has_loss, detach = False, False

    def __init__(self, in_channels):
        super().__init__()
        self.fc = nn.Linear(in_channels, 4)

    def forward(self, feats):
        return self.fc(feats.mean(dim=(2, 3)))


class Wide(TimmBackbone):
    def forward(self, x):
        feats = super().forward(x)
        return torch.cat([feats, feats], dim=-1)  # a grid twice as wide as it is tall


@BACKBONES.register("wide", "a non-square feature grid")
def wide(image_size=32):
    return Wide("test_efficientnet", image_size, None)
'''


@pytest.mark.parametrize("override,expected", [
    ("filter=offgrid", "filter variant 'offgrid' (badshapes.OffGrid) returns [2, 32, 1, 1] for "
                       "an input of shape [2, 256, 1, 1]; expected [2, 32, 4, 4]"),
    ("weight=perchannel", "weight variant 'perchannel' (badshapes.PerChannel) returns [2, 4] "
                          "for an input of shape [2, 256, 1, 1]; expected [2] or [2, 1]"),
    ("backbone=wide", "backbone variant 'wide' (badshapes.Wide) returns [2, 256, 1, 2] for an "
                      "input of shape [2, 3, 32, 32]; expected [2, 256, 2, 2]"),
])
def test_a_plugin_that_breaks_its_slots_contract_is_one_line_at_build_time(
        tmp_path, override, expected):
    (tmp_path / "badshapes.py").write_text(BAD_SHAPES)
    conf = tmp_path / "conf"
    for slot, name in (("filter", "offgrid"), ("weight", "perchannel"), ("backbone", "wide")):
        (conf / slot).mkdir(parents=True, exist_ok=True)
        (conf / slot / f"{name}.yaml").write_text(f"name: {name}\n")
    line = _one_error_line(_ablate("--plugin", "badshapes.py", "--config-path", "conf", "train",
                                   "--dry-run", *TINY, override, cwd=tmp_path))
    assert expected in line, line
