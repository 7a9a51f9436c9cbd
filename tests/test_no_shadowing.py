"""No file in the repository is importable under the name of an installed distribution's module.

pytest puts each test folder (and tests/) first on `sys.path`, a script run by path puts its own folder
there, and pyproject's `pythonpath` adds the repository root; a `kernels.py` in any of them hides the
PyPI package `kernels` that transformers imports, and every test then fails at collection.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_roots() -> list:
    """Every folder a test run or a benchmark run may put on sys.path."""
    roots = {ROOT, ROOT / "benchmarks", ROOT / "tests"}
    roots.update(p.parent for p in (ROOT / "tests").rglob("*.py"))
    return sorted(r for r in roots if "__pycache__" not in r.parts)


def _names(folder: Path) -> set:
    """Top-level names importable from `folder`: modules and regular packages (a namespace folder loses
    to any installed regular package of the same name, so it hides nothing)."""
    names = {p.stem for p in folder.glob("*.py")}
    names.update(p.parent.name for p in folder.glob("*/__init__.py"))
    return names


def test_no_repository_module_shadows_an_installed_one():
    installed = importlib.metadata.packages_distributions()
    clashes = []
    for folder in _import_roots():
        for name in sorted(_names(folder)):
            owners = [d for d in installed.get(name, []) if d.replace("-", "_").lower() != "prac_dist"]
            if owners:
                clashes.append(f"{folder.relative_to(ROOT) or '.'}/{name}: also installed by {', '.join(owners)}")
    assert not clashes, "rename these (an installed package of the same name is hidden):\n" + "\n".join(clashes)


def test_the_check_sees_a_clash(tmp_path):
    """The check finds a module named like an installed one (torch is always installed here)."""
    (tmp_path / "torch.py").write_text("")
    assert "torch" in _names(tmp_path) and "torch" in importlib.metadata.packages_distributions()

