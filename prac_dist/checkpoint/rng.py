"""One RNG snapshot for every checkpoint: torch (and this rank's CUDA device), Python's random, NumPy's global state.

Stored as tensors, numbers and tuples of numbers, so files holding it load with weights_only=True.
"""

from __future__ import annotations

import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state"]


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This rank's device only: reading every device's state would create a context on each of them.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what rng_state() returned; also accepted: NumPy's get_state() tuple and a list of CUDA states."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        key = np_state["key"].numpy().astype(np.uint32)
        np_state = {"bit_generator": np_state["bit_generator"], "state": {"key": key, "pos": np_state["pos"]},
                    "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]}
    np.random.set_state(np_state)
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # one state per device
            torch.cuda.set_rng_state_all(cuda)
        else:
            torch.cuda.set_rng_state(cuda)
