"""The PRAC bases and the compressor that owns them.

A Compressor holds one (Q1, Q2) pair for one input tensor (shared by every layer
that reads that tensor: q/k/v, gate/up) and its refresh schedule:

    Q1 = top-r1 eigenvectors of XᵀX (float32), recomputed every T1 optimizer steps
    Q2 = QR(S - Q1 Q1ᵀ S), S ~ N(0, 1)^{n x r2}, redrawn every T2 steps
    Z  = X [Q1 | c Q2],  c = (n - r1) / r2          (the only thing saved)
    X~ = Z [Q1 | Q2]ᵀ,   E[X~] = X                  (never materialised for linears)

Q2's S is counter-based noise of (seed, group, rank, draw index) drawn on the device
(prac_dist.kernels.projection.gaussian_noise), so a resumed run redraws exactly what an
uninterrupted one would, and torch.compile traces the draw.

A Compressor with storage='int8' has no basis: it stores X itself in int8 with stochastic
rounding (prac_dist.core.storage.pack_int8) where projecting would cost more FLOPs than it saves
(prac_dist.core.cost).

Under torch.compile a PRAC block traces without a graph break, refresh steps included (adaptive ranks
excepted: they choose r1 on the host). Each random draw (int8 rounding, Q2) takes its key on the device
from the compressor's base keys and a counter it increments in place (prac_dist.kernels.projection.
rounding_key): per-layer values are tensors, never Python ints a compiled block would guard on (one
compile per layer). The linears that read one tensor share one Z, carried by that tensor itself
(`compress_shared`).

Refreshes stay on the device (no host synchronisation): the captured energy is a 0-dim tensor
read only by prac_stats (and, under schedule='drift', once per optimizer step by patching.apply.step);
a batch with a non-finite value keeps the previous basis (counted in `nonfinite_refreshes`), and the
Gram is formed from X / max|X| so activations near the float32 limit (1e38) do not overflow it.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Optional, Tuple

import torch

from prac_dist.kernels.projection import gaussian_noise, rounding_key
from prac_dist.kernels.subspace import energy_share, finite_scaled, principal_basis, spectrum, top_basis

__all__ = ["Compressor", "SCHEDULES"]

# When a Compressor recomputes Q1 (Compressor.principal_scheduled; 'drift' also Compressor.drifted).
SCHEDULES = ("interval", "early_dense", "drift")

# The attribute of a linear's input tensor that carries (compressor epoch, stored form) for its siblings.
_STORED_ATTR = "_prac_stored"


def _seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def choose_r1(evals: torch.Tensor, budget: int, policy: str, energy: float) -> int:
    """r1 for a layer that stores `budget` = r1 + r2 coordinates, from the spectrum of XᵀX.

    'min_variance' minimises the variance bound (c - 1)·tail(r1) = (n - R)/(R - r1) · Σ_{i>r1} λ_i;
    'energy' takes the smallest r1 with Σ_{i<=r1} λ_i >= energy · Σ λ_i. r1 <= R - 1 keeps r2 >= 1.
    """
    n = evals.numel()
    lam = evals.double()
    tail = lam.sum() - torch.cat([lam.new_zeros(1), lam.cumsum(0)])  # tail[r] = Σ_{i>=r} λ_i
    r = torch.arange(budget, dtype=torch.float64)
    if policy == "energy":
        captured = 1 - tail[:budget] / tail[0].clamp_min(1e-30)
        hits = torch.nonzero(captured >= energy - 1e-12)
        return int(hits[0]) if hits.numel() else budget - 1
    if budget >= n:
        return budget - 1
    bound = (n - budget) / (budget - r) * tail[:budget]
    return int(torch.argmin(bound))


def variance_curve(evals: torch.Tensor, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For every budget R = r1 + r2 in 0..n: the least relative variance bound and the r1 reaching it.

    V[R] = min_{r1 < R} (n - R)/(R - r1) · tail(r1) / Σλ  (V[0] = inf: nothing stored is not an option).
    Float64 on the CPU, computed in blocks of budgets so memory stays O(256·n).
    """
    lam = evals.detach().double().cpu()
    total = float(lam.sum()) or 1.0
    tail = (lam.sum() - torch.cat([lam.new_zeros(1), lam.cumsum(0)]))[:n] / total  # tail[r] for r < n
    values = torch.full((n + 1,), float("inf"), dtype=torch.float64)
    best = torch.zeros(n + 1, dtype=torch.long)
    r = torch.arange(n, dtype=torch.float64)
    for start in range(1, n + 1, 256):
        budgets = torch.arange(start, min(start + 256, n + 1), dtype=torch.float64)[:, None]
        bound = (n - budgets) / (budgets - r) * tail
        bound = torch.where(r < budgets, bound, torch.full_like(bound, float("inf")))
        v, i = bound.min(dim=1)
        values[start:start + len(v)], best[start:start + len(v)] = v, i
    return values, best


def allocate_budgets(curves: Dict[str, torch.Tensor], total: int) -> Dict[str, int]:
    """Budgets R_l (>= 1, <= n_l, Σ R_l <= total) minimising Σ_l curves[l][R_l].

    Lagrangian: for a price μ per stored coordinate each layer takes argmin_R V_l(R) + μR; bisect μ
    until the budgets fit, then hand what is left over, one coordinate at a time, to the layer whose
    bound falls most. V_l need not be convex: this is the exact optimum only where it is.
    """
    def take(mu: float) -> Dict[str, int]:
        return {k: int(torch.argmin(v + mu * torch.arange(len(v), dtype=torch.float64))) for k, v in curves.items()}

    if len(curves) > total:
        raise ValueError(f"adaptive_rank='global': {len(curves)} bases need at least one coordinate each, "
                         f"the total budget is {total}")
    lo, hi = 0.0, 1.0
    while sum(take(hi).values()) > total:
        lo, hi = hi, hi * 4
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if sum(take(mid).values()) > total:
            lo = mid
        else:
            hi = mid
    budgets = take(hi)
    for _ in range(total - sum(budgets.values())):
        gain = {k: float(v[budgets[k]] - v[budgets[k] + 1]) for k, v in curves.items() if budgets[k] + 1 < len(v)}
        if not gain:
            break
        k = max(gain, key=gain.get)
        budgets[k] += 1
    return budgets


@torch.no_grad()
def random_complement_basis(q1: torch.Tensor, n: int, r2: int, key: torch.Tensor) -> torch.Tensor:
    """Orthonormal n x r2 basis of a uniformly random r2-dim subspace of range(Q1)⊥ (key: int64 [2])."""
    s = gaussian_noise(key.to(q1.device), n, r2)
    # Two rounds of projection: one loses orthogonality to Q1 at float32 rounding (Kahan's "twice is enough").
    for _ in range(2):
        s = s - q1 @ (q1.t() @ s)
    q2, _ = torch.linalg.qr(s)
    # At r1 + r2 = n the projected S is a square Gaussian in an r2-dim space: its condition number (~r2)
    # amplifies the float32 residue along Q1 through the QR (measured 3.8e-3 off-orthogonal at r2 = 80).
    # One more projection after the QR and a second QR bring [Q1 | Q2] back to ~1e-6.
    q2, _ = torch.linalg.qr(q2 - q1 @ (q1.t() @ q2))
    return q2


class Compressor:
    """One basis pair and its schedule; see the module docstring."""

    def __init__(self, name: str, n: int, r1: int, r2: int, *, seed: int, per_rank_random: bool,
                 storage_bits: int = 16, solver: str = "exact", kernel: str = "auto",
                 adaptive: str = "off", adaptive_energy: float = 0.9, t1: int = 500, t2: int = 500,
                 storage: str = "project", schedule: str = "interval", drift: float = 0.9):
        if storage not in ("project", "int8"):
            raise ValueError(f"{name}: storage={storage!r}: accepted is 'project' or 'int8'")
        if storage == "project" and (r1 + r2 == 0 or r1 + r2 > n):
            raise ValueError(f"{name}: r1={r1}, r2={r2} for width n={n}: accepted is 0 < r1 + r2 <= n")
        if storage == "int8" and adaptive != "off":
            raise ValueError(f"{name}: adaptive={adaptive!r} needs a basis; storage='int8' has none")
        if schedule not in SCHEDULES:
            raise ValueError(f"{name}: schedule={schedule!r}: accepted is one of {SCHEDULES}")
        self.storage, self.schedule, self.drift = storage, schedule, drift
        self.name, self.n, self.r1, self.r2 = name, n, r1, r2
        self.budget, self.adaptive, self.adaptive_energy = r1 + r2, adaptive, adaptive_energy
        self.t1, self.t2 = t1, t2
        self.seed, self.per_rank_random = seed, per_rank_random
        # The data-parallel rank seeding Q2 and the int8 roundings: apply_prac sets it from
        # prac_dist.distributed; a Compressor built by hand asks there at first use.
        self.dp_rank: Optional[int] = None
        self.storage_bits, self.solver, self.kernel = storage_bits, solver, kernel
        self.q1: Optional[torch.Tensor] = None
        self.q2: Optional[torch.Tensor] = None
        self.principal_due = True
        self.random_due = True
        # Q2 draws and stochastic roundings so far (int64, 0-dim, on the device): each gets its own key. Tensors,
        # not ints, so compiled code increments them in the graph and no layer guards on their values.
        self.draws = torch.zeros((), dtype=torch.int64)
        self.roundings = torch.zeros((), dtype=torch.int64)
        self._keys: Optional[torch.Tensor] = None  # int64 [2, 2]: base keys of the roundings and the draws
        self._renew_epoch()
        self.energy: Optional[torch.Tensor] = None  # 0-dim, on the device: read lazily (prac_stats)
        # schedule='drift': the share ‖XQ1‖²/‖X‖² of the last batch compressed with this Q1 (0-dim, device).
        self.batch_energy: Optional[torch.Tensor] = None
        self.nonfinite_refreshes: Optional[torch.Tensor] = None  # refreshes that kept the old basis
        # adaptive='global': the last scheduled refresh's variance curve, waiting for step() to reallocate.
        self.curve: Optional[torch.Tensor] = None
        self.followup = False  # this refresh only applies a new budget: it does not start a reallocation
        # The basis is held once: [Q1 | Q2] in float32, with q1 and q2 views of it (_bind).
        self._back: Optional[torch.Tensor] = None

    @property
    def c(self) -> float:
        """Scale of the random part: (n - r1) / r2 makes E[c Q2 Q2ᵀ] = I - Q1 Q1ᵀ."""
        return (self.n - self.r1) / self.r2 if self.r2 > 0 else 1.0

    @property
    def rank(self) -> int:
        return self.r1 + self.r2

    @property
    def projects(self) -> bool:
        """True: stores Z = X[Q1 | cQ2]; False: stores X itself in int8 (no basis)."""
        return self.storage == "project"

    # ---- schedule -------------------------------------------------------------------------
    def _renew_epoch(self) -> None:
        # An empty tensor, replaced at every step, refresh and load: a stored form carried by an input tensor
        # (compress_shared) is reused only while it is the same object. A tensor: Dynamo guards on its
        # metadata, not its identity, so renewing it compiles nothing.
        self._epoch = torch.empty(0)

    def principal_scheduled(self, step: int) -> bool:
        """Whether the schedule recomputes Q1 before optimizer step `step` + 1 (steps count from 1).

        'interval': every T1 steps. 'early_dense': also at steps 1, 2, 4, 8, ... below T1, when the
        weights, and so the activations' principal subspace, move fastest (log2(T1) extra refreshes).
        'drift': every T1 steps here, and whenever `drifted` says so (read by patching.apply.step).
        """
        if step % self.t1 == 0:
            return True
        return self.schedule == "early_dense" and step < self.t1 and step & (step - 1) == 0

    def drifted(self) -> Optional[torch.Tensor]:
        """schedule='drift': a 0-dim bool on the device, True when the last batch's captured share ‖XQ1‖²/‖X‖²
        fell below `drift` times the share at the last refresh; None before both are known."""
        if self.schedule != "drift" or self.batch_energy is None or self.energy is None:
            return None
        return self.batch_energy < self.drift * self.energy.to(self.batch_energy.device)

    def mark(self, step: int) -> None:
        self._renew_epoch()
        if self.principal_scheduled(step):
            self.principal_due = True
        if step % self.t2 == 0:
            self.random_due = True

    @property
    def rounds(self) -> bool:
        """True when the stored form is int8 with stochastic rounding (int8 storage, or 8-bit Z)."""
        return not self.projects or self.storage_bits == 8

    def refresh(self, x2d: torch.Tensor) -> None:
        """Recompute whatever the schedule says is due, from this training batch (and put the keys on its device)."""
        self._place(x2d.device)
        if self.projects and (self.principal_due or self.random_due):
            self._refresh(x2d)

    def _place(self, device: torch.device) -> None:
        if self._keys is None:  # a Compressor built by hand: apply_prac calls set_rank at setup
            self.set_rank(self.data_rank())
        if self._keys.device != device:  # first use on this device: traced, a copy, no host sync
            self._keys = self._keys.to(device)
            self.draws, self.roundings = self.draws.to(device), self.roundings.to(device)

    @torch.no_grad()
    def _refresh(self, x2d: torch.Tensor) -> None:
        if self.principal_due:
            x, ok = finite_scaled(x2d)
            q1, energy = self._principal(x)
            # A batch with inf/nan keeps the previous basis (device-side select, no host sync); a first
            # refresh has none, and takes the basis of the batch's finite part (still orthonormal).
            if self.q1 is not None and self.q1.shape == q1.shape:
                q1 = torch.where(ok, q1, self.q1.to(q1.device))
                if self.energy is not None:
                    energy = torch.where(ok, energy, self.energy.to(energy.device))
            bad = (~ok).to(torch.int64)
            self.nonfinite_refreshes = bad if self.nonfinite_refreshes is None else self.nonfinite_refreshes + bad
            self.q1, self.energy, self.batch_energy = q1, energy, None
            self.principal_due = False
            self.random_due = True  # Q2 must live in the complement of the new Q1
        if self.random_due:
            q1 = self.q1.to(x2d.device).contiguous()
            key = rounding_key(self._keys[1], self.draws)
            q2 = random_complement_basis(q1, self.n, self.r2, key) if self.r2 else q1.new_zeros(self.n, 0)
            self._bind(q1, q2, x2d.device)
            self.draws.add_(1)
            self.random_due = False
        self._renew_epoch()

    def _principal(self, x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # Adaptive first: an r1 it once set to 0 must be re-chosen at the next refresh, not kept.
        if self.adaptive != "off":
            return self._adaptive_principal(x2d)
        if self.r1 == 0:
            return x2d.new_zeros(self.n, 0, dtype=torch.float32), x2d.new_zeros((), dtype=torch.float32)
        if self.solver == "randomized":
            from prac_dist.kernels import captured_energy, randomized_principal_basis

            q_prev = None if self.q1 is None else self.q1.contiguous()
            q1 = randomized_principal_basis(x2d, self.r1, q_prev=q_prev)
            q1, _ = torch.linalg.qr(q1)  # same orthonormality as the exact path: full rank stays exact
            return q1, captured_energy(x2d, q1)
        return principal_basis(x2d, self.r1)

    @torch.compiler.disable  # r1 is chosen on the host from the spectrum: a sync, and an int compiled code guards on
    def _adaptive_principal(self, x2d: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        evals, evecs = spectrum(x2d)
        if self.adaptive == "global" and not self.followup:
            self.curve = variance_curve(evals, self.n)[0]
        self.followup = False
        policy = "min_variance" if self.adaptive == "global" else self.adaptive
        self.r1 = choose_r1(evals, self.budget, policy, self.adaptive_energy)
        self.r2 = self.budget - self.r1
        return top_basis(evals, evecs, self.r1)

    # ---- projection -------------------------------------------------------------------------
    def _bind(self, q1: torch.Tensor, q2: torch.Tensor, device: torch.device) -> None:
        """Hold the basis once, [Q1 | Q2] in float32 on `device`, and make q1 and q2 views of it.

        One copy, 4·n·(r1 + r2) bytes for the whole run (prac_dist.planner.activations.basis_bytes); every
        other form (q_fwd's [Q1 | c Q2]) is built per call.
        """
        self._back = torch.cat([q1, q2], dim=1).to(device=device, dtype=torch.float32)
        r1 = q1.shape[1]
        self.q1, self.q2 = self._back[:, :r1], self._back[:, r1:]

    def q_fwd(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """[Q1 | c Q2] in `dtype`, built from the held basis at each call and freed after the projection:
        n x r elementwise work beside the projection's N x n x r multiply-adds (N tokens)."""
        q = self.q_back(device)
        r1 = self.q1.shape[1]
        return torch.cat([q[:, :r1], self.c * q[:, r1:]], dim=1).to(dtype)

    def q_back(self, device: torch.device) -> torch.Tensor:
        """[Q1 | Q2] in float32: the basis the stored coordinates are expanded in."""
        if self._back is None or self._back.device != device:
            self._bind(self.q1, self.q2, device)
        return self._back

    @torch.compiler.disable  # host hashing; apply_prac calls it at setup, so a compiled step never does
    def set_rank(self, rank: int) -> None:
        """The data-parallel rank whose data this compressor sees, and the base keys of its random draws:
        host hashes of (seed, group, "round", rank) for the int8 roundings and (seed, group, rank or 0 with
        per_rank_random off) for the Q2 draws, as int64 [2, 2] (32-bit words), made once."""
        self.dp_rank = rank
        words = []
        for parts in (("round", rank), (rank if self.per_rank_random else 0,)):
            h = _seed(self.seed, self.name, *parts)
            words.append([h & 0xFFFFFFFF, h >> 32])
        device = self._keys.device if self._keys is not None else self.draws.device
        self._keys = torch.tensor(words, dtype=torch.int64, device=device)

    @torch.no_grad()
    def next_seed(self) -> torch.Tensor:
        """Key (int64 [2], on the device) of the next int8 stochastic rounding: a hash of (base key, count).

        The count is incremented in place on the device: no host value, so torch.compile traces it and a
        resumed run (the count is in state_dict) rounds as an uninterrupted one. Call refresh() first (it puts
        the keys on the data's device).
        """
        self.roundings.add_(1)
        return rounding_key(self._keys[0], self.roundings)

    def data_rank(self) -> int:
        """The rank whose data this compressor sees (fixed at apply_prac, or at first use)."""
        if self.dp_rank is None:
            from prac_dist.distributed import rank_world

            self.dp_rank = rank_world()[0]
        return self.dp_rank

    @torch.no_grad()
    def compress(self, x2d: torch.Tensor, seed: Optional[torch.Tensor] = None) -> tuple:
        """Stored form of x2d: (Z,) at 16 bits, (int8 codes, float32 row scales) of Z at 8 bits, or of X for int8.

        seed: the rounding's key from next_seed(), taken before an autograd.Function's forward (a counter
        mutated inside one would not trace); None takes the next one here.
        """
        from prac_dist.core.storage import pack, pack_int8, pack_projected, project

        if self.rounds and seed is None:
            self._place(x2d.device)
            seed = self.next_seed()
        if not self.projects:
            return pack_int8(x2d, self.kernel, seed)
        if self.schedule != "drift":
            return pack(x2d, self.q_fwd(torch.float32, x2d.device), self.storage_bits, self.kernel, seed)
        z = project(x2d, self.q_fwd(torch.float32, x2d.device), self.kernel)
        # The drift trigger's share from X·Q1 in hand: ‖Z[:, :r1]‖² / ‖X‖² costs O(N·n), no matmul.
        x = x2d.float()
        self.batch_energy = energy_share(z[:, :self.r1].float().pow(2).sum(), x.pow(2).sum())
        return pack_projected(z, self.storage_bits, self.kernel, seed)

    def compress_shared(self, x: torch.Tensor, x2d: torch.Tensor) -> tuple:
        """Compress once per input tensor: q/k/v (gate/up) calls with the same x reuse one Z.

        The stored form rides on x itself (attribute `_prac_stored`, with this compressor's epoch, renewed at
        every step, refresh and load), so it lives exactly as long as x (and as autograd's saved copy):
        nothing in prac_dist holds a Z or an x, and Dynamo traces the attribute (a weakref cache it cannot).
        An x passed again after step() or a refresh is compressed again. x must not change in place
        between the sibling calls.
        """
        stored = getattr(x, _STORED_ATTR, None)
        if stored is not None and stored[0] is self._epoch:  # this compressor, this step, this basis
            return stored[1]
        packed = self.compress(x2d)
        setattr(x, _STORED_ATTR, (self._epoch, packed))
        return packed

    def decompress(self, packed: tuple, dtype: torch.dtype) -> torch.Tensor:
        """X~ = Z [Q1 | Q2]ᵀ (N x n): only nonlinear layers need it, and only in backward."""
        from prac_dist.core.storage import unpack

        if not self.projects:
            return unpack(packed, dtype, self.kernel)
        z = unpack(packed, torch.float32, self.kernel)
        return (z @ self.q_back(z.device).t()).to(dtype)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "n": self.n, "r1": self.r1, "r2": self.r2, "budget": self.budget, "followup": self.followup,
            "draws": int(self.draws), "storage": self.storage, "roundings": int(self.roundings),
            "nonfinite_refreshes": 0 if self.nonfinite_refreshes is None else int(self.nonfinite_refreshes),
            "principal_due": self.principal_due, "random_due": self.random_due,
            "energy": None if self.energy is None else float(self.energy),
            "q1": None if self.q1 is None else self.q1.detach().cpu().clone(),
            "q2": None if self.q2 is None else self.q2.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict, device: Optional[torch.device] = None) -> None:
        if state.get("storage", "project") != self.storage:
            raise ValueError(f"PRAC state for {self.name}: storage={state.get('storage', 'project')!r} in the "
                             f"checkpoint, {self.storage!r} in this model (linear_storage / nonlinear_storage "
                             f"must match the saved run)")
        # Adaptive ranks move r1/r2 at every refresh; only their sum (the stored bytes) is fixed.
        keys = ("n", "r1", "r2") if self.adaptive == "off" else ("n",)
        budget = state["budget"] if self.adaptive == "global" else self.budget
        if self.adaptive != "off" and state["r1"] + state["r2"] != budget:
            raise ValueError(f"PRAC state for {self.name}: r1 + r2 = {state['r1'] + state['r2']} in the checkpoint, "
                             f"{budget} in this model (the PRACConfig ratios must match the saved run)")
        for key in keys:
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"PRAC state for {self.name}: {key}={state[key]} in the checkpoint, "
                    f"{getattr(self, key)} in this model (the PRACConfig ratios must match the saved run)"
                )
        self.r1, self.r2 = int(state["r1"]), int(state["r2"])
        if self.adaptive == "global":  # its budget moves too; the model's total is checked by the caller
            self.budget, self.followup = int(state["budget"]), bool(state["followup"])
        # Counters go where they were (refresh() moves them with the keys); the checkpoint holds them as ints.
        self.draws = torch.tensor(int(state["draws"]), dtype=torch.int64, device=self.draws.device)
        self.roundings = torch.tensor(int(state.get("roundings", 0)), dtype=torch.int64, device=self.draws.device)
        self.principal_due, self.random_due = bool(state["principal_due"]), bool(state["random_due"])
        self.energy = None if state["energy"] is None else torch.tensor(float(state["energy"]))
        self.nonfinite_refreshes = torch.tensor(int(state.get("nonfinite_refreshes", 0)))
        self.q1 = None if state["q1"] is None else state["q1"].to(device or "cpu")
        self.q2 = None if state["q2"] is None else state["q2"].to(device or "cpu")
        self._back = None
        if self.q1 is not None and self.q2 is not None:
            self._bind(self.q1, self.q2, self.q1.device)
        self._renew_epoch()
