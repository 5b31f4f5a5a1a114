"""Search spaces: strict parsing, define-by-run with real Optuna trials, overrides
that compose, and validation that collects every problem before a sweep starts."""

from __future__ import annotations

import math
import time
from pathlib import Path

import optuna
import pytest

from ablate.core.errors import AblateError
from ablate.recipe import compose
from ablate.space import (
    SearchSpace,
    format_value,
    list_spaces,
    load_space,
    validate_space,
)

SHIPPED = {"quick", "modules", "backbones", "teachers", "paper", "architecture", "architecture-gpu"}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped spaces ----------------------------------------------------------------------


def test_list_spaces_has_every_shipped_space_with_a_description():
    spaces = dict(list_spaces())
    assert SHIPPED <= set(spaces)
    for name in SHIPPED:
        assert spaces[name] and not spaces[name].startswith("(invalid"), name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_space_parses(name):
    space = load_space(name)
    assert isinstance(space, SearchSpace)
    assert space.name == name and space.source_path.name == f"{name}.yaml"
    assert space.params and space.trials >= 1 and space.objectives
    assert space.metrics[0] in ("val_auc", "test_auc_mean")


def test_quick_space_is_the_cpu_demo():
    space = load_space("quick")
    assert space.fixed["teacher"] == "tiny-sd15" and space.fixed["backbone"] == "tiny"
    assert space.fixed["data.train"] == "synth-blend"
    assert space.tests == ["synth-blend", "synth-colour", "synth-warp"]
    assert 6 <= space.trials <= 8 and space.max_concurrent == 2
    assert space.resources.gpu == 0 and space.early_stopping.enabled
    assert space.param("filter.heads").when == {"filter": ("paper", "code")}
    lr = space.param("train.lr")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1e-3, True)


def test_paper_space_is_gpu_scale():
    space = load_space("paper")
    assert space.resources.gpu == 1
    assert space.tests == ["celebdf", "wilddeepfake", "dfdc_preview", "dfd", "diffswap"]
    assert space.fixed["data.train"] == "ffpp" and space.fixed["recipe"] == "paper"


def test_load_by_path_and_by_env_dir(tmp_path, monkeypatch):
    path = write(tmp_path, "params:\n  filter: {choice: [paper]}\n", "mine.yaml")
    assert load_space(str(path)).name == "mine"
    monkeypatch.setenv("ABLATE_SPACES_DIR", str(tmp_path))
    assert load_space("mine").source_path == path
    assert list_spaces() == [("mine", "")]


def test_unknown_name_lists_the_spaces():
    with pytest.raises(AblateError, match=r"unknown search space 'quik'.*quick"):
        load_space("quik")


# --- strict parsing --------------------------------------------------------------------------

GOOD_PARAM = "params:\n  filter: {choice: [paper, code]}\n"
BAD = {
    "malformed": ("params:\n  filter: {choice: [paper, code]\n  weight: x\n", r"line \d+: malformed YAML"),
    "top_key": (GOOD_PARAM + "budgt: {trials: 3}\n", r"budgt: unknown top-level key; valid keys: .*budget"),
    "param_field": ("params:\n  filter: {choice: [paper], wehn: {guide: adapter}}\n",
                    r"params\.filter: unknown field 'wehn'; fields: .*when"),
    "low_high": ("params:\n  train.lr: {float: [1.0e-3, 1.0e-5]}\n",
                 r"params\.train\.lr: range low 0\.001 > high 1e-05"),
    "log_low": ("params:\n  train.steps: {int: [0, 100], log: true}\n",
                r"params\.train\.steps: log scale needs low > 0"),
    "empty_choice": ("params:\n  filter: {choice: []}\n", r"params\.filter: choice must be a non-empty list"),
    "when_unknown": (GOOD_PARAM + "  guide.width: {int: [16, 64], when: {guide: adapter}}\n",
                     r"params\.guide\.width\.when\.guide: is not a param listed before this one"),
    "when_value": (GOOD_PARAM + "  filter.heads: {choice: [2], when: {filter: papr}}\n",
                   r"when\.filter: value 'papr' is not one of filter's choices"),
    "mode": (GOOD_PARAM + "objectives: [{metric: val_auc, mode: maximise}]\n",
             r"objectives\[0\]\.mode: must be min or max, not 'maximise'"),
    "metric": (GOOD_PARAM + "objectives: [{metric: auc, mode: max}]\n",
               r"objectives\[0\]\.metric: unknown metric 'auc'; known: val_auc"),
    "three_objectives": (GOOD_PARAM + "objectives:\n" + "".join(
        f"  - {{metric: {m}, mode: min}}\n" for m in ("wall_s", "step_time_s", "peak_mem_mb")),
        r"objectives: at most 2 objectives"),
    "trials": (GOOD_PARAM + "budget: {trials: 0}\n", r"budget\.trials: must be an integer >= 1, not 0"),
    "duplicate": (GOOD_PARAM + "  filter: {choice: [code]}\n", r"duplicate key 'filter'"),
    "two_kinds": ("params:\n  train.lr: {float: [0.1, 1.0], choice: [1]}\n",
                  r"params\.train\.lr: needs exactly one of choice:, int: or float:"),
    "grid_range": ("params:\n  train.lr: {float: [0.1, 1.0]}\nsampler: {name: grid}\n",
                   r"sampler\.name: grid needs every param to be an unconditional choice"),
    "sampler": (GOOD_PARAM + "sampler: {name: cmaes}\n", r"sampler\.name: unknown sampler 'cmaes'"),
    "fixed_and_param": (GOOD_PARAM + "fixed: {filter: code}\n", r"params\.filter: is also in fixed"),
    "not_mapping": ("- a\n- b\n", r"must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_space_is_one_line_error_naming_file_and_key(tmp_path, case):
    text, pattern = BAD[case]
    path = write(tmp_path, text)
    with pytest.raises(AblateError, match=pattern) as info:
        load_space(str(path))
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_yaml_reads_exponent_floats_without_a_dot(tmp_path):
    path = write(tmp_path, "params:\n  train.lr: {float: [1e-5, 1e-3], log: true}\n")
    assert load_space(str(path)).param("train.lr").low == 1e-5


# --- define-by-run ---------------------------------------------------------------------------


def asked(space: SearchSpace, n: int = 30) -> list[tuple[optuna.trial.Trial, dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for i in range(n):
        trial = study.ask()
        params = space.define_by_run(trial)
        study.tell(trial, float(i % 7))
        out.append((trial, params))
    return out


def test_define_by_run_respects_conditionals_and_ranges():
    space = load_space("quick")
    seen_filters = set()
    for trial, params in asked(space):
        assert params == trial.params  # it returns exactly what it suggested
        seen_filters.add(params["filter"])
        assert ("filter.heads" in params) == (params["filter"] in ("paper", "code"))
        assert ("guide.width" in params) == (params["guide"] == "adapter")
        if "filter.heads" in params:
            assert params["filter.heads"] in (2, 4)
        if "guide.width" in params:
            assert params["guide.width"] in (16, 32, 48, 64)
        assert 1e-5 <= params["train.lr"] <= 1e-3
        assert trial.distributions["train.lr"].log
    assert len(seen_filters) >= 3


def test_define_by_run_under_ray_optuna_search():
    """The contract Ray Tune 2.x's OptunaSearch puts on a define-by-run function."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space("quick")
    searcher = OptunaSearch(space=space.define_by_run, metric=space.metrics[0],
                            mode=space.modes[0], sampler=space.make_sampler())
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert {"filter", "weight", "guide", "train.lr"} <= set(config)  # not nested by dots
        searcher.on_trial_complete(f"t{i}", {"val_auc": 0.5})


def test_samplers():
    assert isinstance(load_space("quick").make_sampler(), optuna.samplers.TPESampler)
    grid = load_space("modules")
    assert isinstance(grid.make_sampler(), optuna.samplers.GridSampler)
    assert math.prod(len(v) for v in grid.grid().values()) == grid.trials


def test_two_objectives_default_to_nsga2(tmp_path):
    path = write(tmp_path, GOOD_PARAM + "objectives:\n  - {metric: val_auc, mode: max}\n"
                 "  - {metric: params_trainable, mode: min}\n")
    space = load_space(str(path))
    assert space.multi_objective and space.sampler.name == "nsga2"
    assert space.metrics == ["val_auc", "params_trainable"] and space.modes == ["max", "min"]


# --- overrides -------------------------------------------------------------------------------


def test_overrides_compose_into_the_chosen_recipe():
    space = load_space("quick")
    _, params = next((t, p) for t, p in asked(space, 12) if "guide.width" in p)
    overrides = space.overrides(params, seed=3)
    assert overrides[0] == "teacher=tiny-sd15" and overrides[-1] == "seed=3"
    assert "data.tests=[synth-blend,synth-colour,synth-warp]" in overrides
    cfg = compose(overrides)
    assert cfg.filter.name == params["filter"] and cfg.weight.name == params["weight"]
    assert cfg.guide.name == "adapter" and cfg.guide.width == params["guide.width"]
    assert cfg.train.lr == params["train.lr"] and cfg.train.steps == space.fixed["train.steps"]
    assert list(cfg.data.tests) == space.tests and cfg.seed == 3


def test_overrides_reject_unknown_params():
    with pytest.raises(AblateError, match=r"no param\(s\) filtr"):
        load_space("quick").overrides({"filtr": "code"})


@pytest.mark.parametrize("value", ["a b", "x'y", "true", "1e-5", "C:\\x\\y", "${oops", "3d"])
def test_string_values_round_trip_through_hydra(value):
    assert compose([f"run.name={format_value(value)}"]).run.name == value


def test_number_and_list_values_round_trip_through_hydra():
    cfg = compose([f"train.lr={format_value(1e-05)}", f"train.grad_clip={format_value(None)}",
                   f"data.tests={format_value(['synth-blend', 'synth-warp'])}"])
    assert cfg.train.lr == 1e-05 and cfg.train.grad_clip is None
    assert list(cfg.data.tests) == ["synth-blend", "synth-warp"]


# --- validation ------------------------------------------------------------------------------


@pytest.mark.slow  # seconds of training or many steps: not in make test-fast
def test_validate_quick_passes_in_seconds():
    import ablate.model  # noqa: F401  (imports are not what we time)

    space = load_space("quick")
    start = time.perf_counter()
    notes = validate_space(space)
    elapsed = time.perf_counter() - start
    print(f"validate_space(quick): {elapsed:.2f} s, notes: {notes}")
    assert any("dry-run built" in n for n in notes)
    assert elapsed < 20, elapsed  # ~2 s on 2 idle cores; slack for a busy machine


def test_validate_collects_every_problem_in_one_error(tmp_path):
    path = write(tmp_path, """
fixed: {teacher: tiny-sd15, backbone: tiny, train.stepz: 5}
params:
  filter: {choice: [paper, papper]}
  filter.heads: {choice: [3], when: {filter: paper}}   # 256-ch tiny features: 3 does not divide
  train.lrr: {float: [1.0e-4, 1.0e-3], log: true}
""", "broken.yaml")
    with pytest.raises(AblateError) as info:
        validate_space(load_space(str(path)))
    message = str(info.value)
    first, *rest = message.splitlines()
    assert first.startswith("search space broken has 4 problems") and len(rest) == 4
    assert "fixed.train.stepz: unknown recipe key 'train.stepz'" in message
    assert "unknown filter 'papper'; registered filter variants:" in message
    assert ("params.train.lrr: unknown recipe key 'train.lrr'; did you mean 'train.lr'? "
            "(valid keys under train:") in message
    assert "filter.heads=3" in message and "does not divide the filter width 256" in message


def test_validate_checks_compose_without_building(tmp_path):
    path = write(tmp_path, "params:\n  guide: {choice: [controlnet]}\n"
                 "  guide.width: {choice: [32], when: {guide: controlnet}}\n")
    with pytest.raises(AblateError, match=r"has 1 problem .*\n.*unknown recipe key 'guide.width'"):
        validate_space(load_space(str(path)), build=False)


def test_paper_space_needs_teacher_path():
    with pytest.raises(AblateError) as info:
        validate_space(load_space("paper"))
    message = str(info.value)
    assert "teacher sd15 has no weights: set teacher.path" in message
    assert "backbone efficientnet_b4 has no weights: set backbone.pretrained_path" in message
    assert "paper.yaml" in message


def test_baseline_is_a_choice_next_to_the_guides(tmp_path):
    """guide=none in a space: composes, builds (no teacher), and hashes apart from the guides."""
    path = write(tmp_path, """
fixed: {teacher: tiny-sd15, backbone: tiny, image_size: 32, train.steps: 2}
params:
  guide: {choice: [controlnet, none]}
  filter: {choice: [paper, code], when: {guide: controlnet}}
""")
    space = load_space(str(path))
    notes = validate_space(space)
    assert any("dry-run built 3 distinct detector(s)" in n for n in notes), notes
    from ablate.recipe import recipe_hash

    base = compose(space.overrides({"guide": "none"}))
    assert recipe_hash(base) == recipe_hash(compose([*space.overrides({"guide": "none"}),
                                                      "filter=code"]))


def test_paper_space_with_teacher_path_skips_the_build(tmp_path):
    text = load_space("paper").source_path.read_text()
    weights = tmp_path / "sd15"
    weights.mkdir()
    path = write(tmp_path, text.replace("teacher.path: null", f"teacher.path: {weights}"))
    with pytest.raises(AblateError) as info:  # the FF++ & co. roots are still unset here
        validate_space(load_space(str(path)))
    assert "teacher.path" not in str(info.value) and "dataset ffpp" in str(info.value)


def test_validate_looks_for_the_manifest_where_the_loader_reads_it(tmp_path, monkeypatch):
    """A cached manifest of an older layout (`<name>.csv`, keyed by name only) is never read
    by the loader, so it must not make a dataset without a root look ready."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results/manifests").mkdir(parents=True)
    (tmp_path / "results/manifests/celebdf.csv").write_text("path,label\nx.png,0\n")
    path = write(tmp_path, "params:\n  guide: {choice: [controlnet]}\n"
                 "tests: [celebdf]\n")
    with pytest.raises(AblateError, match=r"dataset celebdf has no manifest \(.*celebdf-\w+\.csv"):
        validate_space(load_space(str(path)), build=False)
