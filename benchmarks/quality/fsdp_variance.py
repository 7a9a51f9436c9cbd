"""Variance of the all-reduced PRAC gradient: 1 data-parallel rank against W (FSDP2).

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m benchmarks.quality.fsdp_variance --reps 200

PRAC's weight gradient is an unbiased estimate: dW~ = dYᵀ X P with E[P] = I. Its error
variance is Var = (c - 1) ‖dYᵀ X (I - Q1 Q1ᵀ)‖²_F for one draw of the random subspace Q2
(c = (n - r1) / r2). With per_rank_random=True each rank draws its own Q2, so FSDP2's
rank average of W independent errors has 1/W of one rank's variance when the ranks see the
same data. Measured here, per repetition r (seed r, fresh model, fresh Q1/Q2):

    err = Σ over all parameters ‖g~ - g‖²_F,   g = the exact full-batch gradient (no PRAC)

and the ratio E[err | 1 rank] / E[err | W ranks] over the same global batch content:

    replicated          every rank holds the same rows b; 1 rank runs [b; ...; b]: the
                        exact gradient and Q1 are identical, so the ratio is W in expectation
    replicated_shared   the same with per_rank_random=False: every rank draws the same Q2,
                        the W estimates coincide and the ratio is exactly 1 (the control)
    split               the global batch holds W different row blocks, one per rank (real data
                        parallelism): the ratio is ‖Σ_r G_r R‖² / Σ_r ‖G_r R_r‖², between 1 and W,
                        W when the ranks' gradients agree, 1 when they are orthogonal

Linear layers only (compress_nonlinear=False), where the unbiasedness and the variance
formula are exact; dX is exact, so only the compressed weights' gradients carry error.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from typing import Dict, Iterable, List

import torch
import torch.distributed as dist

from benchmarks._harness import llama, parser, write_result  # noqa: E402
from prac_dist.distributed import close_distributed  # noqa: E402

CASES = ("replicated", "replicated_shared", "split")


def tiny_llama(hidden: int, layers: int, vocab: int, seq: int, seed: int = 0):
    from prac_dist.models import ModelShape

    torch.manual_seed(seed)
    return llama(ModelShape("llama", hidden=hidden, layers=layers, heads=4, ffn=2 * hidden, vocab=vocab,
                            max_positions=seq), config=dict(attention_dropout=0.0))


def _grads(model) -> Dict[str, torch.Tensor]:
    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if hasattr(g, "full_tensor"):  # FSDP2: this rank's shard of the rank-averaged gradient
            g = g.full_tensor()
        out[name] = g.detach().float().clone()
    return out


def _sq_error(grads: Dict[str, torch.Tensor], exact: Dict[str, torch.Tensor]) -> float:
    return float(sum(((grads[k] - exact[k]) ** 2).sum(dtype=torch.float64) for k in exact))


def _backward(model, x: torch.Tensor) -> None:
    model(input_ids=x, labels=x).loss.backward()


def _prac(seed: int, per_rank_random: bool):
    from prac_dist import PRACConfig

    return PRACConfig(principal_ratio=0.3, random_ratio=0.3, compress_nonlinear=False, seed=seed,
                      per_rank_random=per_rank_random, linear_storage="project", storage_bits=16)


def measure(reps: int, cases: Iterable[str] = CASES, hidden: int = 64, layers: int = 2, vocab: int = 512,
            seq: int = 32, local_batch: int = 4) -> dict:
    """Run inside an initialised process group of W ranks; every rank returns the same dict."""
    from torch.distributed.device_mesh import init_device_mesh

    from prac_dist import apply_prac
    from prac_dist.fsdp import parallelize

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    template = tiny_llama(hidden, layers, vocab, seq)
    out = {"world_size": world, "reps": reps, "model": {"hidden": hidden, "layers": layers, "vocab": vocab,
           "seq": seq, "local_batch": local_batch}, "cases": {}}
    for case in cases:
        if case not in CASES:
            raise ValueError(f"case={case!r}: accepted are {list(CASES)}")
        gen = torch.Generator().manual_seed(7)
        if case == "split":
            global_x = torch.randint(0, vocab, (world * local_batch, seq), generator=gen)
        else:
            global_x = torch.randint(0, vocab, (local_batch, seq), generator=gen).repeat(world, 1)
        local_x = global_x[rank * local_batch:(rank + 1) * local_batch]
        shared = case == "replicated_shared"

        exact_model = copy.deepcopy(template)
        _backward(exact_model, global_x)
        exact = _grads(exact_model)

        one_rank: List[float] = []
        for r in range(rank, reps, world):  # the 1-rank runs are independent: share them out
            model = apply_prac(copy.deepcopy(template), _prac(r, not shared))
            _backward(model, global_x)
            one_rank.append(_sq_error(_grads(model), exact))
        gathered = [None] * world
        dist.all_gather_object(gathered, one_rank)
        one_rank = [e for part in gathered for e in part]

        w_ranks: List[float] = []
        for r in range(reps):
            model = parallelize(copy.deepcopy(template), _prac(r, not shared), mesh)
            _backward(model, local_x)
            w_ranks.append(_sq_error(_grads(model), exact))
        out["cases"][case] = _summary(one_rank, w_ranks, world, case)
    return out


def _summary(one: List[float], many: List[float], world: int, case: str) -> dict:
    def stats(xs):
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / max(1, len(xs) - 1))
        return mean, sd

    m1, s1 = stats(one)
    mw, sw = stats(many)
    ratio = m1 / mw
    # Delta method: relative standard errors of two independent means add in quadrature.
    se = ratio * math.sqrt((s1 / m1) ** 2 / len(one) + (sw / mw) ** 2 / len(many))
    expected = {"replicated": world, "replicated_shared": 1}.get(case)
    return {"err_1_rank": m1, "err_1_rank_sd": s1, f"err_{world}_ranks": mw, f"err_{world}_ranks_sd": sw,
            "ratio": ratio, "ratio_se": se, "expected": expected}


def _table(result: dict) -> str:
    w = result["world_size"]
    lines = [f"{'case':<20} {'E err, 1 rank':>14} {f'E err, {w} ranks':>15} {'ratio':>14} {'expected':>9}"]
    for case, row in result["cases"].items():
        exp = "-" if row["expected"] is None else f"{row['expected']}"
        if case == "split":
            exp = f"1..{w}"
        lines.append(f"{case:<20} {row['err_1_rank']:>14.4e} {row[f'err_{w}_ranks']:>15.4e} "
                     f"{row['ratio']:>7.3f} ± {row['ratio_se']:.3f} {exp:>9}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = parser(__doc__, out="fsdp_variance.json")
    ap.add_argument("--reps", type=int, default=200, help="repetitions (seeds) per case and world size")
    args = ap.parse_args(argv)
    if args.reps < 2:
        print(f"--reps={args.reps}: accepted is an integer >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    from prac_dist.fsdp import init_distributed

    init_distributed()
    start = time.time()
    result = measure(args.reps)
    result["seconds"] = round(time.time() - start, 1)
    if dist.get_rank() == 0:
        result["backend"] = dist.get_backend()
        result["command"] = "torchrun --nproc_per_node %d -m benchmarks.quality.fsdp_variance --reps %d" % (
            dist.get_world_size(), args.reps)
        print(_table(result))
        write_result(args.out, "fsdp_variance", result)
        print(f"wrote {args.out}")
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
