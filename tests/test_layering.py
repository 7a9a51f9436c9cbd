"""Lower folders never import higher ones: checked statically over every import in prac_dist (lazy
imports inside functions included), so the engines cannot start depending on the trainer again."""

import ast
from pathlib import Path

import prac_dist

ROOT = Path(prac_dist.__file__).parent

# Each top-level module/folder of prac_dist and its layer: a module may import its own folder and
# folders of a strictly lower layer. "prac_dist" is the package root (its __init__ re-exports patching).
LAYER = {
    "validate": 0, "models": 0, "memory": 0,
    "config": 1, "distributed": 1,
    "kernels": 2,
    "core": 3,
    "ops": 4, "loss": 4,
    "patching": 5,
    "prac_dist": 6, "planner": 6,
    "checkpoint": 7,
    "deepspeed": 8, "fsdp": 8,
    "integrations": 9,
    "train": 10,
}


def _owner(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "prac_dist"


def _imports(path: Path, text: str = None):
    """(line, imported prac_dist module) for every import statement in `path`, relative ones resolved."""
    package = list(path.relative_to(ROOT.parent).parts[:-1])  # e.g. ['prac_dist', 'fsdp']
    for node in ast.walk(ast.parse(text if text is not None else path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [_from_name(base, a.name) for a in node.names]
        else:
            continue
        for name in names:
            if name == "prac_dist" or name.startswith("prac_dist."):
                yield node.lineno, name


def _from_name(base: str, name: str) -> str:
    """`from prac_dist import fsdp` imports the subpackage; `from prac_dist import step` the root."""
    if base == "prac_dist" and ((ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file()):
        return f"prac_dist.{name}"
    return base


def _source_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    if len(parts) == 1:
        return "prac_dist" if parts[0] == "__init__.py" else parts[0][:-3]
    return parts[0]


def test_every_folder_has_a_layer():
    folders = {_source_of(p) for p in ROOT.rglob("*.py")}
    assert not folders - set(LAYER), f"give these a layer in LAYER: {sorted(folders - set(LAYER))}"


def test_lower_layers_never_import_higher_ones():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        src = _source_of(path)
        for line, name in _imports(path):
            dst = _owner(name)
            if dst != src and LAYER[dst] >= LAYER[src]:
                violations.append(f"{path.relative_to(ROOT.parent)}:{line} ({src}, layer {LAYER[src]}) imports "
                                  f"{name} (layer {LAYER[dst]})")
    assert not violations, "\n".join(violations)


def test_engines_and_core_do_not_import_the_trainer():
    # The rule the issue states in words, independent of the layer table above.
    for folder in ("deepspeed", "fsdp", "core", "ops", "kernels", "patching", "checkpoint", "distributed", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            hits = [f"{path}:{line} {name}" for line, name in _imports(path) if _owner(name) == "train"]
            assert not hits, hits


def test_the_checker_sees_lazy_and_relative_imports():
    # An import inside a function body, a relative `from ..train import x` and a root subpackage import.
    text = "def f():\n    from ..train import loop\n    import prac_dist.train.cli\nfrom prac_dist import train, step\n"
    found = sorted(name for _, name in _imports(ROOT / "fsdp" / "probe.py", text))
    assert found == ["prac_dist", "prac_dist.train", "prac_dist.train", "prac_dist.train.cli"]


# Names two subpackages still export: prac_dist.patching re-exports the registry's (its own session cuts them).
_SHARED_EXPORTS = {"ARCHITECTURES", "Architecture"}


def _exports(init: Path):
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def test_one_subpackage_exports_each_name():
    """prac_dist/__init__ is the user facade and may repeat a subpackage's name; subpackages may not."""
    owners = {}
    for init in sorted(ROOT.glob("*/__init__.py")):
        for name in _exports(init):
            owners.setdefault(name, []).append(init.parent.name)
    shared = {name: pkgs for name, pkgs in owners.items() if len(pkgs) > 1 and name not in _SHARED_EXPORTS}
    assert not shared, f"exported by several subpackages: {shared}"


def test_the_new_homes_sit_below_their_users():
    # distributed (environment, process group, compile) serves core and the engines; checkpoint serves
    # the engines and the trainer, and neither may reach up into them.
    assert LAYER["models"] < LAYER["distributed"] < LAYER["core"] < LAYER["checkpoint"]
    assert LAYER["checkpoint"] < min(LAYER["deepspeed"], LAYER["fsdp"], LAYER["integrations"], LAYER["train"])
