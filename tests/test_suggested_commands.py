"""Every `ablate` command the docs suggest runs (issue 25): the code blocks of README.md and
docs/*.md, and the comment block at the top of each search_spaces/*.yaml, are parsed, and
each command is run here in a form that cannot train for long:

- `train` and `sweep` get `--dry-run` (the recipe or space composed, checked and built);
- `teachers fit` gets a few steps on a few frames (its shape, not its result);
- everything else runs as written.

A command passes when it exits 0, or when it stops the way a user-facing error does: exit
2 and one `error: ...` line (a search space's problems follow as `  - ...` lines) saying
what is missing here (weights, datasets, a run folder), never a traceback, an unknown
option or a usage error. The few commands that cannot run here are listed in
CANNOT_RUN_HERE with the reason; they are still parsed by click, so an option the CLI does
not have fails them too. A listed command no page suggests any more fails the test: the
list stays short and true."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))

# command as suggested (its comment dropped, continuation lines joined) -> why it cannot run
CANNOT_RUN_HERE = {
    "ablate report --db postgresql://me@dbhost/ablate --out paper/tables":
        "needs the PostgreSQL server `dbhost`: connecting would wait on DNS/TCP timeouts",
    "ablate compare-teachers --teachers none,tiny-sd15,tiny-sd21":
        "trains every teacher (minutes); it has no dry run, its recipe is "
        "search_spaces/compare-cpu.yaml, whose sweep is dry-run here",
    "ablate compare-teachers --teachers none,tiny-sd15,tiny-sdxl,tiny-sd3,tiny-flux":
        "trains every teacher (minutes); no dry run (see above)",
}

# What a command may stop with here, where no real weights, datasets or runs exist.
EXPECTED_ERRORS = re.compile(
    r"does not exist|no such (file|folder)|not found|has no weights|no manifest|no root"
    r"|needs backbone\.pretrained_path|set teacher\.path|no results DB|no video files found"
    r"|search space \S+ has \d+ problems?|no CUDA|cuda|is not a (run )?folder"
    r"|no results database|no node that large")

# a synopsis, not a command: `ablate bench [OVERRIDES...] [--json]`, `ablate data prepare ...`
SYNOPSIS = re.compile(r"\[[A-Z]+(\.\.\.)?\]|\[--\S+ [^]]*\]|\s\.\.\.(\s|$)")
# a template to fill in: `ablate data manifest ADAPTER --root ROOT`, `results/runs/<run>`;
# click must parse it, but running it would only test the placeholder
PLACEHOLDER = re.compile(r"<[^>]+>|(?<![$\w.-])[A-Z][A-Z_]{2,}(?![\w.-])")


def _commands_in_page(path: Path) -> list[tuple[str, str]]:
    """(where, command) for every line of a fenced code block that starts with `ablate `
    (or `$ ablate `, `.venv/bin/ablate `), backslash continuations joined."""
    found, in_block, lines = [], False, path.read_text().splitlines()
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        if text.startswith("```"):
            in_block = not in_block
        elif in_block:
            text = text.removeprefix("$ ").removeprefix(".venv/bin/")
            if text.startswith("ablate "):
                start = i
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1].rstrip() + " " + lines[i].strip()
                found.append((f"{path.name}:{start + 1}", text))
        i += 1
    return found


def _commands_in_space_header(path: Path) -> list[tuple[str, str]]:
    """(where, command) for each `#   ablate ...` line of the comment block a space starts
    with."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("ablate "):
            found.append((f"{path.name}:{number}", text))
    return found


def suggested() -> list[tuple[str, str]]:
    """Every command the pages and space headers suggest, in file order."""
    out = [c for page in PAGES for c in _commands_in_page(page)]
    return out + [c for space in SPACES for c in _commands_in_space_header(space)]


def _command(text: str) -> str:
    """The command without its trailing `# comment` (shlex knows quotes from comments)."""
    return shlex.join(shlex.split(text, comments=True))


def _argv(text: str, tmp: Path) -> list[str]:
    """The arguments to run: training and sweeping as dry runs, a fit as a short one."""
    argv = shlex.split(text, comments=True)[1:]
    verb = [a for a in argv if not a.startswith("-")][:2]
    if verb[:1] in (["train"], ["sweep"]) and not {"--dry-run", "--resume"} & set(argv):
        argv.append("--dry-run")
    if verb == ["teachers", "fit"]:
        argv += ["--steps", "2", "--vae-steps", "2", "--max-frames", "16", "--batch-size", "4",
                 "--out", str(tmp / "fitted"), "--quiet"]
    return argv


def _parses(argv: list[str]) -> None:
    """Click parses `ablate ARGV` down to its command (options known, arguments complete),
    running nothing; a usage error raises."""
    from ablate.cli import cli

    command: click.Command = cli
    name, args, parent = "ablate", list(argv), None
    while True:
        ctx = command.make_context(name, args, parent=parent)
        if not isinstance(command, click.Group):
            return
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, found, args = command.resolve_command(ctx, rest)
        assert found is not None, argv
        command, parent = found, ctx


def _why_it_failed(code: int, out: str, err: str) -> str | None:
    """None when the exit is a pass (see the module doc), else what went wrong."""
    if code == 0:
        return None
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    if "Traceback" in err or code != 2 or not lines or not lines[0].startswith("error: "):
        return f"exit {code}, not a one-line error:\n{err[-3000:]}"
    extra = [ln for ln in lines[1:] if not ln.startswith("  - ")]
    if extra:
        return f"more than one error line:\n{err[-3000:]}"
    if not EXPECTED_ERRORS.search(lines[0]):
        return f"an error this machine should not give: {lines[0]}"
    return None


COMMANDS = suggested()


def test_the_pages_and_headers_suggest_commands_and_the_list_is_current():
    texts = {_command(text) for _, text in COMMANDS}
    assert len(texts) > 40  # the parser found the code blocks
    assert not set(CANNOT_RUN_HERE) - texts, "listed but suggested nowhere any more"


@pytest.mark.slow
@pytest.mark.parametrize("where,text", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_a_suggested_command_runs_or_says_what_is_missing(where, text, tmp_path):
    argv = _argv(text, tmp_path)
    if SYNOPSIS.search(text):
        return
    try:
        _parses(argv)
    except click.UsageError as err:
        pytest.fail(f"{where}: `{text}`: {err.format_message()}")
    except click.exceptions.Exit:  # --help, --version: printed and done
        pass
    if _command(text) in CANNOT_RUN_HERE or PLACEHOLDER.search(_command(text)):
        return
    results = str((ROOT / "results").resolve())  # the shared benchmark, not a rebuild in tmp
    code, out, err = run_cli(*argv, cwd=tmp_path, env={"ABLATE_CACHE": results})
    why = _why_it_failed(code, out, err)
    assert why is None, f"{where}: `ablate {shlex.join(argv)}`: {why}"
