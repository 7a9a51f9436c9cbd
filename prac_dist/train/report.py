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
    timing_file = out_dir / "timing.json"
    times = json.loads(timing_file.read_text()) if timing_file.is_file() else None
    _plot(out_dir / "report.png", data, times)
    lines = [f"# {title}", "", f"Hardware: {hardware()}", "", "![loss, step time and memory](report.png)", ""]
    lines += _table(data)
    lines += _comparison(data, times)
    lines += _prac_lines(data)
    if extra_lines:
        lines += [""] + extra_lines
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(data) -> List[str]:
    head = ("| run | final train loss | final val loss | val ppl | saved for backward (MiB) | "
            "GPU peak (MiB) | wall time of the run (s) |")
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for label, d in data.items():
        s = d["summary"]
        peak = s.get("gpu_peak_allocated_bytes")
        rows.append("| {} | {} | {:.4f} | {:.2f} | {} | {} | {:.0f} |".format(
            label, _num(s["final_train_loss"], 4), s["final_val_loss"], s["final_val_ppl"],
            _num(s["saved_bytes"] / _MIB if s.get("saved_bytes") else None, 1),
            _num(peak / _MIB if peak else None, 0) if peak else "n/a (CPU)", s["train_time_s"]))
    return rows + [""]


def _time_lines(times: Dict[str, List[float]], baseline_total: float, prac_total: float) -> List[str]:
    """The one time figure (alternating steps, tests/train/test_report.py), and how the totals relate to it."""
    from prac_dist.train.timing import step_time_summary

    t = step_time_summary(times)
    b, p = t["baseline"], t["prac"]
    lines = [f"- Time per optimizer step, measured side by side ({t['rounds']} alternating steps of each on one "
             f"micro-batch): baseline {b['median_s'] * 1e3:,.0f} ms (interquartile {b['q1_s'] * 1e3:,.0f}-"
             f"{b['q3_s'] * 1e3:,.0f}), PRAC {p['median_s'] * 1e3:,.0f} ms ({p['q1_s'] * 1e3:,.0f}-"
             f"{p['q3_s'] * 1e3:,.0f}): PRAC costs {t['prac_cost']:+.1%} time per step"]
    if t["noisy"]:
        lines.append("  - noisy: the spread of the step times is larger than the difference between the runs, so "
                     "this machine shows no measurable cost either way")
    total = prac_total / baseline_total - 1
    lines.append(f"- The runs' wall times ({prac_total:.0f} s vs {baseline_total:.0f} s, {total:+.1%}) ran one "
                 f"after the other, with evaluation and checkpoints; a change in the machine's load between them "
                 f"shows there, not in the side-by-side figure"
                 + ("" if abs(total - t["prac_cost"]) <= 0.05 else
                    f" (they differ from it by {abs(total - t['prac_cost']):.0%}: the load changed)"))
    return lines


def _comparison(data, times: Optional[Dict[str, List[float]]] = None) -> List[str]:
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
    if times:
        lines += _time_lines(times, b["train_time_s"], p["train_time_s"])
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


# Distinct colour, line style and marker per run: with PRAC's loss within 0.1% of the baseline's, colour
# alone leaves one curve hidden under the other.
_STYLE = {"baseline": dict(color="#4c72b0", ls="-", marker="o"), "prac": dict(color="#dd8452", ls="--", marker="s")}


def _plot(path: Path, data, times: Optional[Dict[str, List[float]]] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_time, ax_mem) = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [3, 2, 2]})
    for i, (label, d) in enumerate(data.items()):
        st = _STYLE.get(label, dict(color=f"C{i}", ls="-", marker="^"))
        steps = [r["step"] for r in d["train"]]
        ax_loss.plot(steps, _ema([r["train_loss"] for r in d["train"]]), color=st["color"], ls=st["ls"], lw=1.5,
                     label=f"{label} train")
        if d["eval"]:
            ax_loss.plot([r["step"] for r in d["eval"]], [r["val_loss"] for r in d["eval"]], color=st["color"],
                         ls=":", marker=st["marker"], ms=6, mfc="none", label=f"{label} validation")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss (train: EMA 0.9)")
    ax_loss.set_title("Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    _time_box(ax_time, times)
    _memory_bars(ax_mem, data)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _time_box(ax, times: Optional[Dict[str, List[float]]]) -> None:
    if not times:
        ax.set_axis_off()
        ax.set_title("step time: measured by --compare only")
        return
    labels = list(times)
    box = ax.boxplot([[t * 1e3 for t in times[k]] for k in labels], patch_artist=True)
    ax.set_xticks(range(1, len(labels) + 1), labels)
    for patch, label in zip(box["boxes"], labels):
        patch.set_facecolor(_STYLE.get(label, {}).get("color", "C0"))
    ax.set_ylabel("ms per optimizer step")
    ax.set_title(f"Step time, side by side\n({len(times[labels[0]])} alternating steps each)")
    ax.grid(alpha=0.3, axis="y")


def _memory_bars(ax, data) -> None:
    """Saved-for-backward bytes of one micro-batch, stacked: decoder layers below, the loss head above."""
    bars = []  # (label, split)
    for label, d in data.items():
        s, mem = d["summary"], d["memory"]
        if s.get("saved_bytes_no_prac") and "baseline" not in data:
            bars.append(("no PRAC (same batch)", split_saved(mem.get("saved_by_module_name_no_prac"))
                         or {"decoder": s["saved_bytes_no_prac"], "head": 0}))
        if s.get("saved_bytes"):
            bars.append((label, split_saved(mem.get("saved_by_module_name"))
                         or {"decoder": s["saved_bytes"], "head": 0}))
    if not bars:
        ax.set_axis_off()
        ax.set_title("memory not measured (train.measure_memory: false)")
        return
    names = [name for name, _ in bars]
    dec = [split["decoder"] / _MIB for _, split in bars]
    head = [split["head"] / _MIB for _, split in bars]
    ax.bar(names, dec, color="#55a868", label="decoder layers")
    ax.bar(names, head, bottom=dec, color="#8172b3", label="loss head (final norm, lm_head, loss)")
    for i, (d, h) in enumerate(zip(dec, head)):
        ax.annotate(f"{d + h:,.1f}", (i, d + h), ha="center", va="bottom")
    ax.set_ylabel("MiB")
    ax.set_title("Activations saved for backward\n(one micro-batch)")
    ax.legend(fontsize=8)


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
