"""report.md + report.png for one run or a baseline-vs-PRAC comparison: loss curves and memory side by side."""

from __future__ import annotations

import json
import platform
import re
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["write_report", "read_run", "hardware", "split_saved"]

_MIB = 2 ** 20


def read_run(run_dir: Path) -> Dict[str, Any]:
    run_dir = Path(run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "train": [r for r in records if r.get("kind") == "train"],
        "eval": [r for r in records if r.get("kind") == "eval"],
        "memory": next((r for r in records if r.get("kind") == "memory"), {}),
    }


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        dev = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    else:
        cpu = _cpu_name()
        dev = f"CPU ({cpu}, {torch.get_num_threads()} threads)"
    return f"{dev}; torch {torch.__version__}; Python {platform.python_version()}"


def write_report(out_dir: Path, runs: Dict[str, Path], title: str, extra_lines: Optional[List[str]] = None) -> Path:
    """runs: label -> run directory (each with metrics.jsonl and summary.json)."""
    out_dir = Path(out_dir)
    data = {label: read_run(path) for label, path in runs.items()}
    _plot(out_dir / "report.png", data)
    lines = [f"# {title}", "", f"Hardware: {hardware()}", "", "![loss and memory](report.png)", ""]
    lines += _table(data)
    lines += _comparison(data)
    lines += _prac_lines(data)
    if extra_lines:
        lines += [""] + extra_lines
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(data) -> List[str]:
    head = ("| run | final train loss | final val loss | val ppl | saved for backward (MiB) | "
            "GPU peak (MiB) | tokens/s | train time (s) |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, d in data.items():
        s = d["summary"]
        peak = s.get("gpu_peak_allocated_bytes")
        rows.append("| {} | {} | {:.4f} | {:.2f} | {} | {} | {} | {:.0f} |".format(
            label, _num(s["final_train_loss"], 4), s["final_val_loss"], s["final_val_ppl"],
            _num(s["saved_bytes"] / _MIB if s.get("saved_bytes") else None, 1),
            _num(peak / _MIB if peak else None, 0) if peak else "n/a (CPU)",
            _num(s["median_tokens_per_s"], 0), s["train_time_s"]))
    return rows + [""]


def _comparison(data) -> List[str]:
    if "baseline" not in data or "prac" not in data:
        d = next(iter(data.values()))
        s, mem = d["summary"], d["memory"]
        if s.get("saved_bytes") and s.get("saved_bytes_no_prac"):
            cut = 1 - s["saved_bytes"] / s["saved_bytes_no_prac"]
            return [f"Saved for backward on one micro-batch: {s['saved_bytes'] / _MIB:.1f} MiB with PRAC, "
                    f"{s['saved_bytes_no_prac'] / _MIB:.1f} MiB without ({cut:.1%} less)."]  \
                + _split_lines(mem.get("saved_by_module_name_no_prac"), mem.get("saved_by_module_name")) + [""]
        return []
    b, p = data["baseline"]["summary"], data["prac"]["summary"]
    lines = [f"- PRAC final validation loss vs baseline: {p['final_val_loss'] / b['final_val_loss'] - 1:+.2%} "
             f"({p['final_val_loss']:.4f} vs {b['final_val_loss']:.4f})"]
    if b.get("saved_bytes") and p.get("saved_bytes"):
        lines.append(f"- Activation memory saved for backward (one micro-batch): "
                     f"{1 - p['saved_bytes'] / b['saved_bytes']:.1%} less "
                     f"({p['saved_bytes'] / _MIB:.1f} vs {b['saved_bytes'] / _MIB:.1f} MiB)")
        lines += _split_lines(data["baseline"]["memory"].get("saved_by_module_name"),
                              data["prac"]["memory"].get("saved_by_module_name"))
    if b.get("gpu_peak_allocated_bytes") and p.get("gpu_peak_allocated_bytes"):
        lines.append(f"- GPU peak allocated: {1 - p['gpu_peak_allocated_bytes'] / b['gpu_peak_allocated_bytes']:.1%}"
                     f" less")
    if b.get("median_tokens_per_s") and p.get("median_tokens_per_s"):
        lines.append(f"- Compute it costs: {b['median_tokens_per_s'] / p['median_tokens_per_s'] - 1:+.1%} time per "
                     f"token ({p['median_tokens_per_s'] / b['median_tokens_per_s'] - 1:+.1%} tokens/s, median step; "
                     f"FLOPs per setting: benchmarks/results/compute.json, prac-plan predicts them)")
    return lines + [""]


# A decoder layer's module path: model.layers.3..., transformer.h.3..., gpt_neox.layers.3...
_DECODER = re.compile(r"(^|\.)(layers|h|blocks|block)\.\d+(\.|$)")


def split_saved(by_name: Optional[Dict[str, int]]) -> Optional[Dict[str, int]]:
    """Bytes by module name -> {'decoder': the decoder layers, 'head': the rest (final norm, lm_head, loss)}."""
    if not by_name:
        return None
    decoder = sum(v for k, v in by_name.items() if _DECODER.search(k))
    return {"decoder": decoder, "head": sum(by_name.values()) - decoder}


def _split_lines(before: Optional[Dict[str, int]], after: Optional[Dict[str, int]]) -> List[str]:
    """Where the saving comes from: the loss head (fused loss: no float32 logits) vs the decoder (PRAC)."""
    b, a = split_saved(before), split_saved(after)
    if b is None or a is None:
        return []
    total = (b["decoder"] + b["head"]) - (a["decoder"] + a["head"])
    if total <= 0 or not b["decoder"]:
        return []
    head, dec = b["head"] - a["head"], b["decoder"] - a["decoder"]
    return [f"  - of the {total / _MIB:.1f} MiB saved, {head / _MIB:.1f} MiB ({head / total:.0%}) are the loss head "
            f"(final norm, lm_head and loss: {b['head'] / _MIB:.1f} -> {a['head'] / _MIB:.1f} MiB; the fused loss "
            f"never stores the float32 logits) and {dec / _MIB:.1f} MiB ({dec / total:.0%}) the decoder layers' "
            f"compression ({b['decoder'] / _MIB:.1f} -> {a['decoder'] / _MIB:.1f} MiB, "
            f"{1 - a['decoder'] / b['decoder']:.1%} less)"]


def _prac_lines(data) -> List[str]:
    for label, d in data.items():
        evals = [e for e in d["eval"] if e.get("prac_stats")]
        if not evals:
            continue
        shares = _numbers(evals[-1]["prac_stats"])
        if not shares:
            continue
        return [f"PRAC ({label}): the principal subspace held {min(shares):.1%} to {max(shares):.1%} "
                f"(mean {sum(shares) / len(shares):.1%}) of the activation energy over {len(shares)} layer "
                f"groups at the last refresh (metrics.jsonl `prac_stats` has each group).", ""]
    return []


def _numbers(stats) -> List[float]:
    if isinstance(stats, dict):
        out = []
        for v in stats.values():
            out += _numbers(v)
        return out
    if isinstance(stats, (int, float)) and not isinstance(stats, bool):
        return [float(stats)]
    return []


def _plot(path: Path, data) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"baseline": "#4c72b0", "prac": "#dd8452"}
    for i, (label, d) in enumerate(data.items()):
        c = colors.get(label, f"C{i}")
        steps = [r["step"] for r in d["train"]]
        ax_loss.plot(steps, _ema([r["train_loss"] for r in d["train"]]), color=c, lw=1.5, label=f"{label} train")
        if d["eval"]:
            ax_loss.plot([r["step"] for r in d["eval"]], [r["val_loss"] for r in d["eval"]], "o--", color=c,
                         ms=4, label=f"{label} validation")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss (train: EMA 0.9)")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    _memory_bars(ax_mem, data, colors)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _memory_bars(ax, data, colors) -> None:
    labels, values, cols = [], [], []
    for i, (label, d) in enumerate(data.items()):
        s = d["summary"]
        if s.get("saved_bytes_no_prac") and "baseline" not in data:
            labels.append("no PRAC (same batch)")
            values.append(s["saved_bytes_no_prac"] / _MIB)
            cols.append(colors["baseline"])
        if s.get("saved_bytes"):
            labels.append(label)
            values.append(s["saved_bytes"] / _MIB)
            cols.append(colors.get(label, f"C{i}"))
    peaks = {label: d["summary"].get("gpu_peak_allocated_bytes") for label, d in data.items()}
    if values:
        bars = ax.bar(labels, values, color=cols)
        for bar, v in zip(bars, values):
            ax.annotate(f"{v:,.1f}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom")
        title = "Activations saved for backward\n(one micro-batch, MiB)"
        if all(peaks.values()):
            title += "\nGPU peak: " + ", ".join(f"{k} {v / _MIB:,.0f} MiB" for k, v in peaks.items())
        ax.set_title(title)
        ax.set_ylabel("MiB")
    else:
        ax.set_axis_off()
        ax.set_title("memory not measured (train.measure_memory: false)")


def _ema(values: List[float], beta: float = 0.9) -> List[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else beta * m + (1 - beta) * v
        out.append(m)
    return out


def _num(value, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
