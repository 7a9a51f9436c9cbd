"""The prac-train loop: one loop for every engine (see prac_dist.train.backends).

train() is setup (_setup), resume or a fresh start (_start) and a loop over train_step, each step
followed by its logging, evaluation and checkpoint (_after_step).

Output directory of a run:
    config.yaml        the resolved settings
    metrics.jsonl      one JSON record per line (kind: memory | train | eval), see docs/train.md
    checkpoints/       step_N folders, written atomically (prac_dist.checkpoint.steps)
    summary.json       final numbers, written when the run completes
    report.md, report.png
"""

from __future__ import annotations

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
from prac_dist.train.config import ConfigError, TrainConfig, dump_config
from prac_dist.train.data import build_data, check_sources, load_tokenizer
from prac_dist.train.models import build_model, check_vocab
from prac_dist.train.optim import OptimizerSpec

__all__ = ["train", "train_step", "env_rank_world", "RankLogger"]


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


@dataclasses.dataclass
class _Run:
    """What setup built; fixed for the whole run."""

    cfg: TrainConfig
    name: str
    out: Path
    backend: TrainBackend
    model: Any
    data: Any
    log: RankLogger
    metrics: "_Metrics"
    sample: torch.Tensor
    n_params: int

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.micro_batch_size * self.cfg.data.seq_len * t.grad_accum * self.backend.world_size


@dataclasses.dataclass
class _Progress:
    """What a checkpoint saves and --resume restores (with the data position and the RNG)."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    memory: Dict[str, Any] = dataclasses.field(default_factory=dict)


def train(cfg: TrainConfig, make_backend: Callable[[], TrainBackend], resume: bool = False,
          output_dir: Optional[Path] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """Run one training job to completion; returns the summary (also written to summary.json)."""
    name = label or ("prac" if cfg.prac is not None else "baseline")
    run, start_ckpt, memory = _setup(cfg, make_backend, resume, Path(output_dir or cfg.train.output_dir), name)
    progress = _start(run, start_ckpt, resume, memory)
    backend, max_steps = run.backend, cfg.train.max_steps
    if backend.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(backend.device)
    last_val, rate = None, None
    bar = _progress(max_steps, progress.step, name, enabled=backend.is_main)
    while progress.step < max_steps:
        record = train_step(run, progress)
        per_s = record["tokens_per_s"]
        rate = per_s if rate is None else 0.9 * rate + 0.1 * per_s
        last_val = _after_step(run, progress, record, last_val)
        bar.update(1)
        bar.set_postfix_str(_postfix(record["train_loss"], rate, progress.memory, record), refresh=False)
    bar.close()
    if last_val is None:  # resumed a finished run: evaluate again, the state is the same
        last_val = _evaluate(run.model, run.data, backend)
    summary = _summary(name, cfg, run.metrics.records(), progress.memory, last_val, progress.elapsed_s,
                       progress.tokens, backend)
    if backend.is_main:
        (run.out / "summary.json").write_text(json.dumps(summary, indent=2))
    backend.barrier()
    return summary


def _setup(cfg: TrainConfig, make_backend, resume: bool, out: Path, name: str):
    """Check the input, build tokenizer, engine, model and data, and prepare the output directory.

    Returns (run, the newest checkpoint folder to resume from or None, the unpatched model's memory numbers).
    Everything that can reject the input runs before the output directory is touched.
    """
    t = cfg.train
    rank, world = env_rank_world()
    log = RankLogger(rank, world)
    if t.threads:
        torch.set_num_threads(t.threads)
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
    if t.measure_memory and start_ckpt is None and backend.runs_before_setup and cfg.prac is not None:
        # The same micro-batch through the unpatched model: the reference for the PRAC saving.
        model.to(backend.device)
        plain = _measure(model, sample, backend, restore_prac=False)
        memory["saved_bytes_no_prac"] = plain.total_bytes
        memory["saved_by_module_name_no_prac"] = dict(plain.by_module_name)  # report: head vs decoder
    backend.setup(model, cfg.prac, OptimizerSpec.from_config(cfg.optim, t.max_steps, t.grad_accum))
    if (backend.rank, backend.world_size) != (rank, world):
        raise RuntimeError(f"the backend reports rank {backend.rank} of {backend.world_size} but the launcher's "
                           f"environment says {rank} of {world}")
    if backend.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_stale_tmp(ckpt_root)
        (out / "config.yaml").write_text(dump_config(cfg))
    backend.barrier()
    metrics = _Metrics(out / "metrics.jsonl", enabled=backend.is_main)
    run = _Run(cfg, name, out, backend, backend.model, data, log, metrics, sample, n_params)
    return run, start_ckpt, memory


def _start(run: _Run, start_ckpt: Optional[Path], resume: bool, memory: Dict[str, Any]) -> _Progress:
    """Seed, then restore the newest intact checkpoint, or measure the memory and log it at step 0."""
    cfg, backend = run.cfg, run.backend
    torch.manual_seed(cfg.train.seed)
    resumed = ckpt.resume_checkpoint(run.ckpt_root, backend, run.log.warning) if start_ckpt is not None else None
    if resumed is not None:
        start_ckpt, extra, loop_state = resumed
        progress = _Progress(extra["step"], extra["tokens"], extra["elapsed_s"], extra["memory"])
        run.data.load_state_dict(loop_state["data"])
        set_rng_state(loop_state["rng"])
        run.metrics.truncate(progress.step)
        run.log.info(f"{run.name}: resumed from {start_ckpt} (step {progress.step})")
        return progress
    if resume:
        run.log.info(f"{run.name}: --resume found no checkpoint in {run.ckpt_root}; starting from step 0")
    run.metrics.truncate(-1)
    if cfg.train.measure_memory:
        report = _measure(run.model, run.sample.to(backend.device), backend, restore_prac=cfg.prac is not None)
        memory.update(saved_bytes=report.total_bytes, saved_by_module_type=dict(report.by_module_type),
                      saved_by_module_name=dict(report.by_module_name))
    memory["params"] = run.n_params
    run.metrics.write({"step": 0, "kind": "memory", **memory})
    return _Progress(memory=memory)


def train_step(run: _Run, progress: _Progress) -> Dict[str, Any]:
    """One optimizer step (grad_accum micro-batches); advances `progress` and returns its metrics record."""
    t, backend = run.cfg.train, run.backend
    t0 = time.perf_counter()
    loss_sum = 0.0
    for _ in range(t.grad_accum):
        batch = run.data.next_batch().to(backend.device, non_blocking=True)
        with backend.forward_context():
            loss = run.model(input_ids=batch, labels=batch).loss
        backend.backward(loss)
        loss_sum += float(loss.detach())
    info = backend.step()
    progress.step += 1
    train_loss = backend.all_reduce_mean(loss_sum / t.grad_accum)
    if not math.isfinite(train_loss):
        raise RuntimeError(f"step {progress.step}: training loss is {train_loss}; lower optim.lr or check the data")
    dt = time.perf_counter() - t0
    progress.elapsed_s += dt
    progress.tokens += run.tokens_per_step
    record = {"step": progress.step, "kind": "train", "train_loss": train_loss, "lr": info["lr"],
              "grad_norm": info.get("grad_norm"), "tokens": progress.tokens,
              "tokens_per_s": run.tokens_per_step / dt, "elapsed_s": progress.elapsed_s}
    if backend.device.type == "cuda":
        record["gpu_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(backend.device)
    return record


def _after_step(run: _Run, progress: _Progress, record: Dict[str, Any], last_val: Optional[float]):
    """Log, evaluate and checkpoint when due; returns the newest validation loss."""
    t, step = run.cfg.train, progress.step
    if step % t.log_every == 0 or step == t.max_steps:
        run.metrics.write(record)
    if (t.eval_every and step % t.eval_every == 0) or step == t.max_steps:
        last_val = _evaluate(run.model, run.data, run.backend)
        run.metrics.write(_eval_record(step, last_val, run.model, run.cfg))
        run.log.info(f"{run.name}: step {step}/{t.max_steps}  train loss {record['train_loss']:.4f}  "
                     f"val loss {last_val:.4f}")
    if (t.save_every and step % t.save_every == 0) or step == t.max_steps:
        extra = {"step": step, "tokens": progress.tokens, "elapsed_s": progress.elapsed_s,
                 "memory": progress.memory}
        loop_state = {"data": run.data.state_dict(), "rng": rng_state()}
        ckpt.save_checkpoint(run.ckpt_root, step, run.backend, extra, loop_state, t.keep_checkpoints)
    return last_val


def _measure(model, sample: torch.Tensor, backend: TrainBackend, restore_prac: bool):
    """Bytes saved for backward by one training forward (+ loss) of `sample`, leaving every state as it was:
    PRAC computes its first principal subspace in the first training forward, so its state is restored."""
    import prac_dist
    from prac_dist.memory import measure_saved_bytes

    sample = sample.to(backend.device)
    prac_state = prac_dist.prac_state_dict(model) if restore_prac else None
    rng = rng_state()
    was_training = model.training
    model.train()

    def run():
        with backend.forward_context():
            return model(input_ids=sample, labels=sample).loss

    report = measure_saved_bytes(run, model)
    model.train(was_training)
    if prac_state is not None:
        prac_dist.load_prac_state_dict(model, prac_state)
    set_rng_state(rng)
    return report


@torch.no_grad()
def _evaluate(model, data, backend: TrainBackend) -> float:
    model.eval()
    losses = []
    for batch in data.eval_batches():
        batch = batch.to(backend.device)
        with backend.forward_context():
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
