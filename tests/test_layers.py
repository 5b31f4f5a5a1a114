"""The layers of docs/architecture.md, as behaviour: light commands stay light, every import
that stays inside a function says why, and the import contracts hold (`make test` also runs
`lint-imports`; this runs it against a broken copy to show the contracts can fail)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ablate"
HEAVY = ("torch", "torchvision", "diffusers", "timm", "ray")


def _loaded_after_import(module: str) -> list[str]:
    code = (f"import sys, {module}; "
            f"print(' '.join(h for h in {HEAVY!r} if h in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("module", ["ablate.core", "ablate.core.schema", "ablate.results",
                                    "ablate.report", "ablate.space", "ablate.recipe",
                                    "ablate.cli"])
def test_light_modules_load_no_torch_or_ray(module):
    # `ablate --help`, `ablate report` and reading a space must not pay for torch
    assert _loaded_after_import(module) == []


def _function_imports(tree: ast.Module) -> list[ast.stmt]:
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                own = (isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module
                       and sub.module.split(".")[0] == "ablate") or (
                    isinstance(sub, ast.Import)
                    and any(a.name.split(".")[0] == "ablate" for a in sub.names))
                if own:
                    found[sub.lineno] = sub
    return [found[k] for k in sorted(found)]


def unexplained_lazy_imports(root: Path) -> list[str]:
    """`path:line` of each in-function import of ablate with no `# lazy:` note on its line,
    the line above, or the first import of the run of imports it belongs to."""
    missing = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text().splitlines()
        imports = _function_imports(ast.parse("\n".join(lines)))
        by_end = {n.end_lineno: n for n in imports}
        for node in imports:
            first = node
            while first.lineno - 1 in by_end:  # walk up the run of adjacent imports
                first = by_end[first.lineno - 1]
            noted = any("# lazy:" in lines[i - 1] for i in
                        {node.lineno, first.lineno, first.lineno - 1} if i >= 1)
            if not noted:
                missing.append(f"{path.relative_to(root.parent)}:{node.lineno}")
    return missing


def test_every_import_inside_a_function_says_why():
    missing = unexplained_lazy_imports(PACKAGE)
    assert not missing, ("imports inside functions without a `# lazy:` reason (hoist them "
                         "to the top, or say why they must wait): " + ", ".join(missing))


def test_the_lazy_check_finds_an_unexplained_import(tmp_path):
    pkg = tmp_path / "ablate"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f():\n    # lazy: loads torch only when called\n"
                              "    from ablate.train import train\n"
                              "    from ablate.evaluate import evaluate_run\n\n"
                              "def g():\n    from ablate.recipe import compose\n")
    assert unexplained_lazy_imports(pkg) == ["ablate/m.py:7"]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PATH": str(exe.parent), "PYTHONPATH": str(root)})


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("ablate/core/names.py", "from ablate.sweep import driver", "Layers"),
    ("ablate/report/stats.py", "import torch", "No torch, Ray"),
])
def test_an_upward_import_breaks_the_contracts(tmp_path, module, line, contract):
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(PACKAGE, copy / "ablate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy)
    assert _lint_imports(copy).returncode == 0, "the contracts should hold on the checkout"
    target = copy / module
    target.write_text(f"{line}  # noqa\n" + target.read_text())
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    assert contract in broken.stdout and "BROKEN" in broken.stdout
