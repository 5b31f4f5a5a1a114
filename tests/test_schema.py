"""The typed recipe (ablate/core/schema.py): every shipped key is declared, the schema's
defaults are the YAML's, what stays out of a result's identity is derived from the
declarations, an unknown key is one line naming the nearest known one, and no recipe setting
keeps a default of its own at a `.get("key", default)` call site."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from ablate.core import schema
from ablate.core.errors import AblateError
from ablate.core.names import SLOTS
from ablate.core.schema import Setting
from ablate.recipe import compose, recipe_hash, result_dict, valid_keys

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# NON_RESULT_KEYS as it was kept by hand in ablate/recipe.py before the schema (issue 23):
# the derived one must stay this set unless a change means to re-run (or reuse) results.
OLD_NON_RESULT_KEYS = {
    "run", "train.device", "train.log_every", "train.channels_last", "train.attention",
    "train.grad_checkpointing", "train.branch_backward", "train.compile", "train.latent_cache",
    "train.latent_cache_dir", "train.latent_cache_mb", "train.loader_workers", "train.pin_memory",
    "train.processes", "data.frame_cache_dir",
    "data.host_memory_gb",  # added later: where decoded frames live, not what is computed
    "data.roots",  # added later: where a dataset's frames are (the reuse key hashes its rows)
}
# ... and EVAL_DEFAULTS + UNSET_KEYS, the keys left out of the hash at their default / null
OLD_OMIT_AT_DEFAULT = {
    "eval.eer": "interpolated", "eval.bootstrap_unit": "auto", "guide.layers": None,
    "teacher.vae_path": None, "teacher.clip_l_path": None, "teacher.clip_g_path": None,
    "teacher.t5_path": None,
    "train.select": "best_val", "train.proxy": None,  # added later: checkpoint selection rule
    # added later: encoder tuning and feature taps, the 2025 detectors' loss terms
    "backbone.tuning": "full", "backbone.lora_rank": 8, "backbone.lora_alpha": 16.0,
    "backbone.lora_dropout": 0.0, "backbone.lora_targets": ("attn.qkv", "attn.proj"),
    "backbone.svd_rank": None, "backbone.svd_targets": ("attn.qkv", "attn.proj"),
    "backbone.taps": None, "backbone.pool": "mean", "backbone.l2_normalize": False,
    "loss.orthogonal": 0.0, "loss.singular": 0.0, "loss.uniformity": 0.0, "loss.alignment": 0.0,
    # added later: the guide's structure, a search axis (issue 27)
    "guide.blocks": None, "guide.inject": "all", "guide.zero_init": True, "guide.depth": 1,
    "train.t_min": 0.0, "train.t_max": 1.0,  # added later: the guided step's timestep range
    "weight.pool": "mean",  # added later: how the weight module pools the grid
}


def _plain(value):
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return list(value) if isinstance(value, tuple) else value


def _slot_keys(slot: str, variant: str) -> list[str] | None:
    return valid_keys(OmegaConf.create({slot: {"name": variant}}), slot)


def _undeclared(key: str) -> str | None:
    """Why a dotted recipe key (a space's or a preset's) is not in the schema, else None.
    A slot key counts when some registered variant of the slot takes it."""
    from ablate.registry import registry

    key = key.lstrip("+~")
    parent, _, leaf = key.rpartition(".")
    if not parent:  # a setting, a slot's variant, or the preset group (recipe=paper)
        ok = key in schema.known_keys() or key == "recipe"
        return None if ok else f"{key}: not a top-level key"
    if parent in SLOTS:
        takes = [_slot_keys(parent, name) for name in registry(parent).names()]
        ok = any(t is None or leaf in t for t in takes)
        return None if ok else f"{key}: no {parent} variant takes {leaf!r}"
    return None if leaf in schema.known_keys(parent) else f"{key}: not a {parent} setting"


def _flat(mapping: dict, prefix: str = "") -> list[str]:
    """Dotted keys of a config file's settings, groups opened one level (values that are
    mappings inside a group, none today, would be settings themselves)."""
    out = []
    for key, value in mapping.items():
        if key == "defaults":
            continue
        dotted = f"{prefix}{key}"
        if not prefix and isinstance(value, dict) and key not in schema.TOP_LEVEL:
            out.extend(_flat(value, f"{dotted}."))
        else:
            out.append(dotted)
    return out


# ------------------------------------------------------------------- (a) every key declared


def test_every_slot_variant_yaml_key_is_name_or_a_factory_argument():
    for slot in SLOTS:
        for path in sorted((CONFIGS / slot).glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            takes = _slot_keys(slot, data["name"])
            extra = sorted(set(data) - set(takes)) if takes is not None else []
            assert not extra, f"{path.relative_to(ROOT)}: {extra} not in {takes}"


@pytest.mark.parametrize("group", ["train", "loss"])
def test_every_group_variant_yaml_key_is_declared(group):
    for path in sorted((CONFIGS / group).glob("*.yaml")):
        extra = sorted(set(yaml.safe_load(path.read_text())) - set(schema.known_keys(group)))
        assert not extra, f"{path.relative_to(ROOT)}: {extra} are not declared {group} settings"


def test_config_yaml_and_presets_keys_are_declared():
    """configs/config.yaml and configs/recipe/*.yaml (`@package _global_`: top-level keys and
    groups). configs/data/*.yaml are dataset configs (an adapter's settings, named by
    data.train / data.tests), not recipe keys."""
    files = [CONFIGS / "config.yaml", *sorted((CONFIGS / "recipe").glob("*.yaml"))]
    for path in files:
        keys = _flat(yaml.safe_load(path.read_text()) or {})
        problems = [p for p in map(_undeclared, keys) if p]
        assert not problems, f"{path.relative_to(ROOT)}: {problems}"
        for line in (yaml.safe_load(path.read_text()) or {}).get("defaults", []):
            if isinstance(line, dict):  # `- backbone: tiny`, `- override /guide: none`
                group = next(iter(line)).removeprefix("override /")
                assert group in schema.known_keys() or group == "recipe", (path, group)


def test_every_search_space_key_is_declared():
    from ablate.space import load_space

    spaces = sorted((ROOT / "search_spaces").glob("*.yaml"))
    assert spaces
    for path in spaces:
        space = load_space(str(path))
        keys = [*space.fixed, *(p.key for p in space.params)]
        problems = [p for p in map(_undeclared, keys) if p]
        assert not problems, f"{path.name}: {problems}"


def test_composed_presets_pass_the_key_check():
    for preset in ("", "recipe=paper", "recipe=official_code", "recipe=baseline"):
        compose([preset] if preset else [])  # validate() checks every key


# ----------------------------------------------------------- (b) YAML and schema agree


def test_schema_defaults_are_the_default_recipes_values():
    cfg = compose([])
    present = 0
    for key, declared in schema.declared().items():
        node = OmegaConf.select(cfg, key, default="<absent>")
        if node == "<absent>":
            continue
        present += 1
        assert _plain(node) == _plain(declared.default), (key, node, declared.default)
    groups = sum(len(g.settings) for g in schema.GROUPS.values()) + len(schema.TOP_LEVEL)
    assert present >= groups  # every group setting ships in config.yaml + the default variants


def test_setting_reads_the_recipe_else_the_schema_default():
    cfg = compose(["train.eval_every=7"])
    assert schema.setting(cfg, "train.eval_every") == 7
    assert schema.setting(cfg, "eval.eer") == "interpolated"
    old = OmegaConf.create({"train": {"steps": 5}, "data": {}})  # saved before keys existed
    assert schema.setting(old, "train.eval_every") == 20
    assert schema.setting(old, "eval.bootstrap_unit") == "auto"
    assert schema.setting(old, "data.tests") == ["synth-blend", "synth-colour", "synth-warp",
                                                 "synth-lowres"]
    assert schema.group_setting(old.train, "train.loader_workers") == 0
    assert schema.setting({"train": {"grad_clip": None}}, "train.grad_clip") is None  # set: null
    with pytest.raises(AblateError, match=r"'train.evalevery'; did you mean 'train.eval_every'"):
        schema.setting(cfg, "train.evalevery")


# -------------------------------------------------------- (c) derived, never hand-listed


def test_non_result_keys_are_the_recorded_list():
    from ablate import recipe

    assert set(schema.NON_RESULT_KEYS) == OLD_NON_RESULT_KEYS
    assert len(schema.NON_RESULT_KEYS) == len(OLD_NON_RESULT_KEYS)
    assert recipe.NON_RESULT_KEYS == schema.NON_RESULT_KEYS
    assert schema.omit_at_default() == OLD_OMIT_AT_DEFAULT
    assert schema.FILE_KEYS == ("path", "lora", "vae_path", "clip_l_path", "clip_g_path",
                                "t5_path")


def test_a_new_setting_declared_result_false_stays_out_of_the_hash(monkeypatch):
    cfg = compose([])
    OmegaConf.set_struct(cfg, False)
    cfg.train.prefetch = 4  # a new speed setting, in the YAML and the schema
    before = recipe_hash(cfg)
    assert "prefetch" in result_dict(cfg)["train"]  # undeclared: it would count
    monkeypatch.setitem(schema.GROUPS["train"].settings, "prefetch",
                        Setting(2, "batches loaded ahead", result=False))
    assert "train.prefetch" in schema.non_result_keys()
    assert "prefetch" not in result_dict(cfg)["train"]
    assert recipe_hash(cfg) != before and recipe_hash(cfg) == recipe_hash(compose([]))


def test_a_new_setting_declared_hash_when_default_false_keeps_old_hashes(monkeypatch):
    monkeypatch.setitem(schema.GROUPS["eval"].settings, "ci",
                        Setting(0.95, "interval level", hash_when_default=False))
    base = compose([])
    OmegaConf.set_struct(base, False)
    base.eval.ci = 0.95
    assert recipe_hash(base) == recipe_hash(compose([]))
    base.eval.ci = 0.9
    assert recipe_hash(base) != recipe_hash(compose([]))


# ---------------------------------------------------- (d) one line, the nearest known key


@pytest.mark.parametrize("override,expected", [
    ("train.step=5", "unknown recipe key 'train.step'; did you mean 'train.steps'? "
                     "(valid keys under train: attention, batch_size,"),
    ("+train.step=5", "unknown recipe key 'train.step'; did you mean 'train.steps'?"),
    ("trian.steps=5", "unknown recipe key 'trian.steps'; did you mean 'train.steps'?"),
    ("imagesize=32", "unknown recipe key 'imagesize'; did you mean 'image_size'?"),
    ("filter.hedas=2", "unknown recipe key 'filter.hedas'; did you mean 'filter.heads'? "
                       "(valid keys under filter: heads, name, order, width)"),
    ("eval.boostrap_unit=video", "did you mean 'eval.bootstrap_unit'?"),
])
def test_unknown_key_on_the_command_line_is_one_line_with_the_nearest(override, expected):
    with pytest.raises(AblateError) as info:
        compose([override])
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_a_known_key_missing_from_the_yaml_is_added_with_plus():
    with pytest.raises(AblateError, match=r"'filter.order' is not in the composed .* "
                                          r"\+filter.order=VALUE"):
        compose(["filter.order=code"])
    assert compose(["+filter.order=code"]).filter.order == "code"  # a factory argument
    with pytest.raises(AblateError, match=r"unknown recipe key 'guide.layers' \(valid keys "
                                          r"under guide: depth, name, shared, width, zero_init\)"):
        compose(["guide=adapter", "+guide.layers=3"])  # controlnet's, not the adapter's


def test_unknown_key_in_a_config_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    text = (CONFIGS / "train" / "cpu.yaml").read_text().replace("lr: 1.0e-4", "lr_rate: 1.0e-4")
    (tmp_path / "train" / "mine.yaml").write_text(text)
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(tmp_path))
    with pytest.raises(AblateError) as info:
        compose(["train=mine"])
    assert str(info.value).startswith("unknown recipe key 'train.lr_rate'; did you mean "
                                      "'train.lr'?"), info.value


def test_a_config_file_missing_a_result_setting_is_one_line(tmp_path, monkeypatch):
    # read as its default while hashing as absent, it could reuse a result trained otherwise
    (tmp_path / "train").mkdir()
    text = (CONFIGS / "train" / "cpu.yaml").read_text()
    kept = "\n".join(ln for ln in text.splitlines() if not ln.startswith("eval_every:"))
    assert kept != text
    (tmp_path / "train" / "mine.yaml").write_text(kept)
    monkeypatch.setenv("ABLATE_CONFIG_PATH", str(tmp_path))
    with pytest.raises(AblateError, match=r"recipe setting train.eval_every is missing .* add "
                                          r"`eval_every: 20`"):
        compose(["train=mine"])
    assert compose(["train=mine", "+train.eval_every=0"]).train.eval_every == 0


def test_unknown_key_on_the_cli_is_one_error_line(tmp_path):
    from conftest import run_cli

    code, _, err = run_cli("train", "--dry-run", "train.lrr=0.1", cwd=tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert code == 2 and len(lines) == 1, err
    assert "unknown recipe key 'train.lrr'; did you mean 'train.lr'?" in lines[0]


def test_unknown_key_in_a_space_names_the_nearest(tmp_path):
    from ablate.space import load_space, validate_space

    path = tmp_path / "typo.yaml"
    path.write_text("fixed: {teacher: tiny-sd15, backbone: tiny, train.eval_evry: 5}\n"
                    "params:\n  filter.hedas: {choice: [2, 4]}\n")
    with pytest.raises(AblateError) as info:
        validate_space(load_space(str(path)), build=False)
    problems = str(info.value).splitlines()[1:]
    assert any(p.strip().startswith("- fixed.train.eval_evry: unknown recipe key "
                                    "'train.eval_evry'; did you mean 'train.eval_every'?")
               for p in problems), problems
    assert any("params.filter.hedas: unknown recipe key 'filter.hedas'; did you mean "
               "'filter.heads'?" in p for p in problems), problems


# ---------------------------------------------- (e) no default kept at a read of a setting

# Files other work owns right now (issue 24): their call sites are listed in its report.
NOT_OWNED = ("ablate/results", "ablate/metrics", "ablate/data/synthetic", "ablate/data/prepare",
             "ablate/model/teachers/")
# `<something>cfg<...>.get("key", fallback)`, `recipe.get(...)`, or `get = cfg.get` aliasing
FALLBACK = re.compile(r"""\b(?:\w*cfg\w*|recipe)(?:\.\w+)*\.get\(\s*["'](\w+)["']\s*,""")
ALIAS = re.compile(r"""=\s*\w*cfg\w*(?:\.\w+)*\.get\b(?!\()""")


def _leaves() -> set[str]:
    return {key.rsplit(".", 1)[-1] for key in schema.declared()} | set(schema.GROUPS)


def fallbacks(text: str) -> list[str]:
    leaves = _leaves()
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        found = [m.group(1) for m in FALLBACK.finditer(line) if m.group(1) in leaves]
        if found or ALIAS.search(line):
            out.append(f"{n}: {line.strip()}")
    return out


def test_the_fallback_grep_finds_what_it_should():
    assert fallbacks('every = cfg.train.get("eval_every", 0)')
    assert fallbacks("x = train_cfg.get('precision', 'auto')")
    assert fallbacks('get = train_cfg.get if hasattr(train_cfg, "get") else None')
    assert not fallbacks('path = data_cfg.get("manifest")')  # a dataset config, no default
    assert not fallbacks('clean = batch.get("clean", batch["image"])')


def test_no_recipe_setting_keeps_its_own_default():
    found = {}
    for path in sorted((ROOT / "ablate").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(NOT_OWNED) or rel == "ablate/core/schema.py":
            continue
        hits = fallbacks(path.read_text())
        if hits:
            found[rel] = hits
    assert not found, f"read these with ablate.core.schema.setting instead: {found}"
