"""GPU benchmark of the PRAC kernels and of a whole PRAC training step.

    python -m benchmarks.kernels.kernel_timing [--tokens 8192] [--layers 4] [--micro-batch 16] [--seq 256]

Needs a CUDA GPU (Triton's CPU interpreter timings mean nothing); on a machine without
one it says so and exits with status 1 without writing a result.

1. Measured peak memory bandwidth: a 1 GiB device-to-device copy (read + write).
2. Each kernel at the LLaMA-1B shape (hidden 2048, ffn 5461, bf16, N tokens), Triton vs
   the PyTorch reference (and HF's module where there is one): time (median of
   triton.testing.do_bench), bytes moved, achieved bandwidth and its share of the peak.
3. The whole training step of a LLaMA-1B-shaped model (`--layers` decoder layers, AdamW)
   at equal batch: no PRAC, PRAC with kernel="torch", PRAC with kernel="triton",
   storage_bits 16 and 8; overhead relative to no PRAC. Goal: <= 5% on an H100.

Prints tables and writes benchmarks/results/kernels.json (hardware and versions included).
"""

from __future__ import annotations

import sys

import torch

from prac_dist.models.shapes import PRESETS

from benchmarks._harness import llama, parser, write_result  # noqa: E402

HIDDEN, FFN = PRESETS["llama_1b"].hidden, PRESETS["llama_1b"].ffn  # LLaMA-1B (the paper's pre-training shape)


def _bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3  # seconds


def peak_bandwidth() -> float:
    x = torch.empty(2**29, dtype=torch.float16, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    return 2 * x.numel() * x.element_size() / _bench(lambda: y.copy_(x))


def kernel_cases(N: int, hidden: int, ffn: int, device, dtype=torch.bfloat16) -> list:
    """(name, bytes moved, {"triton": fn, "torch": fn}) per kernel at N tokens of a (hidden, ffn) layer.

    Bytes are the compulsory traffic (each input read once, each output written once). Both entries
    of a case compute the same function; each fn returns its outputs (a tensor or a tuple).
    """
    from prac_dist.kernels import dequantize, fused_project, rmsnorm_backward, rmsnorm_forward
    from prac_dist.kernels import swiglu_backward, swiglu_forward
    from prac_dist.kernels.projection import torch_dequantize, torch_fused_project
    from prac_dist.kernels.rmsnorm import torch_rmsnorm_backward, torch_rmsnorm_forward
    from prac_dist.kernels.swiglu import torch_swiglu_backward, torch_swiglu_forward

    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dt)

    x = randn(N, hidden)
    r = int(0.3 * hidden) * 2  # [Q1 | c Q2] at r1 = r2 = 0.3n
    q = randn(hidden, r, dt=torch.float32) / hidden**0.5
    w = randn(hidden)
    g, u = randn(N, ffn), randn(N, ffn)
    codes, scale = torch_fused_project(x, q, 8, seed=0)
    _, rstd = torch_rmsnorm_forward(x, w, 1e-6)
    e = x.element_size()
    return [
        ("fused_project 16-bit", N * hidden * e + hidden * r * e + N * r * e, {
            "triton": lambda: fused_project(x, q, 16, kernel="triton"),
            "torch": lambda: torch_fused_project(x, q, 16)}),
        ("fused_project 8-bit", N * hidden * e + hidden * r * e + N * r + 4 * N, {
            "triton": lambda: fused_project(x, q, 8, seed=1, kernel="triton"),
            "torch": lambda: torch_fused_project(x, q, 8, seed=1)}),
        ("dequantize", N * r + 4 * N + N * r * e, {
            "triton": lambda: dequantize(codes, scale, dtype, kernel="triton"),
            "torch": lambda: torch_dequantize(codes, scale, dtype)}),
        ("rmsnorm forward", 2 * N * hidden * e + 4 * N, {
            "triton": lambda: rmsnorm_forward(x, w, 1e-6, kernel="triton"),
            "torch": lambda: torch_rmsnorm_forward(x, w, 1e-6)}),
        ("rmsnorm backward", 3 * N * hidden * e + 4 * N, {
            "triton": lambda: rmsnorm_backward(x, x, w, rstd, kernel="triton"),
            "torch": lambda: torch_rmsnorm_backward(x, x, w, rstd)}),
        ("swiglu forward", 3 * N * ffn * e, {
            "triton": lambda: swiglu_forward(g, u, kernel="triton"),
            "torch": lambda: torch_swiglu_forward(g, u)}),
        ("swiglu backward", 5 * N * ffn * e, {
            "triton": lambda: swiglu_backward(g, g, u, kernel="triton"),
            "torch": lambda: torch_swiglu_backward(g, g, u)}),
    ]


def kernel_rows(N: int, peak: float) -> list:
    rows = []
    for name, nbytes, impls in kernel_cases(N, HIDDEN, FFN, "cuda"):
        for impl, fn in impls.items():
            sec = _bench(fn)
            rows.append({"kernel": name, "impl": impl, "N": N, "us": sec * 1e6, "bytes": nbytes,
                         "GBps": nbytes / sec / 1e9, "share_of_peak": nbytes / sec / peak})
    return rows


def step_rows(layers: int, micro_batch: int, seq: int) -> list:
    from prac_dist import PRACConfig, apply_prac, hook_optimizer

    variants = [("baseline (no PRAC)", None)]
    for kernel in ("torch", "triton"):
        for bits in (16, 8):
            variants.append((f"PRAC kernel={kernel} bits={bits}", PRACConfig(kernel=kernel, storage_bits=bits)))
    rows = []
    shape = PRESETS["llama_1b"]
    ids = torch.randint(0, shape.vocab, (micro_batch, seq), device="cuda")
    for name, cfg in variants:
        torch.manual_seed(0)
        model = llama(shape, layers=layers, max_positions=seq).to(device="cuda", dtype=torch.bfloat16)
        if cfg is not None:
            apply_prac(model, cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if cfg is not None:
            hook_optimizer(opt, model)

        def train_step():
            model(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        sec = _bench(train_step)
        rows.append({"variant": name, "layers": layers, "micro_batch": micro_batch, "seq": seq,
                     "step_ms": sec * 1e3, "peak_GiB": torch.cuda.max_memory_allocated() / 2**30})
        del model, opt
        torch.cuda.empty_cache()
    base = rows[0]["step_ms"]
    for row in rows:
        row["overhead"] = row["step_ms"] / base - 1
    return rows


def main(argv=None) -> int:
    p = parser(__doc__, out="kernels.json", seq=256)
    p.add_argument("--tokens", type=int, default=8192, help="N rows for the kernel timings")
    p.add_argument("--layers", type=int, default=4, help="decoder layers of the LLaMA-1B-shaped step model")
    p.add_argument("--micro-batch", type=int, default=16)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernels/kernel_timing.py: no CUDA GPU here; kernel timings need one (the Triton CPU "
              "interpreter's timings mean nothing). Nothing measured, nothing written.", file=sys.stderr)
        return 1

    peak = peak_bandwidth()
    kernels = kernel_rows(args.tokens, peak)
    print(f"measured peak bandwidth (1 GiB copy): {peak / 1e9:.0f} GB/s")
    print(f"{'kernel':<22}{'impl':<8}{'us':>10}{'GB/s':>9}{'% peak':>8}")
    for row in kernels:
        print(f"{row['kernel']:<22}{row['impl']:<8}{row['us']:>10.1f}{row['GBps']:>9.0f}{100 * row['share_of_peak']:>7.0f}%")
    steps = step_rows(args.layers, args.micro_batch, args.seq)
    print(f"\n{'step (LLaMA-1B shape, ' + str(args.layers) + ' layers)':<36}{'ms':>9}{'overhead':>10}{'peak GiB':>10}")
    for row in steps:
        print(f"{row['variant']:<36}{row['step_ms']:>9.1f}{100 * row['overhead']:>9.1f}%{row['peak_GiB']:>10.2f}")
    write_result(args.out, "kernels", {"args": vars(args), "peak_bandwidth_GBps": peak / 1e9, "kernels": kernels,
                                       "steps": steps})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
