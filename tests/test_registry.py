import pytest

from ablate.core.errors import AblateError
from ablate.registry import Registry, build, registry


def test_register_build_and_defaults():
    reg = Registry("thing")

    @reg.register("a", "first", size=3)
    def make(size: int = 1, scale: float = 2.0):
        return size * scale

    assert reg.build("a") == 6.0  # preset default wins over the signature's
    assert reg.build("a", size=1, scale=1.0) == 1.0
    assert reg.get("a").arguments() == {"size": 3, "scale": 2.0}


def test_unknown_name_lists_valid_ones():
    with pytest.raises(AblateError, match="valid filter variants: code, conv_only"):
        build("filter", "papr")


def test_unknown_argument_names_the_accepted_ones():
    with pytest.raises(AblateError, match="no argument.*heads_"):
        build("filter", "paper", in_channels=8, out_channels=4, in_size=2, out_size=8, heads_=2)


def test_double_registration_is_refused():
    reg = Registry("thing")
    reg.register("a", "x")(lambda: 1)
    with pytest.raises(ValueError):
        reg.register("a", "y")(lambda: 2)


def test_every_slot_has_variants_and_a_config_file(tmp_path):
    from ablate.recipe import config_dir

    for slot in ("backbone", "filter", "weight", "guide", "teacher"):
        names = registry(slot).names()
        assert names, slot
        files = {p.stem for p in (config_dir() / slot).glob("*.yaml")}
        # every config file names a registered variant, every variant has a config
        assert files >= set(names) - {"timm"} or slot == "backbone", (slot, set(names) - files)
        for f in files:
            import yaml

            name = yaml.safe_load((config_dir() / slot / f"{f}.yaml").read_text())["name"]
            assert name in names, (slot, f)


def test_unknown_slot():
    with pytest.raises(AblateError, match="valid slots"):
        registry("encoder")


def test_list_filters_variants_by_slot_and_pattern() -> None:
    from click.testing import CliRunner

    from ablate.cli import cli
    from ablate.registry import SLOTS, registry

    def listed(*args: str) -> set[str]:
        out = CliRunner().invoke(cli, ["list", *args])
        assert out.exit_code == 0, out.output
        return {line.split()[0] for line in out.output.splitlines() if line.startswith("  ")
                and not line.startswith("   ") and not line.strip().endswith(":")
                and "." not in line.split()[0]}

    names = {s: {e.name for e in registry(s).entries()} for s in SLOTS}
    tiny = {n for n in names["teacher"] if n.startswith("tiny-")}
    assert tiny and listed("teacher", "tiny-*") == tiny  # a glob on the names of one slot
    about_mhsa = {e.name for s in SLOTS for e in registry(s).entries()
                  if "mhsa" in f"{e.name} {e.description}".lower()}
    assert about_mhsa and listed("MHSA") == about_mhsa  # a substring, any slot, any case
    assert listed("filter") == names["filter"]
    bad = CliRunner().invoke(cli, ["list", "no-such-thing-at-all"])
    assert bad.exit_code != 0 and "no variant matches 'no-such-thing-at-all'" in str(
        bad.exception or bad.output)
