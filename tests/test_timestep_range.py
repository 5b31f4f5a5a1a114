"""`train.t_min` / `train.t_max`: the part of the teacher's training schedule the guided
step draws its timesteps from (ablate/model/teachers: UNet integer steps, flow sigmas)."""

import pytest
import torch
from omegaconf import OmegaConf

from ablate.core.errors import AblateError
from ablate.core.schema import timestep_range
from ablate.model.build import build_detector, build_teacher
from ablate.model.teachers.flow import restrict
from ablate.recipe import compose, recipe_hash
from ablate.sharding import Shard
from ablate.train import make_optimizer, train_step
from tests.conftest import fixed_batch

CPU = torch.device("cpu")
LATENT = (8, 8)  # a 64 px image's latent grid


@pytest.fixture(scope="module")
def unet():
    return build_teacher(compose(["teacher=tiny-sd15"]))


@pytest.fixture(scope="module")
def flow():
    return build_teacher(compose(["teacher=tiny-sd3"]))


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- the defaults: today's draws


def test_a_unet_at_the_full_range_draws_todays_randint(unet):
    assert unet.scheduler.config.num_train_timesteps == 1000
    today = torch.randint(0, 1000, (257,), generator=_seeded(3))
    assert torch.equal(unet.sample_timesteps(257, _seeded(3), CPU), today)
    assert torch.equal(unet.sample_timesteps(257, _seeded(3), CPU, LATENT, (0.0, 1.0)), today)
    assert torch.equal(Shard(0, 1).timesteps(unet, 257, _seeded(3), CPU, LATENT), today)


def test_a_flow_teacher_at_the_full_range_draws_its_laws_own_sigmas(flow):
    law = flow.law.sample(257, flow.tokens(LATENT), _seeded(3), CPU)
    assert torch.equal(flow.sample_timesteps(257, _seeded(3), CPU, LATENT), law)
    assert torch.equal(flow.sample_timesteps(257, _seeded(3), CPU, LATENT, (0.0, 1.0)), law)


# ----------------------------------------------------------------- a range


def test_a_unet_range_draws_every_step_it_holds_and_no_other(unet):
    assert unet.timestep_bounds((0.2, 0.5)) == (200, 500)  # floor(200), ceil(500)
    assert unet.timestep_bounds((0.0705, 0.0706)) == (70, 71)  # 70.5 .. 70.6: step 70 alone
    assert unet.timestep_bounds((0.07, 0.0701)) == (70, 71)
    drawn = unet.sample_timesteps(20_000, _seeded(), CPU, LATENT, (0.2, 0.5))
    assert drawn.dtype == torch.int64
    assert int(drawn.min()) == 200 and int(drawn.max()) == 499  # both ends reached
    assert len(drawn.unique()) == 300  # every step between them too


def test_a_flow_range_is_the_affine_map_of_the_laws_draws(flow):
    torch.testing.assert_close(restrict(torch.tensor([0.0, 0.5, 1.0]), (0.2, 0.5)),
                               torch.tensor([0.2, 0.35, 0.5]))  # by hand: 0.2 + 0.3 * sigma
    law = flow.sample_timesteps(4096, _seeded(5), CPU, LATENT)
    ranged = flow.sample_timesteps(4096, _seeded(5), CPU, LATENT, (0.2, 0.5))
    assert float(ranged.min()) >= 0.2 and float(ranged.max()) <= 0.5
    torch.testing.assert_close(ranged, 0.2 + 0.3 * law, rtol=0, atol=1e-7)
    in_law_order = ranged[law.argsort()]  # the law's shape, squeezed: its order kept
    assert bool((in_law_order[1:] >= in_law_order[:-1]).all())


def test_a_shards_range_draw_is_its_rows_of_the_global_draw(unet, flow):
    for teacher in (unet, flow):
        whole = teacher.sample_timesteps(6, _seeded(2), CPU, LATENT, (0.2, 0.5))
        for rank in (0, 1):
            ours = Shard(rank, 2).timesteps(teacher, 3, _seeded(2), CPU, LATENT, (0.2, 0.5))
            assert torch.equal(ours, whole[rank * 3:(rank + 1) * 3])


# ----------------------------------------------------------------- the detector's step


def _timesteps_of_one_step(unet, monkeypatch, *overrides: str) -> torch.Tensor:
    cfg = compose(["train.device=cpu", "teacher=tiny-sd15", *overrides])
    det = build_detector(cfg, teacher=unet)
    seen = []
    predict = unet.predict

    def spy(noisy, timesteps, *residuals):
        seen.append(timesteps.detach().clone())
        return predict(noisy, timesteps, *residuals)

    monkeypatch.setattr(unet, "predict", spy)
    torch.manual_seed(0)
    opt = make_optimizer(cfg, [p for p in det.parameters() if p.requires_grad])
    train_step(det, fixed_batch(), opt, CPU, 1.0)
    monkeypatch.undo()
    assert seen
    return torch.cat(seen)


def test_the_guided_step_draws_within_the_recipes_range(unet, monkeypatch):
    ranged = _timesteps_of_one_step(unet, monkeypatch, "train.t_min=0.9")
    assert int(ranged.min()) >= 900 and int(ranged.max()) < 1000
    full = _timesteps_of_one_step(unet, monkeypatch)  # same seed, whole schedule
    assert int(full.min()) < 900


def test_a_recipe_without_the_keys_trains_on_the_whole_schedule():
    assert timestep_range({"train": {}}) == (0.0, 1.0)
    assert timestep_range({"train": {"t_min": 0, "t_max": 0.5}}) == (0.0, 0.5)


# ----------------------------------------------------------------- bad ranges


@pytest.mark.parametrize("overrides", [
    ["train.t_min=-0.1"], ["train.t_max=1.5"], ["train.t_min=0.5", "train.t_max=0.5"],
    ["train.t_min=0.6", "train.t_max=0.4"], ["train.t_min=low"], ["train.t_max=true"],
    ["train.t_min=null"], ["train.t_max=nan"],
])
def test_a_bad_range_is_one_line_naming_the_keys(overrides):
    with pytest.raises(AblateError) as err:
        compose(overrides)
    message = str(err.value)
    assert "\n" not in message
    assert "train.t_min" in message and "train.t_max" in message
    assert "0 <= train.t_min < train.t_max <= 1" in message


@pytest.mark.parametrize("t_range", [(0.5, 0.5), (0.3, 0.2), (-0.1, 0.5), (0.5, 1.1)])
def test_a_unet_range_holding_no_integer_step_is_one_line(unet, t_range):
    with pytest.raises(AblateError, match=r"train\.t_min.*train\.t_max.*hold no integer") as err:
        unet.sample_timesteps(4, _seeded(), CPU, LATENT, t_range)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------- the recipe hash


def test_a_range_changes_the_hash_and_the_spelled_out_defaults_do_not():
    default = recipe_hash(compose([]))
    older = compose([])  # a recipe stored before the keys existed keeps its hash
    OmegaConf.set_struct(older, False)
    del older.train["t_min"], older.train["t_max"]
    assert recipe_hash(older) == default
    assert recipe_hash(compose(["train.t_min=0.0", "train.t_max=1.0"])) == default
    assert recipe_hash(compose(["train.t_min=0", "train.t_max=1"])) == default
    low, high = recipe_hash(compose(["train.t_min=0.2"])), recipe_hash(compose(["train.t_max=0.5"]))
    assert len({default, low, high}) == 3


def test_the_baselines_hash_ignores_the_range():
    baseline = recipe_hash(compose(["guide=none"]))
    assert recipe_hash(compose(["guide=none", "train.t_min=0.2", "train.t_max=0.5"])) == baseline
