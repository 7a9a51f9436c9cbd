"""PRAC under PyTorch FSDP2 (`fully_shard`): sharding and distributed checkpoints.

    from prac_dist.distributed import init_distributed
    from prac_dist.fsdp import parallelize, save_checkpoint, load_checkpoint
    env, device = init_distributed()                      # torchrun / SLURM / OpenMPI variables
    mesh = init_device_mesh(device.type, (env.world_size,))
    model = parallelize(model, PRACConfig(), mesh)        # PRAC -> [checkpointing] -> [compile] -> fully_shard
    save_checkpoint(path, model, optimizer) / load_checkpoint(path, model, optimizer)

The checkpoint functions live with the other checkpoints (prac_dist.checkpoint.sharded).
`prac_dist.train.backends.fsdp.FSDPBackend` is the engine behind `prac-train --fsdp`; it wraps this
package, which never imports prac_dist.train (the trainer sits above the engines).
"""

from prac_dist.checkpoint.sharded import load_checkpoint, save_checkpoint
from prac_dist.distributed.process_group import init_distributed  # noqa: F401  (README's FSDP2 snippet)
from prac_dist.fsdp.parallelize import parallelize

__all__ = ["parallelize", "save_checkpoint", "load_checkpoint"]
