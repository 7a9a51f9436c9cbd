"""What every benchmark script stands on: where results go, the arguments they share, the models they
build, and `write_result` (the one result schema, benchmarks/_bench_env.py).

- Paths: `ROOT`, `RESULTS`, `result_path(name)`. A script never derives a path from its own file's
  location, so moving it between the group folders changes nothing it writes.
- Arguments: `parser(__doc__, out=..., seed=..., ...)` adds the options most scripts share, with one
  spelling and one help text each.
- Models: `llama(shape)` builds a random-weight `LlamaForCausalLM` from a model-registry preset
  (prac_dist/models/shapes.py PRESETS), a shape of `SHAPES` below, or a `ModelShape`.
- Results: `write_result(path, name, fields)` adds the provenance (commit, command, versions).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional, Union

from prac_dist.models.shapes import PRESETS, ModelShape, hf_config

from benchmarks._bench_env import write_result

__all__ = ["ROOT", "RESULTS", "result_path", "parser", "SHAPES", "shape", "llama_config", "llama",
           "write_result"]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: scripts run from here (`python -m benchmarks.<group>.<name>`)."""
RESULTS = ROOT / "benchmarks" / "results"
"""Every committed result file lives here (tests/benchmarks/test_results_schema.py checks them all)."""


def result_path(name: str) -> Path:
    """The default result file of a benchmark: benchmarks/results/<name>."""
    return RESULTS / name


# ---------------------------------------------------------------------------------------------------
# Arguments

def parser(doc: Optional[str], *, out: Optional[str] = None, seed: Optional[int] = None,
           threads: Optional[int] = None, batch: Optional[int] = None, seq: Optional[int] = None,
           batch_help: str = "sequences per micro-batch", **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser whose --help prints `doc` (the script's docstring: what it measures, its commands),
    with each shared option whose default is given here: --out (a file name under benchmarks/results/),
    --seed, --threads, --batch, --seq. The script adds its own options; `kwargs` go to ArgumentParser."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    if out is not None:
        ap.add_argument("--out", type=Path, default=result_path(out),
                        help=f"result JSON (default benchmarks/results/{out})")
    if seed is not None:
        ap.add_argument("--seed", type=int, default=seed, help="torch seed of the model and data (default %(default)s)")
    if threads is not None:
        ap.add_argument("--threads", type=int, default=threads, help="torch CPU threads (default %(default)s)")
    if batch is not None:
        ap.add_argument("--batch", type=int, default=batch, help=f"{batch_help} (default %(default)s)")
    if seq is not None:
        ap.add_argument("--seq", type=int, default=seq, help="tokens per sequence (default %(default)s)")
    return ap


# ---------------------------------------------------------------------------------------------------
# Models

SHAPES: Dict[str, ModelShape] = {
    # adaptive_rank's saved-bytes count: the prac-train quick-start decoder (llama_tiny) with its own head.
    "llama_tiny_untied": replace(PRESETS["llama_tiny"], tied=False),
    # deepspeed_activation_memory's default: 2 layers at hidden 128, a 4096-token vocabulary.
    "llama_128x2": ModelShape("llama", hidden=128, layers=2, heads=4, ffn=352, vocab=4096),
    # paper_table / gpu_check --dry-run: builds and steps in well under a second on one CPU core.
    "llama_64x2": ModelShape("llama", hidden=64, layers=2, heads=2, ffn=176, vocab=512),
    # init_memory's import probe: the smallest LLaMA, built once so the patching modules are imported.
    "llama_probe": ModelShape("llama", hidden=16, layers=1, heads=2, ffn=32, vocab=32),
}
"""Shapes only benchmarks build; the named model sizes (llama_60m ... llama_7b, gpt2_124m) are the
registry's PRESETS."""


def shape(name_or_shape: Union[str, ModelShape], **overrides) -> ModelShape:
    """A registry preset or a `SHAPES` entry by name (or a ModelShape), with fields replaced."""
    if isinstance(name_or_shape, ModelShape):
        found = name_or_shape
    elif name_or_shape in PRESETS:
        found = PRESETS[name_or_shape]
    elif name_or_shape in SHAPES:
        found = SHAPES[name_or_shape]
    else:
        raise ValueError(f"shape {name_or_shape!r}: accepted are {sorted(PRESETS)} and {sorted(SHAPES)}")
    return replace(found, **overrides) if overrides else found


def llama_config(name_or_shape: Union[str, ModelShape], *, config: Optional[dict] = None, **overrides):
    """The LlamaConfig of `shape(name_or_shape, **overrides)`; `config` sets further LlamaConfig fields."""
    s = shape(name_or_shape, **overrides)
    if s.family != "llama":
        raise ValueError(f"shape {name_or_shape!r} is a {s.family} shape; llama() builds LLaMA models")
    return hf_config(s, **(config or {}))


def llama(name_or_shape: Union[str, ModelShape], *, config: Optional[dict] = None, **overrides):
    """A randomly initialised `LlamaForCausalLM` of `llama_config(...)` (seed torch first for fixed weights)."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM(llama_config(name_or_shape, config=config, **overrides))
