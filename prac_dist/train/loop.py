"""The prac-train loop: one loop for every engine (see prac_dist.train.backends).

Output directory of a run:
    config.yaml        the resolved settings
    metrics.jsonl      one JSON record per line (kind: memory | train | eval), see docs/train.md
    checkpoints/       step_N folders, written atomically (prac_dist.checkpoint.steps)
    summary.json       final numbers, written when the run completes
    report.md, report.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from prac_dist.checkpoint import steps as ckpt
from prac_dist.checkpoint.rng import rng_state, set_rng_state
from prac_dist.distributed import discover_env
from prac_dist.train.backends import TrainBackend
from prac_dist.train.optim import OptimizerSpec
from prac_dist.train.config import ConfigError, TrainConfig, dump_config
from prac_dist.train.data import build_data, check_sources, load_tokenizer
from prac_dist.train.models import build_model, check_vocab

__all__ = ["train", "env_rank_world", "RankLogger"]


def env_rank_world() -> (int, int):
    """(rank, world size) from the launcher's environment (prac_dist.distributed), before any process group."""
    try:
        env = discover_env()
    except ValueError as exc:  # a malformed launcher variable is bad input: one line, exit 2
        raise ConfigError(f"launcher environment: {exc}") from None
    return env.rank, env.world_size


class RankLogger:
    """Rank 0 prints; with several ranks every line says which rank wrote it. Lines go through tqdm.write
    so they never tear the progress bar."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def info(self, msg: str) -> None:
        if self.rank == 0:
            self._write(msg)

    def warning(self, msg: str) -> None:
        self._write(f"warning: {msg}")

    def _write(self, msg: str) -> None:
        from tqdm import tqdm

        prefix = f"[rank {self.rank}/{self.world}] " if self.world > 1 else ""
        tqdm.write(f"{prefix}{msg}", file=sys.stderr)


def train(cfg: TrainConfig, make_backend: Callable[[], TrainBackend], resume: bool = False,
          output_dir: Optional[Path] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """Run one training job to completion; returns the summary (also written to summary.json)."""
    t = cfg.train
    out = Path(output_dir or t.output_dir)
    rank, world = env_rank_world()
    log = RankLogger(rank, world)
    if t.threads:
        torch.set_num_threads(t.threads)
    name = label or ("prac" if cfg.prac is not None else "baseline")

    # Everything that can reject the input runs before the output directory is touched.
    check_sources(cfg.data)
    ckpt_root = out / "checkpoints"
    start_ckpt = ckpt.latest_checkpoint(ckpt_root) if resume else None
    if not resume and ckpt.latest_checkpoint(ckpt_root) is not None:
        raise ConfigError(f"--output-dir {out} already holds checkpoints: pass --resume to continue that run, "
                          f"or choose another --output-dir")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    backend = make_backend()
    model = build_model(cfg.model, cfg.data.seq_len, t.seed, materialize=not backend.materializes_model)
    check_vocab(model, len(tokenizer), cfg.data.tokenizer)
    data = build_data(cfg.data, tokenizer, t.micro_batch_size, t.eval_batches, rank, world, t.seed)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    log.info(f"{name}: {n_params / 1e6:.1f}M parameters, {data.num_train_sequences or 'streamed'} training "
             f"sequences of {cfg.data.seq_len} tokens, micro-batch {t.micro_batch_size} x {t.grad_accum} "
             f"accumulation x {world} ranks")

    memory: Dict[str, Any] = {}
    sample = data.eval_batches()[0]
    if t.measure_memory and start_ckpt is None and backend.name == "local" and cfg.prac is not None:
        # The same micro-batch through the unpatched model: the reference for the PRAC saving.
        model.to(backend.device)
        plain = _measure(model, sample, backend, restore_prac=False)
        memory["saved_bytes_no_prac"] = plain.total_bytes
        memory["saved_by_module_name_no_prac"] = dict(plain.by_module_name)  # report: head vs decoder
    opt = OptimizerSpec.from_config(cfg.optim, t.max_steps, t.grad_accum)
    backend.setup(model, cfg.prac, opt)
    if (backend.rank, backend.world_size) != (rank, world):
        raise RuntimeError(f"the backend reports rank {backend.rank} of {backend.world_size} but the launcher's "
                           f"environment says {rank} of {world}")
    model = backend.model

    if backend.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_tmp(ckpt_root)
        (out / "config.yaml").write_text(dump_config(cfg))
    backend.barrier()
    metrics = _Metrics(out / "metrics.jsonl", enabled=backend.is_main)

    torch.manual_seed(t.seed)
    step, tokens, elapsed = 0, 0, 0.0
    resumed = ckpt.resume_checkpoint(ckpt_root, backend, log.warning) if start_ckpt is not None else None
    if resumed is not None:
        start_ckpt, extra, loop_state = resumed
        step, tokens, elapsed = extra["step"], extra["tokens"], extra["elapsed_s"]
        memory = extra["memory"]
        data.load_state_dict(loop_state["data"])
        set_rng_state(loop_state["rng"])
        metrics.truncate(step)
        log.info(f"{name}: resumed from {start_ckpt} (step {step})")
    else:
        if resume:
            log.info(f"{name}: --resume found no checkpoint in {ckpt_root}; starting from step 0")
        metrics.truncate(-1)
        if t.measure_memory:
            report = _measure(model, sample.to(backend.device), backend, restore_prac=cfg.prac is not None)
            memory.update(saved_bytes=report.total_bytes, saved_by_module_type=dict(report.by_module_type),
                          saved_by_module_name=dict(report.by_module_name))
        memory["params"] = n_params
        metrics.write({"step": 0, "kind": "memory", **memory})

    cuda = backend.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(backend.device)
    tokens_per_step = t.micro_batch_size * cfg.data.seq_len * t.grad_accum * world
    forward_ctx = getattr(backend, "forward_context", contextlib.nullcontext)
    last_val = None
    bar = _progress(t.max_steps, step, name, enabled=backend.is_main)
    rate = None
    while step < t.max_steps:
        t0 = time.perf_counter()
        loss_sum = 0.0
        for _ in range(t.grad_accum):
            batch = data.next_batch().to(backend.device, non_blocking=True)
            with forward_ctx():
                loss = model(input_ids=batch, labels=batch).loss
            backend.backward(loss)
            loss_sum += float(loss.detach())
        info = backend.step()
        step += 1
        train_loss = backend.all_reduce_mean(loss_sum / t.grad_accum)
        if not math.isfinite(train_loss):
            raise RuntimeError(f"step {step}: training loss is {train_loss}; lower optim.lr or check the data")
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens += tokens_per_step
        rate = tokens_per_step / dt if rate is None else 0.9 * rate + 0.1 * tokens_per_step / dt
        record = {"step": step, "kind": "train", "train_loss": train_loss, "lr": info["lr"],
                  "grad_norm": info.get("grad_norm"), "tokens": tokens, "tokens_per_s": tokens_per_step / dt,
                  "elapsed_s": elapsed}
        if cuda:
            record["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(backend.device)
        if step % t.log_every == 0 or step == t.max_steps:
            metrics.write(record)
        if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
            last_val = _evaluate(model, data, backend, forward_ctx)
            metrics.write(_eval_record(step, last_val, model, cfg))
            log.info(f"{name}: step {step}/{t.max_steps}  train loss {train_loss:.4f}  val loss {last_val:.4f}")
        if (t.save_every and step % t.save_every == 0) or step == t.max_steps:
            extra = {"step": step, "tokens": tokens, "elapsed_s": elapsed, "memory": memory}
            loop_state = {"data": data.state_dict(), "rng": rng_state()}
            ckpt.save_checkpoint(ckpt_root, step, backend, extra, loop_state, t.keep_checkpoints)
        bar.update(1)
        bar.set_postfix_str(_postfix(train_loss, rate, memory, record), refresh=False)
    bar.close()

    if last_val is None:  # resumed a finished run: evaluate again, the state is the same
        last_val = _evaluate(model, data, backend, forward_ctx)
    summary = _summary(name, cfg, metrics.records(), memory, last_val, elapsed, tokens, backend)
    if backend.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    backend.barrier()
    return summary


def _measure(model, sample: torch.Tensor, backend: TrainBackend, restore_prac: bool):
    """Bytes saved for backward by one training forward (+ loss) of `sample`, leaving every state as it was:
    PRAC computes its first principal subspace in the first training forward, so its state is restored."""
    import prac_dist
    from prac_dist.memory import measure_saved_bytes

    sample = sample.to(backend.device)
    prac_state = prac_dist.prac_state_dict(model) if restore_prac else None
    rng = rng_state()
    forward_ctx = getattr(backend, "forward_context", contextlib.nullcontext)
    was_training = model.training
    model.train()

    def run():
        with forward_ctx():
            return model(input_ids=sample, labels=sample).loss

    report = measure_saved_bytes(run, model)
    model.train(was_training)
    if prac_state is not None:
        prac_dist.load_prac_state_dict(model, prac_state)
    set_rng_state(rng)
    return report


@torch.no_grad()
def _evaluate(model, data, backend: TrainBackend, forward_ctx) -> float:
    model.eval()
    losses = []
    for batch in data.eval_batches():
        batch = batch.to(backend.device)
        with forward_ctx():
            losses.append(float(model(input_ids=batch, labels=batch).loss))
    model.train()
    return backend.all_reduce_mean(sum(losses) / len(losses))


def _eval_record(step: int, val_loss: float, model, cfg: TrainConfig) -> Dict[str, Any]:
    record = {"step": step, "kind": "eval", "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}
    if cfg.prac is not None:
        import prac_dist
        from prac_dist.patching import nonfinite_refreshes

        record["prac_stats"] = {k: _plain(v) for k, v in prac_dist.prac_stats(model).items()}
        # Refreshes that met inf/nan kept their previous basis: read here, at eval, never on the hot path.
        record["prac_nonfinite_refreshes"] = nonfinite_refreshes(model)
    return record


def _plain(v):
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _summary(name, cfg, records, memory, val_loss, elapsed, tokens, backend) -> Dict[str, Any]:
    train_records = [r for r in records if r.get("kind") == "train"]
    rates = [r["tokens_per_s"] for r in train_records[1:]] or [r["tokens_per_s"] for r in train_records]
    out = {
        "label": name,
        "prac": cfg.prac is not None,
        "steps": cfg.train.max_steps,
        "final_train_loss": train_records[-1]["train_loss"] if train_records else None,
        "final_val_loss": val_loss,
        "final_val_ppl": math.exp(min(val_loss, 50.0)),
        "tokens": tokens,
        "train_time_s": elapsed,
        # the first step pays one-time costs (allocator warm-up, first principal subspace): left out
        "median_tokens_per_s": sorted(rates)[len(rates) // 2] if rates else None,
        "saved_bytes": memory.get("saved_bytes"),
        "saved_bytes_no_prac": memory.get("saved_bytes_no_prac"),
        "params": memory.get("params"),
        "backend": backend.name,
        "world_size": backend.world_size,
        "device": str(backend.device),
    }
    peaks = [r["gpu_peak_allocated_bytes"] for r in train_records if "gpu_peak_allocated_bytes" in r]
    if peaks:
        out["gpu_peak_allocated_bytes"] = max(peaks)
    return out


def _postfix(loss: float, rate: Optional[float], memory: Dict[str, Any], record: Dict[str, Any]) -> str:
    parts = [f"loss {loss:.3f}", f"{rate:,.0f} tok/s"]
    if "gpu_peak_allocated_bytes" in record:
        parts.append(f"peak {record['gpu_peak_allocated_bytes'] / 2**20:,.0f} MiB")
    elif memory.get("saved_bytes") is not None:
        parts.append(f"saved-for-bwd {memory['saved_bytes'] / 2**20:,.1f} MiB")
    return "  ".join(parts)


def _progress(total: int, initial: int, name: str, enabled: bool):
    from tqdm import tqdm

    # When stderr is not a terminal (CI logs) redraw at most every 10 s so logs stay short.
    interactive = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, unit="step", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, mininterval=0.1 if interactive else 10.0)


class _Metrics:
    """metrics.jsonl, appended line by line (rank 0 only); truncated to the checkpoint's step on resume."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        self._records: List[Dict[str, Any]] = []

    def truncate(self, step: int) -> None:
        if not self.enabled:
            return
        kept = []
        if step >= 0 and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    continue
                if rec["step"] <= step:
                    kept.append(rec)
        self._records = kept
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._records.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> List[Dict[str, Any]]:
        return list(self._records)
