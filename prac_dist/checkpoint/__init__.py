"""Every checkpoint prac_dist writes or reads, in one folder.

    files.py       read_file / write_file: weights_only=True reads, atomic writes, the error classes
    rng.py         one RNG snapshot (torch, CUDA, Python, NumPy) as tensors and numbers
    prac_state.py  PRAC's per-rank state file, one format for DeepSpeed, FSDP2, HF Trainer, Accelerate
    sharded.py     FSDP2 checkpoints (torch.distributed.checkpoint + PRAC + RNG); prac_dist.fsdp exports them
    steps.py       prac-train's atomic step_N folders and --resume

    from prac_dist.checkpoint import save_prac_state, load_prac_state
    save_prac_state(model, "ckpt/step_100")        # every rank, beside the engine's own checkpoint
"""

from prac_dist.checkpoint.files import CheckpointError, CorruptCheckpoint, UnsafeCheckpoint
from prac_dist.checkpoint.prac_state import has_prac_state, load_prac_state, save_prac_state

__all__ = ["save_prac_state", "load_prac_state", "has_prac_state", "CheckpointError", "CorruptCheckpoint",
           "UnsafeCheckpoint"]
