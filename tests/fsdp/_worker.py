"""Multi-rank worker for tests/fsdp: run under torchrun (or with SLURM_* variables), 2 CPU ranks over gloo.

    --mode suite   every same-launch check; rank 0 writes a JSON of losses/ratios to --out
    --mode kill    train to --save-at, checkpoint, keep training, then SIGKILL itself mid-run
    --mode resume  load that checkpoint and train to the end; rank 0 writes the losses to --out
    --mode compile eager vs per-block torch.compile (aot_eager) with PRAC; rank 0 writes both runs' losses
    --mode head    the fused head forced to 'store' vs 'recompute': step-0 gradients and 4 steps' losses

The tests (test_fsdp_distributed.py) read the JSON files and assert; this file only measures.
Every run uses one fixed global batch per step, split across ranks by rows, so a two-rank run
sees exactly the single-process batch and FSDP2's rank average equals the full-batch mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from prac_dist import PRACConfig
from prac_dist.train.backends.fsdp import FSDPBackend
from prac_dist.train.optim import OptimizerSpec

VOCAB, SEQ, GLOBAL_BATCH = 512, 32, 8
ROOT = Path(__file__).resolve().parents[2]


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                      attention_dropout=0.0, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


_TOKENS = None


def _tokens() -> torch.Tensor:
    """WikiText-2 (bundled) in GPT-2 BPE, ids mapped to frequency rank: the 511 commonest + 1 'other'.

    Real text keeps the activation spectrum realistic (PRAC's principal subspace has something to
    capture); the 512-token vocabulary keeps the LM head, and so the test, small.
    """
    global _TOKENS
    if _TOKENS is None:
        from tokenizers import ByteLevelBPETokenizer

        data = ROOT / "prac_dist" / "data"
        tok = ByteLevelBPETokenizer(str(data / "gpt2-tokenizer" / "vocab.json"),
                                    str(data / "gpt2-tokenizer" / "merges.txt"))
        ids = torch.tensor(tok.encode((data / "wikitext-2" / "valid.txt").read_text()[:200_000]).ids)
        order = torch.bincount(ids).argsort(descending=True)
        rank = torch.full((int(ids.max()) + 1,), VOCAB - 1)
        rank[order[:VOCAB - 1]] = torch.arange(VOCAB - 1)
        _TOKENS = rank[ids]
    return _TOKENS


def global_batch(step: int) -> torch.Tensor:
    """The step's global batch: GLOBAL_BATCH windows of SEQ tokens at seeded offsets."""
    tokens = _tokens()
    gen = torch.Generator().manual_seed(10_000 + step)
    starts = torch.randint(0, tokens.numel() - SEQ, (GLOBAL_BATCH,), generator=gen)
    return torch.stack([tokens[i:i + SEQ] for i in starts.tolist()])


def local_rows(x: torch.Tensor) -> torch.Tensor:
    rank, world = dist.get_rank(), dist.get_world_size()
    per = x.shape[0] // world
    return x[rank * per:(rank + 1) * per]


def opt_spec(steps: int, lr: float = 3e-3, grad_clip: float = 0.0) -> OptimizerSpec:
    # Constant LR (min_lr_ratio 1) and no clipping in the exactness runs: nothing but the gradient differs.
    return OptimizerSpec(lr=lr, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8, grad_clip=grad_clip,
                         warmup_steps=0, max_steps=steps, min_lr_ratio=1.0, grad_accum=1)


def baseline_single(steps: int) -> list:
    """Single-process training without PRAC and without FSDP: the reference."""
    from prac_dist.train.optim import build_adamw

    model = tiny_llama()
    optim = build_adamw(model, opt_spec(steps))
    losses = []
    for s in range(steps):
        x = global_batch(s)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def fsdp_run(prac, steps: int, start: int = 0, backend=None, **backend_kwargs):
    """Train steps [start, steps) with FSDPBackend; returns (mean-over-ranks losses, backend)."""
    if backend is None:
        backend = FSDPBackend(**backend_kwargs)
        backend.setup(tiny_llama(), prac, opt_spec(steps))
    losses = []
    for s in range(start, steps):
        x = local_rows(global_batch(s)).to(backend.device)
        loss = backend.model(input_ids=x, labels=x).loss
        backend.backward(loss)
        backend.step()
        losses.append(backend.all_reduce_mean(float(loss.detach())))
    return losses, backend


FULL_RANK = PRACConfig(principal_ratio=0.5, random_ratio=0.5, nonlinear_principal_ratio=0.5,
                       nonlinear_random_ratio=0.5, compress_nonlinear=True, linear_storage="project",
                       nonlinear_storage="project", storage_bits=16, principal_update_interval=3, random_update_interval=2)
# The paper's ratios (linear 0.3/0.3, nonlinear 0.2/0.2); refresh every 10 steps so a 40-step run
# exercises Q1/Q2 refreshes. DEFAULT_LINEAR: the same linear ratios, norm/activation inputs exact.
DEFAULT = PRACConfig(principal_update_interval=10, random_update_interval=10)
DEFAULT_LINEAR = PRACConfig(principal_update_interval=10, random_update_interval=10, compress_nonlinear=False)
# Refreshes straddle the checkpoint step (k=6): Q1 from step 4 is live across the resume, Q2 redraws at 8.
RESUME = PRACConfig(principal_update_interval=4, random_update_interval=4)
RESUME_STEPS, SAVE_AT = 12, 6


def suite(out: Path) -> None:
    res = {"world_size": dist.get_world_size()}
    res["baseline"] = baseline_single(40)
    res["full_rank"] = fsdp_run(FULL_RANK, 8)[0]
    res["full_rank_ac"] = fsdp_run(FULL_RANK, 8, activation_checkpointing=True)[0]
    res["no_prac"] = fsdp_run(None, 8)[0]
    res["default"] = fsdp_run(DEFAULT, 40)[0]
    res["default_linear"] = fsdp_run(DEFAULT_LINEAR, 40)[0]
    res["bf16"] = fsdp_run(DEFAULT, 20, mixed_precision="bf16")[0]
    res["offload"] = fsdp_run(DEFAULT, 20, cpu_offload=True)[0]
    res["uninterrupted"] = fsdp_run(RESUME, RESUME_STEPS)[0]
    res["variance"] = variance(reps=int(os.environ.get("PRAC_VARIANCE_REPS", "24")))
    if dist.get_rank() == 0:
        out.write_text(json.dumps(res, indent=1))


def variance(reps: int) -> dict:
    from benchmarks.quality import fsdp_variance  # the launching test puts the repository root on PYTHONPATH

    return fsdp_variance.measure(reps=reps, cases=("replicated", "replicated_shared", "split"))


def kill(ckpt: Path) -> None:
    backend = FSDPBackend()
    backend.setup(tiny_llama(), RESUME, opt_spec(RESUME_STEPS))
    fsdp_run(RESUME, SAVE_AT, backend=backend)
    backend.save(ckpt, {"step": SAVE_AT})
    # Keep going past the checkpoint (the state in memory moves on), then die without any cleanup.
    fsdp_run(RESUME, SAVE_AT + 2, start=SAVE_AT, backend=backend)
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def resume(ckpt: Path, out: Path) -> None:
    backend = FSDPBackend()
    backend.setup(tiny_llama(seed=99), RESUME, opt_spec(RESUME_STEPS))  # other init: the load must overwrite it
    extra = backend.load(ckpt)
    losses, _ = fsdp_run(RESUME, RESUME_STEPS, start=extra["step"], backend=backend)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"start": extra["step"], "losses": losses, "world_size": dist.get_world_size()}))


# Refresh at steps 0, 2, 4 of 6; int8 storage (down_proj, nonlinear inputs) and 8-bit projected Z.
COMPILE = PRACConfig(principal_update_interval=2, random_update_interval=2, nonlinear_principal_update_interval=2)
COMPILE_STEPS = 6


def compiled(out: Path) -> None:
    res = {"eager": fsdp_run(COMPILE, COMPILE_STEPS)[0]}
    res["compiled"] = fsdp_run(COMPILE, COMPILE_STEPS, compile_backend="aot_eager")[0]
    if dist.get_rank() == 0:
        out.write_text(json.dumps(res, indent=1))


def head_modes(out: Path) -> None:
    """FULL_RANK PRAC with fused_loss 'store' vs 'recompute' (auto picks recompute here: 128 tokens per rank,
    d 64, V 512): every parameter's full step-0 gradient, then 4 steps' losses."""
    runs = {}
    for mode in ("store", "recompute"):
        cfg = dataclasses.replace(FULL_RANK, fused_loss=mode)
        backend = FSDPBackend()
        backend.setup(tiny_llama(), cfg, opt_spec(4))
        x = local_rows(global_batch(0)).to(backend.device)
        loss = backend.model(input_ids=x, labels=x).loss
        backend.backward(loss)
        grads = {n: p.grad.full_tensor() for n, p in backend.model.named_parameters()}  # collective
        backend.step()
        losses = [backend.all_reduce_mean(float(loss.detach()))] + fsdp_run(cfg, 4, start=1, backend=backend)[0]
        runs[mode] = {"installed": backend.model._prac_fused_loss.backward, "losses": losses, "grads": grads}
    store, recompute = runs["store"], runs["recompute"]
    if dist.get_rank() == 0:
        out.write_text(json.dumps({
            "installed": [store["installed"], recompute["installed"]],
            "losses": {"store": store["losses"], "recompute": recompute["losses"]},
            "grad_rel_err": {n: float((store["grads"][n] - g).norm() / g.norm()) for n, g in recompute["grads"].items()},
        }, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("suite", "kill", "resume", "compile", "head"), required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--ckpt", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from prac_dist.distributed import close_distributed, init_distributed

    init_distributed()
    if args.mode == "suite":
        suite(args.out)
    elif args.mode == "kill":
        kill(args.ckpt)
    elif args.mode == "compile":
        compiled(args.out)
    elif args.mode == "head":
        head_modes(args.out)
    else:
        resume(args.ckpt, args.out)
    close_distributed()


if __name__ == "__main__":
    main()
