"""PRAC under FSDP2 in one ordered function (the torchtitan order).

    PRAC module swap -> activation checkpointing (optional) -> torch.compile per decoder block (optional)
    -> fully_shard per decoder block -> root

Each step must come before the next: see the comment at each step.
"""

from __future__ import annotations

from typing import Optional

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointImpl, checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy, fully_shard

from prac_dist.distributed.compile import compile_blocks
from prac_dist.models.layers import find_decoder_layers

__all__ = ["parallelize"]


def parallelize(
    model: nn.Module,
    prac_config,
    mesh: DeviceMesh,
    mp_policy: Optional[MixedPrecisionPolicy] = None,
    offload_policy: Optional[OffloadPolicy] = None,
    activation_checkpointing: bool = False,
    *,
    layers_path: Optional[str] = None,
    compile_backend: Optional[str] = None,
) -> nn.Module:
    """Apply PRAC (when `prac_config` is a PRACConfig; None = plain FSDP2) and shard `model` over `mesh`.

    Modifies `model` in place and returns it; build the optimizer afterwards, from the
    sharded parameters. `mesh` is a 1-D data-parallel mesh, e.g. `init_device_mesh("cpu", (world,))`.
    compile_backend ('inductor', 'aot_eager', ...): torch.compile each decoder block's forward.
    """
    _check_args(mesh, mp_policy, offload_policy, activation_checkpointing)
    layers = find_decoder_layers(model, layers_path)
    fsdp_kwargs = {"mesh": mesh}
    if mp_policy is not None:
        fsdp_kwargs["mp_policy"] = mp_policy
    if offload_policy is not None:
        fsdp_kwargs["offload_policy"] = offload_policy

    # 1. PRAC first: it swaps modules in place keeping the Parameter objects, and fully_shard
    #    then shards exactly those Parameters; swapping after sharding would hand PRAC DTensor shards.
    #    Module paths are also still the plain ones here, so PRAC's group names (which seed the
    #    random subspaces and key prac_state_dict) are the same with or without FSDP/checkpointing.
    if prac_config is not None:
        from prac_dist import apply_prac

        apply_prac(model, prac_config)

    # 2. Activation checkpointing wraps whole blocks (non-reentrant: works with FSDP2's hooks and
    #    checks saved-tensor shapes on recompute). It must wrap before fully_shard so that the
    #    FSDP unit is the wrapper and the recompute runs inside the block's unshard/reshard window.
    if activation_checkpointing:
        for i, block in enumerate(layers):
            layers[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)

    # 3. torchtitan's order: compile each block, then shard it. The block's forward is compiled, not the
    #    block wrapped in an OptimizedModule, so parameter names (and checkpoints) stay those of an
    #    eager run, and FSDP2's unshard/reshard hooks run outside the compiled graph.
    if compile_backend is not None:
        compile_blocks(model, compile_backend, layers)

    # 4. One FSDP unit per decoder block, bottom-up: only one block's full weights exist at a time
    #    (all-gather in forward, free after). The last block is not resharded after forward:
    #    backward starts with it, so freeing it would only re-gather it immediately.
    for i, block in enumerate(layers):
        fully_shard(block, reshard_after_forward=i < len(layers) - 1, **fsdp_kwargs)

    # 5. The root last: it takes the leftover parameters (embeddings, final norm, LM head) and
    #    its forward hook drives the lazy initialisation of all the units below it.
    fully_shard(model, **fsdp_kwargs)
    return model


def _check_args(mesh, mp_policy, offload_policy, activation_checkpointing) -> None:
    if not isinstance(mesh, DeviceMesh):
        raise ValueError(f"mesh={mesh!r}: accepted is a torch.distributed.device_mesh.DeviceMesh "
                         f"(e.g. init_device_mesh('cpu', (world_size,)))")
    if mesh.ndim != 1:
        raise ValueError(f"mesh has {mesh.ndim} dimensions {tuple(mesh.shape)}: accepted is a 1-D data-parallel mesh")
    if mp_policy is not None and not isinstance(mp_policy, MixedPrecisionPolicy):
        raise ValueError(f"mp_policy={mp_policy!r}: accepted is None or a torch.distributed.fsdp.MixedPrecisionPolicy")
    if offload_policy is not None and not isinstance(offload_policy, OffloadPolicy):
        raise ValueError(f"offload_policy={offload_policy!r}: accepted is None or a torch.distributed.fsdp."
                         f"CPUOffloadPolicy / OffloadPolicy")
    if not isinstance(activation_checkpointing, bool):
        raise ValueError(f"activation_checkpointing={activation_checkpointing!r}: accepted is True or False")
