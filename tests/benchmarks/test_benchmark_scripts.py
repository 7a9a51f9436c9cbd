"""Every script in benchmarks/ imports, parses --help, and names only prac_dist objects that exist.

The end-to-end toy runs (test_benchmarks_smoke.py, test_compute.py, test_gpu_check.py) cover a few
scripts; this covers all of them cheaply, so a refactor (registry, train/backends move, results
schema) that breaks one fails here. Imports inside functions (the scripts defer heavy ones) are
resolved too: `from prac_dist.x import y` must find y.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
# The group folders' scripts (memory/, compute/, ...) and the top-level tools (regenerate, plot_results).
SCRIPTS = sorted(p for p in [*BENCH.glob("*.py"), *BENCH.glob("*/*.py")] if not p.name.startswith("_"))
GROUPS = ("memory", "compute", "quality", "kernels", "gpu")


def _module(path: Path) -> str:
    return ".".join(("benchmarks", *path.relative_to(BENCH).with_suffix("").parts))

# One process for all scripts: torch is imported once (21 separate interpreters take ~2 min on 2 cores).
_HELP_ALL = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_module(path, run_name="__main__", alter_sys=True)
        failed.append(f"{path}: --help did not exit")
    except SystemExit as e:
        if e.code not in (0, None):
            failed.append(f"{path}: --help exited {e.code}")
    except BaseException as e:
        failed.append(f"{path}: {type(e).__name__}: {e}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_there_are_scripts():
    assert len(SCRIPTS) >= 10


def test_every_script_sits_in_a_group():
    """A benchmark is found by what it measures: only the shared tools sit at the top level."""
    loose = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert loose == ["plot_results.py", "regenerate.py"], loose
    folders = sorted({p.parent.name for p in BENCH.glob("*/*.py")})
    assert folders == sorted(GROUPS), folders


def test_every_script_parses_help():
    r = subprocess.run([sys.executable, "-c", _HELP_ALL, *map(_module, SCRIPTS)], capture_output=True,
                       text=True, timeout=600, cwd=BENCH.parent)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("script", SCRIPTS, ids=_module)
def test_prac_dist_imports_resolve(script):
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "prac_dist":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or _is_submodule(node.module, alias.name), \
                    f"{script.name}:{node.lineno}: {node.module} has no {alias.name}"


def _is_submodule(package: str, name: str) -> bool:
    try:
        importlib.import_module(f"{package}.{name}")
        return True
    except ImportError:
        return False


def test_memory_script_toy_run(tmp_path):
    """memory.py read the planner's old field names (hidden_size, ...) after the registry change."""
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.memory.memory", "--models", "llama_60m", "--layers", "1",
                        "--seq", "8", "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    res = json.loads(out.read_text())
    settings = res["models"]["llama_60m"]["settings"]
    assert settings["baseline"]["ratio_to_baseline"] == 1.0 and len(settings) == 4
    assert res["models"]["llama_60m"]["shape"] == {"hidden": 512, "layers": 8, "ffn": 1376, "heads": 8}
