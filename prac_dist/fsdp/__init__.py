"""PRAC under PyTorch FSDP2 (`fully_shard`): sharding, distributed checkpoints, launcher environment.

    from prac_dist.fsdp import parallelize, init_distributed
    env, device = init_distributed()                      # torchrun / SLURM / OpenMPI variables
    mesh = init_device_mesh(device.type, (env.world_size,))
    model = parallelize(model, PRACConfig(), mesh)        # PRAC -> [checkpointing] -> [compile] -> fully_shard
    save_checkpoint(path, model, optimizer) / load_checkpoint(path, model, optimizer)

`prac_dist.train.backends.fsdp.FSDPBackend` is the engine behind `prac-train --fsdp`; it wraps this
package, which never imports prac_dist.train (the trainer sits above the engines).
"""

from prac_dist.fsdp.checkpoint import load_checkpoint, save_checkpoint
from prac_dist.distributed import DistEnv, discover_env
from prac_dist.fsdp.env import init_distributed
from prac_dist.fsdp.parallelize import compile_blocks, find_decoder_layers, parallelize

__all__ = [
    "parallelize",
    "find_decoder_layers",
    "compile_blocks",
    "save_checkpoint",
    "load_checkpoint",
    "DistEnv",
    "discover_env",
    "init_distributed",
]
