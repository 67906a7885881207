"""The shape of the code (docs/design.md, "Layout"): which way imports go, read from the source itself.

- the library (`adasam_hf.optim`, `adasam_hf.trainer`) imports no application module, and no package beyond
  torch, transformers and accelerate: importing it loads nothing that the Trainer itself does not;
- the shared plumbing (`adasam_hf.app`) imports no application; the two applications do not import each other;
- no module imports another module's private (underscore) name, in the package, the tests, the benchmarks or the
  scripts.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "adasam_hf"
LIBRARY = ("adasam_hf.optim", "adasam_hf.trainer")
APPLICATIONS = ("adasam_hf.glue", "adasam_hf.lm")
# The first names of the two application modules, kept for the paths the README published.
ALIASES = ("adasam_hf.cli", "adasam_hf.metrics")
LIBRARY_DEPENDENCIES = {"torch", "transformers", "accelerate", "safetensors"}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = REPO) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import in `path`, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names], node.lineno))
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py") if "evaluate_modules" not in p.parts)


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_library_imports_no_application_and_only_torch_transformers_accelerate():
    bad = []
    for path in sources("adasam_hf"):
        if not within(module_name(path), LIBRARY):
            continue
        for module, _, line in imports(path):
            top = module.split(".")[0]
            if within(module, ("adasam_hf.app", *APPLICATIONS, *ALIASES)):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
            elif top != "adasam_hf" and top not in sys.stdlib_module_names and top not in LIBRARY_DEPENDENCIES:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, bad


def test_the_plumbing_imports_no_application_and_the_applications_not_each_other():
    bad = []
    for path in sources("adasam_hf"):
        name = module_name(path)
        others = (*APPLICATIONS, *ALIASES) if within(name, ("adasam_hf.app",)) else tuple(
            a for a in APPLICATIONS if within(name, APPLICATIONS) and not within(name, (a,)))
        bad += [f"{path.relative_to(REPO)}:{line} imports {module}" for module, _, line in imports(path)
                if others and within(module, others)]
    assert not bad, bad


def test_no_module_imports_a_private_name_of_another():
    ours = ("adasam_hf", "tests", "benchmarks")
    bad = [f"{path.relative_to(REPO)}:{line} imports {name} from {module}"
           for path in sources("adasam_hf", "tests", "benchmarks", "scripts")
           for module, names, line in imports(path) if within(module, ours)
           for name in names if name.startswith("_") and not name.endswith("__")]
    assert not bad, bad


def test_the_checks_above_see_the_imports_they_look_for(tmp_path):
    """The walker resolves relative imports (a check that found nothing to check would pass on anything)."""
    found = {module for module, _, _ in imports(PACKAGE / "glue" / "run.py")}
    assert {"adasam_hf.app.parsing", "adasam_hf.trainer", "adasam_hf.glue.tasks"} <= found
    assert {m for m, _, _ in imports(PACKAGE / "trainer" / "__init__.py")} >= {"adasam_hf.trainer.trainer"}
    # What the old flat layout did (lm.py: `from .cli import _resources`) is seen as a private import.
    bad = tmp_path / "adasam_hf" / "lm" / "run.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..glue.run import _resources\n")
    assert imports(bad, root=tmp_path) == [("adasam_hf.glue.run", ["_resources"], 1)]


@pytest.mark.slow
def test_importing_the_library_loads_nothing_the_trainer_does_not():
    """In a fresh interpreter: the modules `import adasam_hf` adds to those of transformers' Trainer and
    accelerate are the package's own library modules, and none of an application."""
    code = (
        "import sys\nfrom transformers import Trainer, TrainingArguments\nimport accelerate\n"
        "before = set(sys.modules)\nimport adasam_hf\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    added = proc.stdout.split()
    assert "adasam_hf.trainer.trainer" in added and "adasam_hf.optim.adasam" in added
    outside = [m for m in added if not within(m, ("adasam_hf",)) and m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] not in LIBRARY_DEPENDENCIES]
    assert not outside, outside
    applications = [m for m in added if within(m, ("adasam_hf.app", *APPLICATIONS, *ALIASES))]
    assert not applications, applications
