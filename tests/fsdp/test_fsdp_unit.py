"""Single-process checks: launcher environment discovery, decoder-block lookup, argument validation."""

from __future__ import annotations

import pytest
import torch

from prac_dist.distributed import discover_env, first_slurm_host
from prac_dist.fsdp.parallelize import find_decoder_layers, parallelize


def test_torchrun_variables_win_over_slurm():
    env = discover_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                        "MASTER_ADDR": "node0", "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 8, 1, 4)
    assert (env.master_addr, env.master_port, env.source) == ("node0", 1234, "torchrun")


def test_slurm_fallback_derives_master_from_nodelist_and_job_id():
    env = discover_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_NTASKS_PER_NODE": "4(x2)", "SLURM_JOB_NODELIST": "gpu[007-008]",
                        "SLURM_JOB_ID": "123456"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 4)
    assert (env.master_addr, env.master_port, env.source) == ("gpu007", 20000 + 123456 % 10000, "slurm")


def test_openmpi_and_single_process():
    env = discover_env({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
                        "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (1, 2, 1, "openmpi")
    single = discover_env({})
    assert (single.rank, single.world_size, single.source, single.is_distributed) == (0, 1, "single", False)


@pytest.mark.parametrize("nodelist,first", [("node7", "node7"), ("gpu[003-005,010],cpu1", "gpu003"),
                                            ("a-b[1,4]", "a-b1"), ("x1,x2", "x1")])
def test_first_slurm_host(nodelist, first):
    assert first_slurm_host(nodelist) == first


@pytest.mark.parametrize("env,name", [({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2"),
                                      ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
                                      ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
                                      ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000")])
def test_bad_environment_is_a_value_error_naming_the_variable(env, name):
    with pytest.raises(ValueError, match=name):
        discover_env(env)


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=16))


def test_decoder_layers_found_for_llama_and_gpt2():
    llama, gpt2 = _llama(), _gpt2()
    assert find_decoder_layers(llama) is llama.model.layers
    assert find_decoder_layers(gpt2) is gpt2.transformer.h
    assert find_decoder_layers(llama.model) is llama.model.layers
    assert find_decoder_layers(gpt2, layers_path="transformer.h") is gpt2.transformer.h


def test_unknown_model_is_an_error_naming_the_paths():
    with pytest.raises(ValueError, match="model.layers.*layers_path"):
        find_decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="layers_path='model.blocks'"):
        find_decoder_layers(_llama(), layers_path="model.blocks")


def test_parallelize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mesh="):
        parallelize(_llama(), None, mesh="cpu")


def test_backend_rejects_unknown_precision():
    from prac_dist.train.backends.fsdp import FSDPBackend

    with pytest.raises(ValueError, match="mixed_precision='fp16'.*accepted"):
        FSDPBackend(mixed_precision="fp16")
    with pytest.raises(ValueError, match="cpu_offload=1"):
        FSDPBackend(cpu_offload=1)
