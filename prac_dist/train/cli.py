"""`prac-train` (also `python -m prac_dist.train`): pre-train or fine-tune a causal LM with PRAC.

    prac-train --config configs/train/llama_tiny.yaml --compare --output-dir runs/quickstart
    prac-train --config configs/train/llama_130m.yaml --max-steps 2000 --output-dir runs/130m
    deepspeed --num_gpus 8 -m prac_dist.train --config ... --deepspeed configs/ds/zero3.json

Bad input (unknown key, wrong type, missing file, vocabulary too large, target modules the model
lacks, an output folder another run is using) prints one line `prac-train: error: ...` and exits
with status 2. Flags are never abbreviated: `--max-step 5` is an error, not `--max-steps 5`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from prac_dist.train.config import ConfigError, TrainConfig, dump_config, load_config, parse_override
from prac_dist.train.lock import OutputLock

__all__ = ["main", "build_parser"]

# Flag -> dotted config key: the settings people change most, as plain flags.
_FLAG_KEYS = {
    "max_steps": "train.max_steps",
    "micro_batch_size": "train.micro_batch_size",
    "grad_accum": "train.grad_accum",
    "output_dir": "train.output_dir",
    "seed": "train.seed",
    "eval_every": "train.eval_every",
    "save_every": "train.save_every",
    "device": "train.device",
    "threads": "train.threads",
    "lr": "optim.lr",
    "seq_len": "data.seq_len",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2 (argparse's default adds the usage block)
        hint = f"see {self.prog} --help"
        if message.startswith("unrecognized arguments: "):
            flag = message.split(": ", 1)[1].split()[0].split("=")[0]
            close = difflib.get_close_matches(flag, [o for a in self._actions for o in a.option_strings], n=1)
            if close:
                hint = f"did you mean {close[0]}?"
        self.exit(2, f"{self.prog}: error: {message} ({hint})\n")


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: argparse would otherwise run `--max-step 5` as --max-steps 5 (and `--lr` prefixes).
    p = _Parser(prog="prac-train", description="Train a causal LM with PRAC activation compression.",
                allow_abbrev=False)
    p.add_argument("--config", help="YAML preset (configs/train/*.yaml); defaults apply to what it leaves out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, value read as YAML (repeatable), e.g. --set optim.lr=3e-4")
    g = p.add_argument_group("common settings (shortcuts for --set)")
    g.add_argument("--max-steps", type=int)
    g.add_argument("--micro-batch-size", type=int)
    g.add_argument("--grad-accum", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--seq-len", type=int)
    g.add_argument("--output-dir")
    g.add_argument("--seed", type=int)
    g.add_argument("--eval-every", type=int)
    g.add_argument("--save-every", type=int)
    g.add_argument("--device")
    g.add_argument("--threads", type=int)
    m = p.add_argument_group("mode")
    m.add_argument("--no-prac", action="store_true", help="baseline: train without compression")
    m.add_argument("--compare", action="store_true",
                   help="baseline, then PRAC, same seed and data; one side-by-side report in --output-dir")
    m.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    m.add_argument("--deepspeed", metavar="DS_CONFIG_JSON", help="run under DeepSpeed with this config")
    m.add_argument("--fsdp", action="store_true", help="run under PyTorch FSDP2 (launch with torchrun)")
    m.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="torch.compile each decoder block (default backend: inductor)")
    m.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    # The deepspeed launcher appends --local_rank=N; LOCAL_RANK in the environment is what is used.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    overrides: Dict[str, Any] = {}
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides[key] = value
    if args.no_prac:
        overrides["prac"] = None
    if args.deepspeed and args.fsdp:
        raise ConfigError("--deepspeed and --fsdp: choose one engine")
    if args.deepspeed:
        if not Path(args.deepspeed).is_file():
            raise ConfigError(f"--deepspeed {args.deepspeed}: no such file")
        overrides["backend.kind"] = "deepspeed"
        overrides["backend.deepspeed_config"] = args.deepspeed
    if args.fsdp:
        overrides["backend.kind"] = "fsdp"
    if args.compile:
        overrides["backend.compile"] = args.compile
    cfg = load_config(args.config, overrides)
    if args.compare and cfg.prac is None:
        raise ConfigError(f"--compare needs PRAC settings, but PRAC is off by {cfg.prac_source}: "
                          f"it runs baseline and PRAC")
    return cfg


def make_backend_factory(cfg: TrainConfig):
    """The engine is imported only when selected, so a missing optional dependency fails only its own mode."""
    b, t = cfg.backend, cfg.train
    said = []

    def make():
        # Said once, when the input has passed the loop's checks (a rejected run prints only its error).
        from prac_dist.train.loop import env_rank_world

        if not said and env_rank_world()[0] == 0:
            said.append(True)
            print(f"prac-train: PRAC {'off' if cfg.prac is None else 'settings'} from {cfg.prac_source}",
                  file=sys.stderr)
        if b.kind == "local":
            from prac_dist.train.loop import env_rank_world
            from prac_dist.train.backends.local import LocalBackend

            _, world = env_rank_world()
            if world > 1:
                raise ConfigError(f"{world} processes were launched but the engine is local (one process): "
                                  f"pass --deepspeed CONFIG or --fsdp")
            return LocalBackend(device=t.device, precision=t.precision, compile_backend=b.compile)
        if b.kind == "deepspeed":
            try:
                from prac_dist.train.backends.deepspeed import DeepSpeedBackend
            except ImportError as exc:
                raise ConfigError(f"--deepspeed: the DeepSpeed engine is unavailable ({exc}); "
                                  f"pip install 'prac_dist[deepspeed]'") from None
            return DeepSpeedBackend(b.deepspeed_config, micro_batch_size=t.micro_batch_size)
        try:
            from prac_dist.train.backends.fsdp import FSDPBackend
        except ImportError as exc:
            raise ConfigError(f"--fsdp: the FSDP2 engine is unavailable ({exc})") from None
        return FSDPBackend(mixed_precision=b.fsdp_mixed_precision, cpu_offload=b.fsdp_cpu_offload,
                           compile_backend=b.compile)

    return make


def run(cfg: TrainConfig, compare: bool, resume: bool) -> List[Dict[str, Any]]:
    from prac_dist.train.loop import env_rank_world

    out = Path(cfg.train.output_dir)
    rank, _ = env_rank_world()
    # Rank 0 alone holds the folder: the other ranks write into the same one (torchrun's 2 ranks on one
    # node would otherwise lock each other out), and rank 0 exiting 2 makes the launcher stop them.
    with OutputLock(out) if rank == 0 else contextlib.nullcontext():
        return _run_locked(cfg, out, rank, compare, resume)


def _run_locked(cfg: TrainConfig, out: Path, rank: int, compare: bool, resume: bool) -> List[Dict[str, Any]]:
    from prac_dist.train.loop import train
    from prac_dist.train.report import write_report

    factory = make_backend_factory(cfg)
    if not compare:
        summary = train(cfg, factory, resume=resume, output_dir=out)
        if rank == 0:
            path = write_report(out, {summary["label"]: out}, title=f"prac-train: {summary['label']}")
            print(f"report: {path}", file=sys.stderr)
        return [summary]
    summaries = []
    baseline_cfg = dataclasses.replace(cfg, prac=None)
    for label, run_cfg in (("baseline", baseline_cfg), ("prac", cfg)):
        run_dir = out / label
        if resume and (run_dir / "summary.json").is_file():
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            continue
        summaries.append(train(run_cfg, factory, resume=resume, output_dir=run_dir, label=label))
    # One time figure for both runs, taken side by side (the totals above ran one after the other).
    from prac_dist.train.timing import alternating_step_times

    times = alternating_step_times(cfg, factory)
    if rank == 0:
        (out / "timing.json").write_text(json.dumps(times))
        path = write_report(out, {"baseline": out / "baseline", "prac": out / "prac"},
                            title="prac-train --compare: baseline vs PRAC",
                            extra_lines=["Settings: [baseline/config.yaml](baseline/config.yaml), "
                                         "[prac/config.yaml](prac/config.yaml)."])
        print(f"report: {path}", file=sys.stderr)
    return summaries


# Packages only the trainer imports (data loading, the report's plot); `pip install prac_dist` leaves them out.
_TRAIN_EXTRA = ("datasets", "matplotlib")


def _missing_train_extra() -> List[str]:
    import importlib.util

    return [name for name in _TRAIN_EXTRA if importlib.util.find_spec(name) is None]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(None if argv is None else [str(a) for a in argv])  # Paths welcome
    missing = _missing_train_extra()
    if missing:
        print(f"prac-train: error: the trainer needs {', '.join(missing)}: pip install 'prac_dist[train]'",
              file=sys.stderr)
        return 2
    try:
        cfg = resolve_config(args)
        if args.print_config:
            sys.stdout.write(dump_config(cfg))
            return 0
        summaries = run(cfg, compare=args.compare, resume=args.resume)
    except ConfigError as exc:
        print(f"prac-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prac-train: interrupted (the newest complete checkpoint is intact; use --resume)", file=sys.stderr)
        return 130
    from prac_dist.distributed import close_distributed
    from prac_dist.train.loop import env_rank_world

    if env_rank_world()[0] == 0:
        for s in summaries:
            print(f"{s['label']}: final train loss {s['final_train_loss']:.4f}  "
                  f"val loss {s['final_val_loss']:.4f}  time {s['train_time_s']:.0f} s")
    close_distributed()  # only after success: a barrier on a failed rank would wait for peers that are gone
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
