"""Typed settings of a prac-train run: a YAML preset plus command-line overrides.

Each section is a dataclass whose fields are the only accepted keys and whose
annotations (Literal for a choice) are the accepted values: prac_dist.validate
checks both, so a misspelled key, a wrong type or an unknown choice is a
`ConfigError` naming `section.key`, the value and what is accepted, never a
silent default. Ranges and cross-field rules are `_validate_values`. The `prac:`
section is `prac_dist.PRACConfig` itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

import yaml

from prac_dist.config import PRACConfig
from prac_dist.validate import ConfigError, build, unknown_key

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "LoopConfig",
    "BackendConfig",
    "TrainConfig",
    "load_config",
    "parse_override",
]


@dataclass
class ModelConfig:
    preset: Optional[str] = "llama_tiny"
    """A built-in shape (llama_tiny, llama_60m, llama_130m, llama_350m, llama_1b, llama_7b); null with name_or_path."""
    name_or_path: Optional[str] = None
    """A local Hugging Face model directory (config.json, optionally weights): any causal LM."""
    from_pretrained: bool = False
    """With name_or_path: load the weights (fine-tuning); false builds the architecture from config (pre-training)."""
    vocab_size: Optional[int] = None
    """Override the preset's vocabulary size (GaLore's presets use 32000, the T5 tokenizer)."""
    overrides: Dict[str, Any] = field(default_factory=dict)
    """Fields of the Hugging Face config to change, e.g. {num_hidden_layers: 2}; each must exist."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """Hugging Face attention implementation."""


@dataclass
class DataConfig:
    train_files: Optional[List[str]] = None
    """Local .txt / .json / .jsonl files; 'bundled:wikitext-2/valid.txt' names a file shipped with prac_dist.
    null (and no dataset) = the bundled WikiText-2: valid.txt to train, test.txt held out."""
    eval_files: Optional[List[str]] = None
    """Held-out files; empty with no eval_split -> the last eval_fraction of the training sequences."""
    dataset: Optional[str] = None
    """A datasets name (e.g. allenai/c4) or a local dataset directory, instead of train_files."""
    dataset_config: Optional[str] = None
    """The datasets configuration name (e.g. 'en' for C4)."""
    train_split: str = "train"
    eval_split: Optional[str] = "validation"
    text_field: str = "text"
    """Column holding the text in JSON files and datasets."""
    streaming: bool = False
    """Stream the dataset instead of tokenising it all up front (large corpora such as C4)."""
    shuffle_buffer: int = 10000
    """Streaming only: documents in the shuffle buffer."""
    tokenizer: str = "bundled:gpt2"
    """'bundled:gpt2' (GPT-2 BPE shipped with prac_dist) or a Hugging Face tokenizer name or path."""
    seq_len: int = 128
    """Tokens per packed training sequence."""
    eval_fraction: float = 0.05
    """Share of the training sequences held out when there is no eval_files / eval_split."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Maximum global gradient norm; 0 disables clipping."""
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    """Cosine schedule floor as a fraction of lr."""


@dataclass
class LoopConfig:
    max_steps: int = 100
    """Optimizer steps."""
    micro_batch_size: int = 8
    """Sequences per micro-batch per rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    eval_every: int = 50
    """Evaluate every N optimizer steps (and at the end); 0 = only at the end."""
    eval_batches: int = 16
    """Micro-batches per evaluation (per rank); 0 = the whole held-out split."""
    log_every: int = 1
    save_every: int = 0
    """Checkpoint every N optimizer steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    output_dir: str = "runs/prac-train"
    seed: int = 0
    device: Optional[str] = None
    """'cpu', 'cuda' or 'cuda:N'; null = CUDA when available."""
    precision: Optional[Literal["bf16", "fp32"]] = None
    """'bf16' (autocast) or 'fp32'; null = bf16 on GPU, fp32 on CPU."""
    measure_memory: bool = True
    """Measure the bytes saved for backward on one micro-batch at the start (with and without PRAC)."""
    threads: Optional[int] = None
    """torch CPU threads; null = torch's default."""


@dataclass
class BackendConfig:
    kind: Literal["local", "deepspeed", "fsdp"] = "local"
    """'local' (one process), 'deepspeed' or 'fsdp'; --deepspeed / --fsdp select them."""
    deepspeed_config: Optional[str] = None
    """Path of the DeepSpeed JSON (ZeRO stage, precision, ...)."""
    fsdp_mixed_precision: Literal["bf16", "fp32"] = "fp32"
    """FSDP2 parameter dtype (prac_dist.train.backends.fsdp.MIXED_PRECISION)."""
    fsdp_cpu_offload: bool = False
    compile: Optional[str] = None
    """torch.compile backend for each decoder block ('inductor', 'aot_eager'); null = eager. local and fsdp."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    prac: Optional[PRACConfig] = field(default_factory=PRACConfig)
    """null = baseline (no compression); a mapping of PRACConfig fields otherwise."""
    prac_source: str = field(default="the PRACConfig defaults", compare=False)
    """Where `prac` came from (printed at the start of a run); not a setting, never in the YAML."""

    def to_dict(self) -> Dict[str, Any]:
        out = {}
        for name in _SECTIONS:
            section = getattr(self, name)
            out[name] = dataclasses.asdict(section)
        out["optim"]["betas"] = list(self.optim.betas)
        out["prac"] = None if self.prac is None else self.prac.to_dict()
        return out

    def validate(self) -> "TrainConfig":
        _validate_values(self)
        return self


_SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": LoopConfig,
    "backend": BackendConfig,
}


def load_config(path: Optional[str], overrides: Mapping[str, Any] = ()) -> TrainConfig:
    """Read a YAML preset (or the defaults when path is None), then apply dotted overrides.

    `overrides` maps 'section.key' to an already-typed value (see `parse_override`).
    """
    raw: Dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {path}: no such file")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path}: expected a mapping of sections, got {type(raw).__name__}")
    prac_from = f"the prac: section of {path}" if "prac" in raw else None
    for dotted, value in dict(overrides).items():
        section, _, key = dotted.partition(".")
        if section == "prac" and value is not None:
            prac_from = f"--set {dotted}" if prac_from is None else prac_from
        if section == "prac" and not key:
            raw["prac"] = value
            continue
        if not key:
            raise ConfigError(f"override {dotted!r}: expected section.key=value, e.g. train.max_steps=200")
        target = raw.setdefault(section, {})
        if target is None and section == "prac":
            target = raw["prac"] = {}
        if not isinstance(target, dict):
            raise ConfigError(f"override {dotted!r}: section {section!r} is not a mapping in the config")
        target[key] = value
    cfg = from_dict(raw).validate()
    if cfg.prac is None:
        cfg.prac_source = "--no-prac / prac: null"
    elif prac_from is not None:
        cfg.prac_source = prac_from
    return _route_deepspeed_prac(cfg, prac_from)


def _route_deepspeed_prac(cfg: TrainConfig, prac_from: Optional[str]) -> TrainConfig:
    """One route for PRAC settings under --deepspeed (docs/deepspeed.md, "Where PRAC settings come from").

    `"enabled": false` in the JSON turns PRAC off. PRACConfig fields in both the JSON's "prac" section and
    prac-train's `prac:` section (YAML or --set) are an error naming both: neither silently wins. The JSON
    section's 'enabled' and 'offload' keys are JSON-only and combine with either.
    """
    b = cfg.backend
    if b.kind != "deepspeed" or not b.deepspeed_config:
        return cfg
    from prac_dist.deepspeed.config import parse_prac_section, prac_fields

    path = b.deepspeed_config
    if not Path(path).is_file():
        raise ConfigError(f"backend.deepspeed_config={path!r}: no such file")
    try:
        section, fields = parse_prac_section(path), prac_fields(path)
    except ValueError as exc:
        raise ConfigError(f"--deepspeed {path}: {exc}") from None
    if section is None or cfg.prac is None:
        return cfg  # no section, or --no-prac / prac: null (the baseline runs without PRAC whatever the JSON says)
    if not section.enabled:
        cfg.prac, cfg.prac_source = None, f'"prac": {{"enabled": false}} in {path}'
    elif fields and prac_from is not None:
        raise ConfigError(f"PRAC settings given twice: {prac_from} and the \"prac\" section of {path} "
                          f"(sets {', '.join(fields)}); keep one of them (the JSON section may keep "
                          f"\"enabled\" and \"offload\")")
    elif fields:
        cfg.prac, cfg.prac_source = section.config, f'the "prac" section of {path}'
    return cfg


def from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    known = list(_SECTIONS) + ["prac"]
    for name in raw:
        if name not in known:
            raise unknown_key("", name, known)
    kwargs: Dict[str, Any] = {name: build(cls, raw.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    if "prac" in raw and raw["prac"] is None:
        kwargs["prac"] = None
    else:
        try:
            kwargs["prac"] = PRACConfig.from_dict(raw.get("prac") or {}, where="prac")
        except ValueError as exc:  # a range check written as a plain ValueError
            raise ConfigError(str(exc)) from None
    return TrainConfig(**kwargs)


def _validate_values(cfg: TrainConfig) -> None:
    def need(cond: bool, where: str, value: Any, accepted: str) -> None:
        if not cond:
            raise ConfigError(f"{where}={value!r}: accepted is {accepted}")

    t, o, d, m, b = cfg.train, cfg.optim, cfg.data, cfg.model, cfg.backend
    if d.train_files is None and d.dataset is None:
        d.train_files = ["bundled:wikitext-2/valid.txt"]
        if d.eval_files is None:
            d.eval_files = ["bundled:wikitext-2/test.txt"]
    d.train_files = d.train_files or []
    d.eval_files = d.eval_files or []
    need(t.max_steps >= 1, "train.max_steps", t.max_steps, "an integer >= 1")
    need(t.micro_batch_size >= 1, "train.micro_batch_size", t.micro_batch_size, "an integer >= 1")
    need(t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "an integer >= 1")
    for name in ("eval_every", "eval_batches", "save_every"):
        need(getattr(t, name) >= 0, f"train.{name}", getattr(t, name), "an integer >= 0")
    need(t.log_every >= 1, "train.log_every", t.log_every, "an integer >= 1")
    need(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, "an integer >= 1")
    need(t.device is None or t.device == "cpu" or t.device.startswith("cuda"), "train.device", t.device,
         "'cpu', 'cuda', 'cuda:N' or null")
    need(t.threads is None or t.threads >= 1, "train.threads", t.threads, "an integer >= 1 or null")
    need(o.lr > 0, "optim.lr", o.lr, "a number > 0")
    need(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a number >= 0")
    need(all(0 <= x < 1 for x in o.betas), "optim.betas", list(o.betas), "two numbers in [0, 1)")
    need(o.eps > 0, "optim.eps", o.eps, "a number > 0")
    need(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "a number >= 0 (0 disables clipping)")
    need(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "an integer >= 0")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", o.min_lr_ratio, "a number in [0, 1]")
    need(d.seq_len >= 2, "data.seq_len", d.seq_len, "an integer >= 2")
    need(0 < d.eval_fraction < 1, "data.eval_fraction", d.eval_fraction, "a number in (0, 1)")
    need(d.shuffle_buffer >= 1, "data.shuffle_buffer", d.shuffle_buffer, "an integer >= 1")
    need(bool(d.train_files) != bool(d.dataset), "data.dataset", d.dataset,
         "exactly one of data.train_files and data.dataset")
    need(not (d.streaming and not d.dataset), "data.streaming", d.streaming, "true only with data.dataset")
    need((m.preset is None) != (m.name_or_path is None), "model.preset", m.preset,
         "exactly one of model.preset and model.name_or_path")
    need(not (m.from_pretrained and m.name_or_path is None), "model.from_pretrained", m.from_pretrained,
         "true only with model.name_or_path")
    need(m.vocab_size is None or m.vocab_size >= 2, "model.vocab_size", m.vocab_size, "an integer >= 2 or null")
    need(not (b.kind == "deepspeed" and not b.deepspeed_config), "backend.deepspeed_config",
         b.deepspeed_config, "a DeepSpeed JSON path when backend.kind is deepspeed")
    need(b.compile is None or (isinstance(b.compile, str) and b.compile != ""), "backend.compile", b.compile,
         "null or a torch.compile backend name ('inductor', 'aot_eager')")
    need(not (b.compile is not None and b.kind == "deepspeed"), "backend.compile", b.compile,
         "null under --deepspeed (per-block compile is wired for the local and fsdp engines)")


def parse_override(text: str) -> Tuple[str, Any]:
    """'train.lr=3e-4' -> ('train.lr', 0.0003): the value is read as YAML, so types follow YAML rules."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set optim.lr=3e-4")
    try:
        parsed = yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
