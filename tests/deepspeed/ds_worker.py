"""Two-rank DeepSpeed scenarios, run once per test session (DeepSpeed's setup dominates).

    DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 tests/deepspeed/ds_worker.py OUT.json [scenario ...]

Every rank runs every scenario; rank 0 writes the measurements to OUT.json and
test_deepspeed_multirank.py asserts on them. Data: a fixed random Markov chain
on 64 of the 512 tokens, 2 successors each, so the loss has somewhere to fall to
(ln 512 = 6.24 at the start, ln 2 = 0.69 at best); each rank draws different
sequences from it, deterministically from (rank, step, micro-batch).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import prac_dist  # noqa: E402
import prac_dist.deepspeed as pds  # noqa: E402
from prac_dist.distributed import close_distributed  # noqa: E402

VOCAB, SEQ, MICRO = 512, 32, 2
FULL_RANK = {"principal_ratio": 0.5, "random_ratio": 0.5, "compress_nonlinear": True,
             "nonlinear_principal_ratio": 0.5, "nonlinear_random_ratio": 0.5,
             "linear_storage": "project", "nonlinear_storage": "project", "storage_bits": 16}  # full-rank projection is exact
ACTIVE, SUCCESSORS = 64, 2  # tokens in use, successors per token: the best loss is ln 2 = 0.69
_CHAIN = torch.randint(0, ACTIVE, (ACTIVE, SUCCESSORS), generator=torch.Generator().manual_seed(1234))


def hf_config() -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
                       rms_norm_eps=1e-6, tie_word_embeddings=False)


def build_model(zero_init_config=None) -> torch.nn.Module:
    torch.manual_seed(0)
    if zero_init_config is None:
        return LlamaForCausalLM(hf_config())
    with deepspeed.zero.Init(config_dict_or_path=zero_init_config):
        return LlamaForCausalLM(hf_config())


def batch(rank: int, step: int, micro: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100_000 * rank + 100 * step + micro)
    tokens = torch.empty(MICRO, SEQ, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, ACTIVE, (MICRO,), generator=g)
    for t in range(1, SEQ):
        choice = torch.randint(0, SUCCESSORS, (MICRO,), generator=g)
        tokens[:, t] = _CHAIN[tokens[:, t - 1], choice]
    return tokens


def ds_config(stage: int, prac=None, gas: int = 1, offload_param: bool = False, bf16: bool = False,
              lr: float = 3e-3) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.95], "eps": 1e-8,
                                                  "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": bf16},
    }
    if offload_param:
        cfg["zero_optimization"].update({"offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}})
        cfg["zero_force_ds_cpu_optimizer"] = False  # torch AdamW on CPU: DeepSpeedCPUAdam needs a C++ build
    if prac is not None:
        cfg["prac"] = prac
    return cfg


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def mean_over_ranks(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def make_engine(cfg: dict, zero_init: bool = False):
    model = build_model(cfg if zero_init else None)
    engine, _, _, _ = pds.initialize(model=model, model_parameters=[p for p in model.parameters()], config=cfg)
    return engine


def run_steps(engine, steps, start: int = 0) -> list:
    gas = engine.gradient_accumulation_steps()
    losses = []
    for s in range(start, start + steps):
        total = 0.0
        for m in range(gas):
            x = batch(rank(), s, m)
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
            total += float(loss.detach().float())
        losses.append(mean_over_ranks(total / gas))
    return losses


def train(cfg: dict, steps: int, zero_init: bool = False) -> list:
    return run_steps(make_engine(cfg, zero_init), steps)


# ---- scenarios ------------------------------------------------------------------------------------
def scenario_exact(out: dict) -> None:
    """Full rank (r1 + r2 = n everywhere) vs no PRAC: ZeRO 1, 2, 3, 3 + param/optimizer offload, accumulation."""
    steps = 4
    for name, kwargs, zero_init in (("zero1", dict(stage=1), False),
                                    ("zero2_gas2", dict(stage=2, gas=2), False),
                                    ("zero3", dict(stage=3), False),
                                    ("zero3_zero_init", dict(stage=3), True),
                                    ("zero3_offload", dict(stage=3, offload_param=True), False)):
        try:
            base = train(ds_config(**kwargs), steps, zero_init=zero_init)
            engine = make_engine(ds_config(prac=FULL_RANK, **kwargs), zero_init=zero_init)
            full = run_steps(engine, steps)
            out[f"exact_{name}"] = {"baseline": base, "prac_full_rank": full,
                                    "prac_schedule_step": prac_dist.prac_state_dict(engine.module)["step"]}
        except Exception:
            out[f"exact_{name}_error"] = traceback.format_exc()


def eval_loss(engine) -> float:
    """Mean loss over 4 held-out batches per rank (steps 10_000+ are never trained on), over ranks."""
    engine.eval()
    with torch.no_grad():
        losses = [float(engine(input_ids=x, labels=x).loss) for x in (batch(rank(), 10_000 + i, 0) for i in range(4))]
    engine.train()
    return mean_over_ranks(sum(losses) / len(losses))


def scenario_converge(out: dict) -> None:
    """Default ratios vs baseline under ZeRO-2, 60 steps: linear layers at 0.3/0.3 (nonlinear exact),
    and the full defaults (nonlinear inputs also compressed at 0.2/0.2)."""
    steps, schedule = 60, {"principal_update_interval": 10, "random_update_interval": 10}
    runs = {"baseline": None, "prac_linear_default": {**schedule, "compress_nonlinear": False},
            "prac_full_default": dict(schedule)}
    result = {}
    for name, prac in runs.items():
        engine = make_engine(ds_config(2, prac=prac, lr=1e-2))
        result[name] = {"train": run_steps(engine, steps), "eval": eval_loss(engine)}
    out["converge"] = result


def scenario_subspaces(out: dict) -> None:
    """Q2 differs between ranks; Q1 is the top-r1 subspace of this rank's own layer input."""
    engine = make_engine(ds_config(2, prac={}))
    seen = {}
    q_proj = engine.module.model.layers[0].self_attn.q_proj
    handle = q_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    run_steps(engine, 1)
    handle.remove()
    group = "model.layers.0.self_attn.q_proj+k_proj+v_proj"
    comp = prac_dist.prac_state_dict(engine.module)["compressors"][group]
    x2d = seen["x"].reshape(-1, seen["x"].shape[-1]).double()
    own = torch.linalg.eigh(x2d.t() @ x2d)[1][:, -comp["r1"]:]  # top-r1 eigenvectors of this rank's XᵀX

    def proj(q):  # bases are compared as subspaces: the projector is sign- and rotation-free
        return (q.double() @ q.double().t())

    mine = {"q1": proj(comp["q1"]), "q2": proj(comp["q2"]), "own": proj(own)}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    other = gathered[1 - rank()]
    report = {
        "q1_vs_own_data": float((mine["q1"] - mine["own"]).norm()),
        "q1_vs_other_rank_data": float((mine["q1"] - other["own"]).norm()),
        "q2_vs_other_rank_q2": float((mine["q2"] - other["q2"]).norm()),
        "r1": comp["r1"], "r2": comp["r2"],
    }
    reports = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    out["subspaces"] = {f"rank{i}": r for i, r in enumerate(reports)}


def scenario_resume(out: dict, tmp: str) -> None:
    """Save at step 3 of 6, rebuild, load, continue: same losses as the uninterrupted run (ZeRO-2 and ZeRO-3)."""
    prac = {"principal_update_interval": 2, "random_update_interval": 3}
    for stage in (2, 3):
        try:
            out[f"resume_zero{stage}"] = _resume(os.path.join(tmp, f"resume_zero{stage}"), ds_config(stage, prac=prac))
        except Exception:
            out[f"resume_zero{stage}_error"] = traceback.format_exc()


def _resume(ckpt: str, cfg: dict) -> dict:
    straight = train(cfg, 6)
    engine = make_engine(cfg)
    first = run_steps(engine, 3)
    engine.save_checkpoint(ckpt)  # default tag global_step3
    del engine
    engine = make_engine(cfg)
    engine.load_checkpoint(ckpt)
    resumed = run_steps(engine, 3, start=3)
    files = sorted(f for f in os.listdir(os.path.join(ckpt, "global_step3")) if f.startswith("prac_rank"))
    return {"straight": straight, "first": first, "resumed": resumed,
            "prac_step_after": prac_dist.prac_state_dict(engine.module)["step"], "prac_files": files}


def scenario_offload(out: dict) -> None:
    """Compressed activation offload on/off: the same losses bit for bit, and bytes really moved."""
    prac = {"offload": {"device": "cpu", "pin_memory": False, "min_bytes": 0}}
    off_engine = make_engine(ds_config(2, prac=prac))
    with_offload = run_steps(off_engine, 3)
    stats = dict(off_engine.module._prac_offload.stats)
    without = train(ds_config(2, prac={}), 3)
    out["offload"] = {"with": with_offload, "without": without, "stats": stats}


def scenario_bf16(out: dict) -> None:
    """bf16 under ZeRO-2 with PRAC default ratios: finite, and the loss falls."""
    out["bf16"] = {"prac_default": train(ds_config(2, prac={}, bf16=True, lr=1e-2), 8)}


def scenario_bad_section(out: dict) -> None:
    """A misspelled key stops initialize before DeepSpeed builds an engine."""
    try:
        make_engine(ds_config(2, prac={"principal_ratoi": 0.5}))
        out["bad_section"] = None
    except ValueError as exc:
        out["bad_section"] = str(exc)


def scenario_head_modes(out: dict) -> None:
    """ZeRO-3 with the fused head forced to 'store' vs 'recompute' (auto picks recompute at this shape: 64
    tokens, d 64, V 512): step 0's full gradient of every parameter, then 4 steps' losses."""
    runs = {}
    for mode in ("store", "recompute"):
        engine = make_engine(ds_config(3, prac={**FULL_RANK, "fused_loss": mode}))
        x = batch(rank(), 0, 0)
        loss = engine(input_ids=x, labels=x).loss
        engine.backward(loss)
        grads = {n: deepspeed.utils.safe_get_full_grad(p).detach().clone()  # collective: every rank calls it
                 for n, p in engine.module.named_parameters()}
        engine.step()
        losses = [mean_over_ranks(float(loss.detach()))] + run_steps(engine, 3, start=1)
        runs[mode] = {"installed": engine.module._prac_fused_loss.backward, "losses": losses, "grads": grads}
    store, recompute = runs["store"], runs["recompute"]
    out["head_modes"] = {
        "installed": [store["installed"], recompute["installed"]],
        "losses": {"store": store["losses"], "recompute": recompute["losses"]},
        "grad_rel_err": {n: float((store["grads"][n] - g).norm() / g.norm()) for n, g in recompute["grads"].items()},
    }


SCENARIOS = {"exact": scenario_exact, "converge": scenario_converge, "subspaces": scenario_subspaces,
             "resume": scenario_resume, "offload": scenario_offload, "bf16": scenario_bf16,
             "bad_section": scenario_bad_section}
ON_REQUEST = {"head_modes": scenario_head_modes}  # run only when named (its own test, own launch)


def main() -> int:
    out_path, names = sys.argv[1], sys.argv[2:] or list(SCENARIOS)
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        shared = [tmp]
        dist.broadcast_object_list(shared, src=0)  # one checkpoint folder for both ranks
        for name in names:
            t0 = time.perf_counter()
            try:
                if name == "resume":
                    scenario_resume(out, shared[0])
                else:
                    {**SCENARIOS, **ON_REQUEST}[name](out)
            except Exception:  # recorded for the test to show; the other scenarios still run
                out[f"{name}_error"] = traceback.format_exc()
            out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
            print(f"[rank {rank()}] {name}: {out['seconds'][name]} s", file=sys.stderr, flush=True)
            dist.barrier()
    if rank() == 0:
        with open(out_path, "w") as fh:
            json.dump(out, fh, indent=1)
    dist.barrier()
    close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
