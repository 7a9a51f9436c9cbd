"""The `"prac"` section of a DeepSpeed JSON config.

DeepSpeed ignores unknown top-level keys and never calls us, so prac_dist reads
and validates the section itself, before any training step:

    "prac": {
        "enabled": true,                       # default true when the section is present
        "principal_ratio": 0.3, "random_ratio": 0.3,  ... any PRACConfig field ...
        "offload": {"device": "cpu", "pin_memory": true, "min_bytes": 1048576}
    }

An unknown key, a wrong type or an "auto" value is a ValueError (`ConfigError`) naming the key
(`prac.offload.devic: unknown key; did you mean 'device'?`); types come from the dataclass
annotations, checked by prac_dist/validate.py as for every other settings mapping. The config itself may be a path, a dict
or DeepSpeed's base64 string, exactly as `deepspeed.initialize(config=...)` takes it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

from prac_dist.config import PRACConfig
from prac_dist.validate import ConfigError, build, check, check_fields

__all__ = ["OffloadConfig", "PRACSection", "load_ds_config", "parse_prac_section", "prac_fields", "SECTION"]

SECTION = "prac"
_EXTRA_KEYS = ("enabled", "offload")  # the section's keys that are not PRACConfig fields
# Below 1 MiB a host copy is dominated by its ~10 us launch and event overhead
# (1 MiB at ~25 GB/s pinned PCIe 4 is ~40 us), so small tensors stay on the device.
_DEFAULT_MIN_BYTES = 1 << 20

ConfigLike = Union[str, os.PathLike, Mapping[str, Any]]


@dataclass(frozen=True)
class OffloadConfig:
    device: Literal["cpu", "none"] = "none"
    """'cpu': move PRAC's compressed activations to host memory after forward; 'none': keep them."""
    pin_memory: bool = True
    """Pinned host buffers, so device->host and host->device copies run asynchronously on a side stream."""
    min_bytes: int = _DEFAULT_MIN_BYTES
    """Compressed tensors smaller than this stay on the device (copy overhead beats the saving)."""

    def __post_init__(self) -> None:
        check_fields(self, f"{SECTION}.offload")
        if self.min_bytes < 0:
            raise ConfigError(f"{SECTION}.offload.min_bytes={self.min_bytes!r}: accepted is an integer >= 0 (bytes)")

    @property
    def enabled(self) -> bool:
        return self.device != "none"


@dataclass(frozen=True)
class PRACSection:
    enabled: bool = True
    """Switch PRAC on or off without deleting the section."""
    config: PRACConfig = field(default_factory=PRACConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)


def load_ds_config(config: ConfigLike) -> dict:
    """The DeepSpeed config as a dict, from a dict, a JSON/HJSON file path or DeepSpeed's base64 string."""
    if isinstance(config, Mapping):
        return dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise ConfigError(
            f"DeepSpeed config: got {type(config).__name__}; accepted is a dict, a path to a JSON file "
            f"or a base64-encoded JSON string"
        )
    text = os.fspath(config)
    if os.path.exists(text):
        with open(text, "r", encoding="utf-8") as fh:
            return _loads(fh.read(), source=text)
    try:
        decoded = base64.urlsafe_b64decode(text).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ConfigError(
            f"DeepSpeed config {text[:80]!r}: not an existing file and not valid base64 JSON; "
            f"accepted is a dict, a path to a JSON file or a base64-encoded JSON string"
        ) from None
    return _loads(decoded, source="base64 config")


def _loads(text: str, source: str) -> dict:
    # DeepSpeed itself reads HJSON (comments, trailing commas) and rejects duplicate keys.
    try:
        import hjson as parser  # a dependency of deepspeed
    except ImportError:
        parser = json
    try:
        data = parser.loads(text, object_pairs_hook=_no_duplicates)
    except Exception as exc:  # JSONDecodeError, HjsonDecodeError, our duplicate-key ValueError
        raise ConfigError(f"DeepSpeed config {source}: cannot parse: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"DeepSpeed config {source}: top level is {type(data).__name__}, expected an object")
    return dict(data)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"DeepSpeed config: duplicate key {key!r}")
        out[key] = value
    return out


def parse_prac_section(config: ConfigLike) -> Optional[PRACSection]:
    """Validate the `"prac"` section of a DeepSpeed config; None when the config has none."""
    ds = load_ds_config(config)
    if SECTION not in ds:
        return None
    raw = ds[SECTION]
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{SECTION}={raw!r}: expected an object with PRACConfig fields plus 'enabled' and 'offload'"
        )
    enabled = check(raw.get("enabled", True), bool, f"{SECTION}.enabled")
    offload = check(raw.get("offload", {}), OffloadConfig, f"{SECTION}.offload")
    prac = build(PRACConfig, raw, SECTION, extra=_EXTRA_KEYS)
    return PRACSection(enabled=enabled, config=prac, offload=offload)


def prac_fields(config: ConfigLike) -> list:
    """The PRACConfig fields the `"prac"` section sets (not 'enabled' / 'offload'), sorted."""
    raw = load_ds_config(config).get(SECTION)
    return sorted(k for k in raw if k not in _EXTRA_KEYS) if isinstance(raw, Mapping) else []
