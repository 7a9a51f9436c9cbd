"""What each way of storing an activation costs in matmul FLOPs and saves in bytes: one place.

apply_prac chooses a linear layer's storage with `linear_storage_mode` and the planner predicts
compute from the same formulas, so the choice and the prediction cannot disagree.

A linear group (q/k/v, or gate/up) reads X [N, n] and writes outputs of total width m:

    exact:    forward 2·N·n·m, dX 2·N·m·n, dW 2·N·n·m                (X stored: n values/token)
    project:  + Z = X·[Q1 | c·Q2]            2·N·n·r   (forward)
              dW = (dYᵀ Z) [Q1 | Q2]ᵀ        2·N·m·r + 2·m·r·n   instead of 2·N·n·m
              (Z stored: r values/token at 16 bits, r + 4 bytes at storage_bits=8)
    int8:     X itself in int8 + a float32 row scale (n + 4 bytes/token), O(N·n) elementwise;
              dW as exact (2·N·n·m) from the dequantized X.
    refresh:  Gram XᵀX 2·N·n², eigh 9·n³, QR 2·n·r² (Q1) and 2·n·r2² (Q2), every T1 steps.

Projection is therefore FLOP-neutral or cheaper per token where n·r + m·r <= n·m: q/k/v
(m = 3n) and gate/up (m = 2·ffn) at r = 0.6n; not down_proj (n = ffn > m) or o_proj (m = n),
whose input is stored in int8 under 'auto'.
"""

from __future__ import annotations

__all__ = ["linear_storage_mode", "projection_extra_flops", "exact_dw_flops", "refresh_flops",
           "stored_bytes_per_token", "STORAGE_MODES"]

STORAGE_MODES = ("project", "int8")
EIGH_FLOPS_PER_N3 = 9  # symmetric eigendecomposition, what FlopCounterMode does not count
QR_FLOPS = 2  # Householder QR of an n x r matrix: ~2·n·r² (FlopCounterMode counts neither)


def exact_dw_flops(tokens: int, n: int, m: int) -> int:
    """dW = dYᵀ X of a linear group reading width n and writing total width m."""
    return 2 * tokens * n * m


def projection_extra_flops(tokens: int, n: int, m: int, r: int) -> int:
    """FLOPs a projected linear group adds over exact (negative: projection is cheaper).

    Forward Z = X·Q (2·N·n·r) plus the low-rank dW (2·N·m·r + 2·m·r·n) minus the exact dW.
    """
    return 2 * tokens * n * r + 2 * tokens * m * r + 2 * m * r * n - exact_dw_flops(tokens, n, m)


def refresh_flops(tokens: int, n: int, r1: int, r2: int, solver: str = "exact") -> int:
    """One principal + random refresh of an n-wide basis from an N-token batch (exact solver)."""
    if solver != "exact":
        raise ValueError(f"refresh_flops: solver={solver!r}: accepted is 'exact' (the randomized solver's cost "
                         f"depends on its iterations; count it with FlopCounterMode)")
    qr = QR_FLOPS * n * (r1 * r1 + r2 * r2)
    return 2 * tokens * n * n + EIGH_FLOPS_PER_N3 * n ** 3 + qr


def linear_storage_mode(policy: str, n: int, m: int, r: int) -> str:
    """'project' or 'int8' for a linear group under PRACConfig.linear_storage = policy.

    'auto' projects where projecting costs no more matmul FLOPs per token than the exact dW it
    replaces (n·r + m·r <= n·m; the per-step 2·m·r·n and the refresh, amortised over T1 steps,
    are left out: both are O(1/N) or O(1/T1) per token) and stores X in int8 elsewhere.
    """
    if policy == "auto":
        return "project" if n * r + m * r <= n * m else "int8"
    if policy in STORAGE_MODES:
        return policy
    raise ValueError(f"linear_storage={policy!r}: accepted is one of ['auto', 'project', 'int8']")


def stored_bytes_per_token(mode: str, n: int, r: int, storage_bits: int, element_bytes: int = 2) -> int:
    """Bytes one token's stored activation takes: Z (r values) or X in int8 (n + a float32 scale)."""
    if mode == "int8":
        return n + 4
    if mode == "project":
        return r + 4 if storage_bits == 8 else r * element_bytes
    raise ValueError(f"mode={mode!r}: accepted is one of {list(STORAGE_MODES)}")
