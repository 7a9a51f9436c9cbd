"""Where this process sits in the job and how the job runs on it: launcher variables (env.py), the
default process group and device (process_group.py), torch.compile per decoder block (compile.py).

    from prac_dist.distributed import init_distributed
    env, device = init_distributed()          # torchrun / deepspeed / mpirun / srun variables

Both engines (prac_dist.deepspeed, prac_dist.fsdp), the checkpoints and the trainer read these.
"""

from prac_dist.distributed.compile import compile_blocks
from prac_dist.distributed.env import DistEnv, discover_env, first_slurm_host, rank_world
from prac_dist.distributed.process_group import close_distributed, init_distributed

__all__ = ["DistEnv", "discover_env", "rank_world", "first_slurm_host", "init_distributed", "close_distributed",
           "compile_blocks"]
