"""The test tiers: a test's marks come from what it uses (tests/conftest.py), so a new
test that starts Ray, a child process or PostgreSQL cannot land in `make test-fast`."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import tier_marks


def _item(func, fixtures=(), fixture_funcs=()):  # noqa: ANN001, ANN202
    defs = {f.__name__: [SimpleNamespace(func=f)] for f in fixture_funcs}
    return SimpleNamespace(function=func, fixturenames=list(fixtures),
                           _fixtureinfo=SimpleNamespace(name2fixturedefs=defs))


def _runs_a_sweep():  # noqa: ANN202
    return _deeper()


def _deeper():  # noqa: ANN202
    return object.run_sweep  # (never called) a helper two calls down starts Ray


def _spawns():  # noqa: ANN202
    return object.Popen


def test_a_helper_two_calls_down_that_starts_ray_marks_the_test() -> None:
    def uses_a_helper():  # noqa: ANN202
        return _runs_a_sweep()

    assert tier_marks(_item(uses_a_helper)) == {"ray"}


def test_fixtures_mark_by_name_and_by_what_their_code_uses() -> None:
    def plain():  # noqa: ANN202
        return 1 + 1

    assert tier_marks(_item(plain)) == set()
    assert tier_marks(_item(plain, fixtures=["fresh_postgres_url"])) == {"postgres"}
    assert tier_marks(_item(plain, fixtures=["run_folder"])) == {"slow"}
    assert tier_marks(_item(plain, fixtures=["cli"], fixture_funcs=[_spawns])) == {"subprocess"}


def test_a_data_parallel_run_and_a_browser_are_marked() -> None:
    def two_processes():  # noqa: ANN202
        return ["train", "train.processes=2"]

    def one_process():  # noqa: ANN202
        return ["train", "train.processes=1"]

    def browser():  # noqa: ANN202
        return "chromium"

    assert tier_marks(_item(two_processes)) == {"ray"}
    assert tier_marks(_item(one_process)) == set()
    assert tier_marks(_item(browser)) == {"browser"}
