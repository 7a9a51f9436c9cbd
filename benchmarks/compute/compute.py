"""Compute per training step against bytes saved for backward: recomputation vs PRAC, decoder and head apart.

Per setting, on a few decoder layers of a model shape (default: 2 layers of LLaMA-130M's, d 768,
ffn 2048, 12 heads, vocab 32000, SDPA):

  FLOPs   one steady-state training step (forward + loss + backward) after `step()`, fp32, 8 x 256
          tokens, counted by torch.utils.flop_counter.FlopCounterMode plus the dense decompositions
          it leaves out (QR 2mn², eigh 9n³, and CPU attention, whose kernel it has no formula for:
          registered as its custom formulas, torch's own SDPA formula for the latter); decoder layers and
          head (final norm, lm_head, loss, embedding) apart. The refresh a principal interval T1
          adds (first step minus steady step) is stated separately and amortised over T1 steps.
  bytes   saved for backward by one forward + loss in bf16 at 4 x 256 tokens, through the saved-
          tensor hook of prac_dist.memory.measure_saved_bytes, plus what selective checkpointing
          caches outside autograd (its saved matmul outputs, recorded by the policy).
  time    CPU seconds of a training step (forward, loss, backward, PRAC step), settings
          interleaved in one process, median of --time-steps steps after one warm-up round.

    python -m benchmarks.compute.compute [--shapes llama_130m llama_1b] [--layers 2] [--skip-time]

Prints a table, writes benchmarks/results/compute.json and the Pareto picture compute.png
(decoder bytes ratio against decoder FLOP ratio, one labelled point per setting).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from prac_dist import PRACConfig, apply_prac
from prac_dist import step as prac_step
from prac_dist.loss import install_fused_loss
from prac_dist.memory import measure_saved_bytes
from prac_dist.models.shapes import PRESETS, build_model
from prac_dist.planner.measure import SAVED_OPS

from benchmarks._harness import parser, result_path, write_result  # noqa: E402

aten = torch.ops.aten

__all__ = ["settings", "count_flops", "count_bytes", "decomposition_flops", "SAVED_OPS"]

# ---- FLOPs FlopCounterMode does not count: dense decompositions (LAPACK flop counts) ----------


def _qr_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, m, n = a_shape
    k = min(m, n)
    return 2 * max(m, n) * k * k * (torch.Size(batch).numel())  # Householder: 2mn² for m >= n


def _eigh_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    *batch, n, _ = a_shape
    return 9 * n ** 3 * (torch.Size(batch).numel())  # tridiagonalisation + QR iteration, eigenvectors included


def _cpu_sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)  # torch counts the CUDA kernels' twin, not this one


def _cpu_sdpa_backward_flops(grad_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)


def decomposition_flops() -> Dict[object, Callable]:
    """FlopCounterMode custom_mapping: the decompositions PRAC's refreshes call, and CPU attention."""
    return {aten.linalg_qr: _qr_flops, aten._linalg_eigh: _eigh_flops,
            aten.linalg_eigh: _eigh_flops,
            aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops}


# ---- settings --------------------------------------------------------------------------------

# Selective checkpointing ("op" mode in torchtitan's terms): prac_dist.planner.measure.SAVED_OPS.
class SelectiveCache:
    """A context_fn for torch.utils.checkpoint that saves SAVED_OPS outputs and counts their bytes."""

    def __init__(self):
        self.bytes = 0
        self.counting = False
        self._seen: set = set()

    def policy(self, ctx, op, *args, **kwargs):
        if op in SAVED_OPS:
            if self.counting and not ctx.is_recompute:
                self._count(ctx, op, args, kwargs)
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    def _count(self, ctx, op, args, kwargs) -> None:
        outputs = getattr(ctx, "op_output", None)
        if outputs is None:  # torch 2.11 shows the policy no outputs: the op on meta tensors gives their sizes
            to_meta = lambda t: t.to("meta")  # noqa: E731
            outputs = op(*torch.utils._pytree.tree_map_only(torch.Tensor, to_meta, args),
                         **torch.utils._pytree.tree_map_only(torch.Tensor, to_meta, kwargs))
        for t in torch.utils._pytree.tree_leaves(outputs):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if t.is_meta:  # a fresh output of its own op: nothing else holds its storage
                    self.bytes += storage.nbytes()
                elif storage.data_ptr() not in self._seen:
                    self._seen.add(storage.data_ptr())
                    self.bytes += storage.nbytes()

    def context_fn(self):
        return create_selective_checkpoint_contexts(self.policy)


def _lean() -> PRACConfig:
    return PRACConfig.lean() if hasattr(PRACConfig, "lean") else PRACConfig(compress_nonlinear=False)


PAPER_SCHEDULE = dict(nonlinear_principal_update_interval=500, nonlinear_principal_solver="exact",
                      principal_schedule="interval")


def _paper(**kw) -> PRACConfig:
    if hasattr(PRACConfig, "paper"):
        return PRACConfig.paper(**kw)
    # Before the preset existed: every input projected, T1 = 500 for all bases, exact eigh, 16-bit Z.
    return PRACConfig(nonlinear_principal_update_interval=500, nonlinear_principal_solver="exact", **kw)


def settings() -> Dict[str, dict]:
    """name -> {'prac': PRACConfig or None, 'ckpt': None|'full'|'selective', 'fused_loss': bool}."""
    other_bits = 8 if PRACConfig().storage_bits == 16 else 16
    return {
        "baseline": {},
        "fused loss only": {"fused_loss": True},
        "full checkpointing (HF)": {"ckpt": "full"},
        "selective checkpointing (matmul outputs)": {"ckpt": "selective"},
        "PRACConfig()": {"prac": PRACConfig()},
        f"PRACConfig(storage_bits={other_bits})": {"prac": PRACConfig(storage_bits=other_bits)},
        "PRAC lean (compress_nonlinear=False)": {"prac": _lean()},
        # The paper's own schedule (T1 = 500 for every basis, exact eigh), which the planner models;
        # PRACConfig.paper() re-solves the norm/SwiGLU bases every step (benchmarks/quality/nonlinear_refresh.py).
        "PRAC paper": {"prac": _paper(**PAPER_SCHEDULE)},
        # The preset as shipped: norm/SwiGLU Q1 re-solved every step (in the steady step's count), linear Q1
        # early-dense then every T1 (amortised over T1 like the others: the 9 early solves are not counted).
        "PRACConfig.paper()": {"prac": PRACConfig.paper()},
        "PRAC paper, 8-bit": {"prac": _paper(storage_bits=8, **PAPER_SCHEDULE)},
    }


def _selected(names) -> Dict[str, dict]:
    """settings(), or the ones named (the baseline always: every ratio is to it)."""
    table = settings()
    if not names:
        return table
    unknown = [n for n in names if n not in table]
    if unknown:
        raise SystemExit(f"--settings {unknown[0]!r}: accepted are {list(table)}")
    return {n: s for n, s in table.items() if n == "baseline" or n in names}


def _checkpoint_layers(model, kwargs: dict) -> None:
    """HF activation checkpointing of every decoder layer (transformers 5: activation_checkpointing_enable; older:
    gradient_checkpointing_enable)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def build(shape, setting: dict, dtype, seed: int = 0):
    """A fresh model of `shape` with `setting` applied; returns (model, selective cache or None)."""
    torch.manual_seed(seed)
    model = build_model(shape, dtype=dtype)
    cache = None
    if setting.get("ckpt") == "full":
        _checkpoint_layers(model, {"use_reentrant": False})
    elif setting.get("ckpt") == "selective":
        cache = SelectiveCache()
        _checkpoint_layers(model, {"use_reentrant": False, "context_fn": cache.context_fn})
    if setting.get("prac") is not None:
        apply_prac(model, setting["prac"])
    elif setting.get("fused_loss"):
        assert install_fused_loss(model)
    return model, cache


def _train_step(model, x, prac: bool) -> None:
    model(input_ids=x, labels=x).loss.backward()
    model.zero_grad(set_to_none=True)
    if prac:
        prac_step(model)


def _split(counts: Dict[str, Dict], layers: int) -> Dict[str, int]:
    root = next(k for k in counts if k != "Global" and "." not in k)  # e.g. LlamaForCausalLM
    decoder = sum(sum(counts.get(f"{root}.model.layers.{i}", {}).values()) for i in range(layers))
    total = sum(counts["Global"].values())
    return {"decoder": decoder, "head": total - decoder, "total": total}


def count_flops(shape, setting: dict, batch: int, seq: int, seed: int = 0) -> Dict[str, object]:
    """FLOPs of one steady-state step, and the refresh the first (all bases due) step adds."""
    model, _ = build(shape, setting, torch.float32, seed)
    x = torch.randint(0, shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    prac = setting.get("prac") is not None
    steps = []
    for _ in range(2 if prac else 1):
        with FlopCounterMode(display=False, depth=None, custom_mapping=decomposition_flops()) as fc:
            _train_step(model, x, prac)
        steps.append(_split(fc.get_flop_counts(), shape.layers))
    steady = steps[-1]
    refresh = steps[0]["total"] - steady["total"]
    t1 = setting["prac"].principal_update_interval if prac else 1
    return {**steady, "refresh": refresh, "refresh_interval": t1}


def count_bytes(shape, setting: dict, batch: int, seq: int, seed: int = 0) -> Dict[str, int]:
    """Bytes saved for backward (bf16) by one forward + loss: decoder layers and the rest."""
    model, cache = build(shape, setting, torch.bfloat16, seed)
    x = torch.randint(0, shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    if setting.get("prac") is not None:  # bases as after a first training step: they come from its forward
        # (no backward: a bf16 matmul with a non-transposed right operand runs ~40x slower than fp32 on
        # this CPU, 65 s for one LLaMA-1B down_proj dX, and backward changes no basis and no byte count)
        model(input_ids=x, labels=x)
        prac_step(model)
    if cache is not None:
        cache.counting = True
    report = measure_saved_bytes(lambda: model(input_ids=x, labels=x).loss, model)
    report.output = None
    # A checkpointed layer saves its inputs from the decoder's own forward (the layer's hooks run
    # inside the checkpoint): "model" holds them, and nothing else in the baseline.
    decoder = sum(v for k, v in report.by_module_name.items() if k.startswith("model.layers.") or k == "model")
    decoder += cache.bytes if cache is not None else 0
    total = report.total_bytes + (cache.bytes if cache is not None else 0)
    return {"decoder": decoder, "head": total - decoder, "total": total}


def time_steps(shape, names: List[str], batch: int, seq: int, steps: int, seed: int = 0) -> Dict[str, float]:
    """Median seconds per training step, settings interleaved (one warm-up round first)."""
    table = settings()
    models = {n: build(shape, table[n], torch.float32, seed)[0] for n in names}
    x = torch.randint(0, shape.vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))
    times: Dict[str, List[float]] = {n: [] for n in names}
    for round_ in range(steps + 1):
        for n in names:
            t0 = time.perf_counter()
            _train_step(models[n], x, table[n].get("prac") is not None)
            if round_:
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def measure_shape(name: str, shape, args) -> Dict[str, object]:
    table = _selected(args.settings)
    rows = []
    for label, setting in table.items():
        t0 = time.time()
        flops = count_flops(shape, setting, args.flop_batch, args.seq, args.seed)
        nbytes = count_bytes(shape, setting, args.byte_batch, args.seq, args.seed)
        cfg = setting.get("prac")
        rows.append({"setting": label, "prac_config": None if cfg is None else cfg.to_dict(),
                     "checkpointing": setting.get("ckpt"), "fused_loss": bool(setting.get("fused_loss"))
                     or bool(cfg is not None and cfg.fused_loss), "flops": flops, "saved_bytes": nbytes})
        print(f"  [{name}] {label}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    base = rows[0]
    for r in rows:
        f, b = r["flops"], r["saved_bytes"]
        r["decoder_flop_ratio"] = f["decoder"] / base["flops"]["decoder"]
        amortised = f["decoder"] + f["refresh"] / f["refresh_interval"]
        r["decoder_flop_ratio_amortised_refresh"] = amortised / base["flops"]["decoder"]
        r["head_flop_ratio"] = f["head"] / base["flops"]["head"]
        r["total_flop_ratio"] = f["total"] / base["flops"]["total"]
        r["decoder_bytes_ratio"] = b["decoder"] / base["saved_bytes"]["decoder"]
        r["head_bytes_ratio"] = b["head"] / base["saved_bytes"]["head"]
        r["total_bytes_ratio"] = b["total"] / base["saved_bytes"]["total"]
    if not args.skip_time:
        secs = time_steps(shape, list(table), args.time_batch, args.seq, args.time_steps, args.seed)
        for r in rows:
            r["step_seconds"] = secs[r["setting"]]
            r["time_ratio"] = secs[r["setting"]] / secs[base["setting"]]
    return {"shape": dataclasses.asdict(shape), "rows": rows}


def print_table(name: str, result: dict, args) -> None:
    rows = result["rows"]
    base = rows[0]
    print(f"\n{name} shape, {result['shape']['layers']} decoder layers. FLOPs: fp32, {args.flop_batch} x {args.seq} "
          f"tokens, steady step (baseline decoder {base['flops']['decoder'] / 1e9:.1f} GFLOP, head "
          f"{base['flops']['head'] / 1e9:.1f}). Bytes: bf16, {args.byte_batch} x {args.seq} (baseline decoder "
          f"{base['saved_bytes']['decoder'] / 2**20:.1f} MiB, head {base['saved_bytes']['head'] / 2**20:.1f} MiB).")
    timed = "time_ratio" in base
    head = (f"{'setting':<42} {'dec FLOP':>8} {'+refresh':>8} {'head FLOP':>9} {'all FLOP':>8} {'dec bytes':>9} "
            f"{'head bytes':>10} {'all bytes':>9}" + (f" {'CPU time':>8}" if timed else ""))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['setting']:<42} {r['decoder_flop_ratio']:>8.3f} {r['decoder_flop_ratio_amortised_refresh']:>8.3f} "
              f"{r['head_flop_ratio']:>9.3f} {r['total_flop_ratio']:>8.3f} {r['decoder_bytes_ratio']:>9.3f} "
              f"{r['head_bytes_ratio']:>10.3f} {r['total_bytes_ratio']:>9.3f}"
              + (f" {r['time_ratio']:>8.3f}" if timed else ""))
    print("ratios to the baseline. +refresh: decoder FLOPs with the first step's refresh amortised over T1 steps."
          + (f" CPU time: median step seconds at {args.time_batch} x {args.seq} tokens." if timed else ""))


def plot(results: Dict[str, dict], path: Path) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5.5), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        for r in res["rows"]:
            x, y = r["decoder_flop_ratio"], r["decoder_bytes_ratio"]
            marker = "s" if r["checkpointing"] else ("o" if r["prac_config"] else "^")
            ax.scatter([x], [y], marker=marker, s=50)
            ax.annotate(r["setting"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel("decoder FLOPs per step / baseline")
        ax.set_ylabel("decoder bytes saved for backward / baseline")
        ax.set_title(f"{name}, {res['shape']['layers']} layers: lower left is better")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = parser(__doc__, out="compute.json", seed=0, seq=256)
    ap.add_argument("--shapes", nargs="+", default=["llama_130m"], choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--flop-batch", type=int, default=8)
    ap.add_argument("--byte-batch", type=int, default=4)
    ap.add_argument("--time-batch", type=int, default=2)
    ap.add_argument("--time-steps", type=int, default=5)
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--settings", nargs="+", default=None, metavar="NAME",
                    help="measure only these settings (names as in the table; the baseline is always measured)")
    ap.add_argument("--vocab", type=int, default=None, help="override the shape's vocabulary (smoke tests)")
    ap.add_argument("--hidden", type=int, default=None, help="override hidden size (smoke tests)")
    ap.add_argument("--ffn", type=int, default=None, help="override the MLP width (smoke tests)")
    ap.add_argument("--heads", type=int, default=None, help="override the head count (smoke tests)")
    ap.add_argument("--png", default=str(result_path("compute.png")))
    args = ap.parse_args(argv)
    if args.time_steps < 5 and not args.skip_time:
        ap.error(f"--time-steps={args.time_steps}: accepted is at least 5 (a median of fewer is noise)")
    t0 = time.time()
    results = {}
    overrides = {k: getattr(args, k) for k in ("vocab", "hidden", "ffn", "heads") if getattr(args, k) is not None}
    for name in args.shapes:
        shape = dataclasses.replace(PRESETS[name], layers=args.layers, **overrides)
        results[name] = measure_shape(name, shape, args)
        print_table(name, results[name], args)
    png = plot(results, Path(args.png))
    fields = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "png")}, "results": results,
              "flop_counting": "FlopCounterMode + QR 2mn^2 + eigh 9n^3; decoder = model.layers.*; head = the rest",
              "byte_counting": "prac_dist.memory.measure_saved_bytes (bf16) + selective checkpointing's cache",
              "timing": "CPU, settings interleaved, median step seconds after a warm-up round",
              "seconds": round(time.time() - t0, 1)}
    out = write_result(args.out, "compute", fields)
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
