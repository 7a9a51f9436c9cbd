"""The README's quick start, measured: runs its command 1 (`prac-train --compare` on the demo config) and
writes what the README quotes to benchmarks/results/quickstart.json.

    python -m benchmarks.quality.quickstart [--out benchmarks/results/quickstart.json] [--run-dir runs/quickstart]

Takes about 5 minutes on an idle 2-core CPU (two 120-step trainings, then 20 alternating timed steps each).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks._harness import ROOT, parser, write_result
from prac_dist.train.report import split_saved
from prac_dist.train.timing import step_time_summary

CONFIG = "configs/train/llama_tiny.yaml"


def _summarize(run_dir: Path) -> dict:
    runs = {}
    for label in ("baseline", "prac"):
        summary = json.loads((run_dir / label / "summary.json").read_text())
        memory = next(json.loads(line) for line in (run_dir / label / "metrics.jsonl").open()
                      if json.loads(line).get("kind") == "memory")
        runs[label] = {**summary, "saved_split": split_saved(memory.get("saved_by_module_name"))}
    b, p = runs["baseline"], runs["prac"]
    return {
        "runs": runs,
        "val_loss_change": p["final_val_loss"] / b["final_val_loss"] - 1,
        "saved_bytes_ratio": p["saved_bytes"] / b["saved_bytes"],
        "step_time": step_time_summary(json.loads((run_dir / "timing.json").read_text())),
    }


def main(argv=None) -> int:
    ap = parser(__doc__, out="quickstart.json")
    ap.add_argument("--run-dir", default=str(ROOT / "runs" / "quickstart"))
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = ["prac-train", "--config", CONFIG, "--compare", "--output-dir", str(run_dir)]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    fields = {"command": " ".join(cmd[:-1] + ["runs/quickstart"]), "wall_seconds_whole_command": wall,
              **_summarize(run_dir)}
    write_result(args.out, "quickstart", fields)
    b, p, t = fields["runs"]["baseline"], fields["runs"]["prac"], fields["step_time"]
    print(f"{'run':10s} {'val loss':>9s} {'saved MiB':>10s} {'step ms (median)':>17s} {'wall s':>7s}")
    for label, r in (("baseline", b), ("prac", p)):
        print(f"{label:10s} {r['final_val_loss']:9.4f} {r['saved_bytes'] / 2**20:10.1f} "
              f"{t[label]['median_s'] * 1e3:17.0f} {r['train_time_s']:7.0f}")
    print(f"val loss {fields['val_loss_change']:+.2%}, saved bytes {fields['saved_bytes_ratio']:.3f}x, "
          f"step time {t['prac_cost']:+.1%}{' (noisy)' if t['noisy'] else ''}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
