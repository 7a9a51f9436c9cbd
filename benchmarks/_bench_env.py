"""One schema for every benchmarks/results/*.json, with the hardware named.

    {
      "benchmark": "storage_bits",            # the script's name (benchmarks/<group>/<name>.py)
      "environment": {                        # where the numbers were measured
        "commit": "794f885…", "dirty": [],    # required: the git commit measured, and files changed from it
        "command": "python -m benchmarks.quality.storage_bits --steps 300",   # required: how to rerun it
        "cpu": "AMD EPYC", "cpu_count": 2,    # required: the CPU (model name, else the architecture)
        "gpu": null,                          # required: the GPU's name, or null when none was used
        "torch": "2.13.0+cpu", "transformers": "5.25.0", "python": "3.11.7",   # required
        ... optional: torch_threads, triton, deepspeed, cuda, driver, gpu_memory_gib, note
      },
      ... the benchmark's own fields (rows, args, seconds, command, ...)
    }

Writers call `write_result(path, "name", fields)`; tests/benchmarks/test_results_schema.py checks
every committed file with `check_result`, so a new benchmark cannot drift to a second schema.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path, PurePath
from typing import Any, Dict, List, Mapping

import torch

__all__ = ["environment", "write_result", "check_result", "REQUIRED_ENVIRONMENT"]

# Field -> accepted types; None in the tuple means the field may be null.
REQUIRED_ENVIRONMENT = {"commit": (str,), "dirty": (list,), "command": (str,), "cpu": (str,),
                        "cpu_count": (int, type(None)), "gpu": (str, type(None)), "torch": (str,),
                        "transformers": (str, type(None)), "python": (str,)}
# Versions recorded when the benchmark already imported them (importing deepspeed just to ask costs ~5 s).
_OPTIONAL_PACKAGES = ("triton", "deepspeed", "prac_dist")


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout


def command_line() -> str:
    """How this process was started, as a user reruns it: `python -m benchmarks.<name> args...`."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    head = f"python -m {spec.name}" if spec is not None and spec.name else f"python {sys.argv[0]}"
    return " ".join([head] + [a if a and all(c.isalnum() or c in "-_=./:,+" for c in a) else repr(a)
                              for a in sys.argv[1:]])


def provenance() -> dict:
    """The commit measured and the files of prac_dist/ and benchmarks/ that differ from it (uncommitted)."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = [line[3:] for line in _git("status", "--porcelain", "--", "prac_dist", "benchmarks").splitlines()
                 if not line[3:].startswith("benchmarks/results/")]
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", []
    return {"commit": commit or "unknown", "dirty": dirty}


def environment(**extra: Any) -> dict:
    """The machine, software, commit and command of this process; `extra` adds or overrides fields
    (e.g. note='loaded machine', command=... for a result that several commands wrote)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env: Dict[str, Any] = {
        **provenance(),
        "command": command_line(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_count=torch.cuda.device_count(), gpu_memory_gib=props.total_memory / 2**30,
                   cuda=torch.version.cuda, driver=_nvidia_driver())
    try:
        import transformers  # cheap beside torch, and every model-level number depends on it

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    for name in _OPTIONAL_PACKAGES:
        module = sys.modules.get(name)
        if name == "triton" and module is None:
            try:
                import triton as module  # noqa: F811 - cheap, and kernel numbers depend on it
            except ImportError:
                module = None
        env[name] = getattr(module, "__version__", None) if module is not None else None
    env.update(extra)
    return env


def _nvidia_driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
        return out.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def check_result(result: Any) -> List[str]:
    """Problems that keep `result` from following the schema above (empty when it does)."""
    if not isinstance(result, Mapping):
        return [f"top level is {type(result).__name__}, expected an object"]
    problems = []
    if not isinstance(result.get("benchmark"), str) or not result.get("benchmark"):
        problems.append(f"benchmark={result.get('benchmark')!r}: expected the script's name")
    env = result.get("environment")
    if not isinstance(env, Mapping):
        return problems + [f"environment={env!r}: expected an object naming the hardware"]
    for key, types in REQUIRED_ENVIRONMENT.items():
        if key not in env:
            problems.append(f"environment.{key}: missing")
        elif not isinstance(env[key], types) or isinstance(env[key], bool):
            problems.append(f"environment.{key}={env[key]!r}: expected {' or '.join(t.__name__ for t in types)}")
    for legacy in ("hardware", "software"):
        if legacy in result:
            problems.append(f"{legacy}: not a key of this schema; its fields belong in environment")
    return problems


def write_result(path, benchmark: str, fields: Mapping[str, Any], **env_extra: Any) -> Path:
    """Write `fields` as benchmarks/results JSON under the one schema; returns the path."""
    result = {"benchmark": benchmark, "environment": environment(**env_extra), **fields}
    problems = check_result(result)
    if problems:
        raise ValueError(f"benchmark result {path}: " + "; ".join(problems))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=_json_path) + "\n")
    return path


def _json_path(value: Any) -> str:
    """Paths (a script's --out, recorded with its arguments) as strings; anything else stays an error."""
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
