"""What each combination of PRAC, DeepSpeed activation checkpointing and HF gradient checkpointing
saves for backward, and the host traffic of PRAC's compressed activation offload (CPU, one process).

    DS_ACCELERATOR=cpu python -m benchmarks.memory.deepspeed_activation_memory [--hidden 128 --layers 2 --seq 128]

Saved bytes are `prac_dist.memory.measure_saved_bytes` of one training forward + loss: the tensors
the autograd graph keeps through saved-tensor hooks, Parameters excluded, each storage once. Under
non-reentrant checkpointing (HF's default) the checkpoint's own hooks are innermost, so only what
lives outside the checkpointed blocks (block inputs kept by the checkpoint, the head, the loss) is
counted -- that is also what stays alive between forward and backward. Gradient agreement with the
plain model is checked at full rank (r1 + r2 = n) for every combination.
Writes benchmarks/results/deepspeed_activation_memory.json.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")
for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                   ("MASTER_PORT", "29517")):
    os.environ.setdefault(key, value)

import deepspeed  # noqa: E402
import torch  # noqa: E402

import prac_dist  # noqa: E402
from prac_dist.deepspeed import CompressedActivationOffload, OffloadConfig  # noqa: E402
from prac_dist.memory import measure_saved_bytes  # noqa: E402

from benchmarks._harness import SHAPES, llama, parser, shape, write_result  # noqa: E402


def build(args, prac, checkpointing):
    torch.manual_seed(0)
    model = llama(shape("llama_128x2", hidden=args.hidden, ffn=args.ffn, layers=args.layers, heads=args.heads,
                        vocab=args.vocab, max_positions=args.seq))
    if prac is not None:
        prac_dist.apply_prac(model, prac)
    if checkpointing == "hf":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif checkpointing == "deepspeed":
        deepspeed.checkpointing.configure(None, partition_activations=False, checkpoint_in_cpu=False,
                                          contiguous_checkpointing=False)
        model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=deepspeed.checkpointing.checkpoint)
    model.config.use_cache = False
    return model.train()


def grads(model, x):
    model(input_ids=x, labels=x).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def main() -> int:
    default = SHAPES["llama_128x2"]
    p = parser(__doc__, out="deepspeed_activation_memory.json", batch=2, seq=128)
    p.add_argument("--hidden", type=int, default=default.hidden)
    p.add_argument("--ffn", type=int, default=default.ffn)
    p.add_argument("--layers", type=int, default=default.layers)
    p.add_argument("--heads", type=int, default=default.heads)
    p.add_argument("--vocab", type=int, default=default.vocab)
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    deepspeed.init_distributed(dist_backend="gloo")
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))

    defaults = prac_dist.PRACConfig()
    # r1 + r2 = n, projected in 16 bits: the estimator is exact (int8 storage would round stochastically).
    full_rank = dict(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5, nonlinear_random_ratio=0.5)
    full = prac_dist.PRACConfig.paper(**full_rank)
    reference = grads(build(args, None, None), x)
    rows = []
    for ckpt in (None, "hf", "deepspeed"):
        for label, prac in (("no PRAC", None), ("PRAC defaults", defaults)):
            model = build(args, prac, ckpt)
            report = measure_saved_bytes(lambda: model(input_ids=x, labels=x).loss, model)
            check = grads(build(args, None if prac is None else full, ckpt), x)
            err = max(float((check[k] - reference[k]).abs().max() / reference[k].abs().max()) for k in reference)
            rows.append({"checkpointing": ckpt or "none", "prac": label, "saved_bytes": report.total_bytes,
                         "full_rank_max_rel_grad_err": err})
            print(f"  measured: {rows[-1]}", file=sys.stderr, flush=True)

    traffic = {}
    # The projection's traffic against the same tensors at full rank: paper() projects every input (linear
    # 0.3/0.3, norm/SwiGLU 0.2/0.2, 16-bit Z), so the ratio is sum(r1 + r2)/sum(n). The defaults' traffic is
    # listed in MiB only: their int8 inputs have no full-rank counterpart.
    linear_only = dict(compress_nonlinear=False)
    for label, cfg in (("paper() linear only", prac_dist.PRACConfig.paper(**linear_only)),
                       ("paper() linear only, full rank", prac_dist.PRACConfig.paper(**linear_only, **full_rank)),
                       ("paper()", prac_dist.PRACConfig.paper()),
                       ("paper() full rank", full),
                       ("PRACConfig()", defaults)):
        model = build(args, cfg, None)
        offload = CompressedActivationOffload(OffloadConfig(device="cpu", min_bytes=0)).attach(model)
        model(input_ids=x, labels=x).loss.backward()
        traffic[label] = dict(offload.stats)

    base = rows[0]["saved_bytes"]
    print(f"LLaMA hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, batch {args.batch} x seq {args.seq}")
    print(f"{'checkpointing':<14}{'PRAC':<16}{'saved MiB':>11}{'vs plain':>10}{'full-rank grad err':>20}")
    for r in rows:
        print(f"{r['checkpointing']:<14}{r['prac']:<16}{r['saved_bytes'] / 2**20:>11.2f}"
              f"{r['saved_bytes'] / base:>10.2f}{r['full_rank_max_rel_grad_err']:>20.1e}")
    print("\ncompressed activation offload, host traffic per training step (device->host):")
    for label, s in traffic.items():
        print(f"  {label:<22}{s['d2h_bytes'] / 2**20:>9.2f} MiB in {s['tensors']} tensors")
    lin = traffic["paper() linear only"]["d2h_bytes"] / traffic["paper() linear only, full rank"]["d2h_bytes"]
    everything = traffic["paper()"]["d2h_bytes"] / traffic["paper() full rank"]["d2h_bytes"]
    print(f"  paper(), linear layers: {lin:.3f} of the same tensors at full rank (expected (r1 + r2)/n ~ 0.6)")
    print(f"  paper(), incl. norm/SwiGLU inputs: {everything:.3f} of the same tensors at full rank")

    write_result(args.out, "deepspeed_activation_memory", {
        "shape": {k: v for k, v in vars(args).items() if k != "out"}, "saved_for_backward": rows, "offload_traffic": traffic,
        "offload_ratio_linear": lin, "offload_ratio_paper": everything})
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
