"""Reading and writing one checkpoint file: torch.load with weights_only=True, and the errors a reader sees.

Every file prac_dist writes holds tensors, numbers, strings, None and containers of them, which
`weights_only=True` reads without running code. A file whose pickle names any other global (a
class, a function such as os.system) is refused before anything in it runs: UnsafeCheckpoint,
naming the file and the globals. prac-train prints it on one line and exits with status 2, and
does not fall back to an older checkpoint: a tampered file is not a damaged one.
Also accepted: plain NumPy arrays (`_NUMPY_ARRAY`), which prac-train's loop state held for
NumPy's RNG key; an array is rebuilt from its dtype and bytes and runs no code.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, List

import numpy as np
import torch

from prac_dist.validate import ConfigError

__all__ = ["CheckpointError", "CorruptCheckpoint", "UnsafeCheckpoint", "read_file", "write_file"]

_NUMPY_ARRAY = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np.dtypes.Int64DType, np.dtypes.Float64DType]
try:  # NumPy 2 moved the array reconstructor to numpy._core; NumPy 1 keeps it in numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1
    from numpy.core.multiarray import _reconstruct
_NUMPY_ARRAY.append(_reconstruct)


class CheckpointError(ConfigError):
    """A checkpoint that is unreadable, incomplete, or does not fit this run; the message names the path."""


class CorruptCheckpoint(CheckpointError):
    """A file of the checkpoint is missing, truncated or garbled: an older checkpoint may still be intact."""


class UnsafeCheckpoint(CheckpointError):
    """A file whose pickle would run code when loaded: refused, never loaded with weights_only=False."""


def read_file(path, map_location: Any = "cpu") -> Any:
    """torch.load(weights_only=True); a missing, truncated or corrupt file is a CorruptCheckpoint naming it,
    a pickle naming code an UnsafeCheckpoint naming it and the code."""
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CorruptCheckpoint(f"{path}: missing (the checkpoint is incomplete)") from None
    except pickle.UnpicklingError as exc:
        code = _unsafe_globals(path)  # weights_only refuses garbled bytes with the same exception type
        if code:
            raise UnsafeCheckpoint(f"{path}: refused: its pickle names code ({', '.join(code)}) that loading "
                                   f"would run; only tensors, numbers, strings and containers of them are "
                                   f"read") from None
        raise CorruptCheckpoint(_unreadable(path, exc)) from None
    except Exception as exc:  # PytorchStreamReader, EOFError: a truncated or garbled file
        raise CorruptCheckpoint(_unreadable(path, exc)) from None


def write_file(obj: Any, path) -> None:
    """torch.save under a temporary name renamed into place: a crash never leaves a truncated file."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unsafe_globals(path: str) -> List[str]:
    """The globals (classes, functions) the file's pickle names beyond the accepted ones; [] if it cannot be read."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a readable torch.save archive: damaged, not crafted
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_ARRAY}
    return [g for g in found if g not in allowed]


def _unreadable(path: str, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{path}: unreadable ({type(exc).__name__}: {first[:160]})"
