"""Principal-subspace refresh: randomized subspace iteration vs exact SVD / eigh, on real activations.

Activations: inputs of the last decoder layer's linears of a LLaMA (hidden 768,
ffn 2048, 2 layers) trained briefly on WikiText-2, run on held-out text; N = 4096
tokens per batch, r = 0.3n. "warm" refreshes batch B starting from batch A's Q1,
as a refresh after T1 optimizer steps does. Energy = ||X Q||² / ||X||², reported
relative to the exact top-r eigenvectors (float32 eigh of XᵀX).

    python -m benchmarks.quality.subspace_refresh [--steps 20] [--repeats 3]
Prints a table, writes benchmarks/results/subspace_refresh.json. CPU timings are
a real measurement here: the refresh is matmul/LAPACK-bound PyTorch on any device.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from benchmarks._harness import parser, write_result  # noqa: E402
from benchmarks._real_activations import trained_llama_activations  # noqa: E402

from prac_dist.kernels import captured_energy, principal_basis, randomized_principal_basis  # noqa: E402


def exact_principal_basis(x, r):
    """The exact refresh a Compressor with solver='exact' runs (float32 eigh of the scaled XᵀX, then QR)."""
    return principal_basis(x, r)[0]


def _svd_basis(x, r):
    return torch.linalg.svd(x, full_matrices=False).Vh[:r].t().contiguous()


def _time(fn, repeats):
    fn()  # warm-up (allocations, LAPACK workspace)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> int:
    p = parser(__doc__, out="subspace_refresh.json")
    p.add_argument("--steps", type=int, default=20, help="AdamW steps before capturing activations")
    p.add_argument("--tokens", type=int, default=4096, help="N, tokens per batch")
    p.add_argument("--repeats", type=int, default=3, help="timings per method (the median is kept)")
    args = p.parse_args(argv)

    acts = trained_llama_activations(hidden=768, ffn=2048, layers=2, steps=args.steps, seq=128, batch=4,
                                     n_tokens=2 * args.tokens)
    methods = {
        "svd (gesdd of X)": lambda x, r, prev: _svd_basis(x, r),
        "eigh fp32 of XᵀX (production)": lambda x, r, prev: exact_principal_basis(x, r),
        "eigh fp64 of XᵀX": lambda x, r, prev: _eigh64(x, r),
        "randomized cold, iters=2": lambda x, r, prev: randomized_principal_basis(x, r, iters=2),
        "randomized warm, iters=1": lambda x, r, prev: randomized_principal_basis(x, r, q_prev=prev, iters=1),
        "randomized warm, iters=2": lambda x, r, prev: randomized_principal_basis(x, r, q_prev=prev, iters=2),
    }
    rows = []
    for name in ("attn_in", "down_proj_in"):
        xa, xb = acts[name][: args.tokens], acts[name][args.tokens: 2 * args.tokens]
        n = xb.shape[1]
        r = int(0.3 * n)
        prev = exact_principal_basis(xa, r)
        exact = float(captured_energy(xb, exact_principal_basis(xb, r)))
        for label, fn in methods.items():
            sec, q = _time(lambda: fn(xb, r, prev), args.repeats)
            e = float(captured_energy(xb, q))
            rows.append({"activation": name, "N": xb.shape[0], "n": n, "r": r, "method": label,
                         "seconds": sec, "energy": e, "energy_vs_exact": e / exact})
    base = {(row["activation"]): row["seconds"] for row in rows if row["method"] == "eigh fp32 of XᵀX (production)"}
    for row in rows:
        row["speedup_vs_eigh_fp32"] = base[row["activation"]] / row["seconds"]

    print(f"{'activation':<13}{'N':>6}{'n':>6}{'r':>5}  {'method':<26}{'ms':>9}{'energy':>9}{'vs exact':>10}{'speedup':>9}")
    for row in rows:
        print(f"{row['activation']:<13}{row['N']:>6}{row['n']:>6}{row['r']:>5}  {row['method']:<26}"
              f"{1e3 * row['seconds']:>9.1f}{row['energy']:>9.4f}{row['energy_vs_exact']:>10.5f}"
              f"{row['speedup_vs_eigh_fp32']:>8.2f}x")
    result = {"final_train_loss": float(acts["final_loss"]),
              "args": vars(args), "rows": rows}
    write_result(args.out, "subspace_refresh", result)
    print(f"wrote {args.out}")
    return 0


def _eigh64(x, r):
    # Float64 eigh: what float32's rounding costs the exact refresh.
    g = (x.t() @ x).double()
    return torch.linalg.eigh(g)[1][:, -r:].flip(-1).float().contiguous()


if __name__ == "__main__":
    sys.exit(main())
