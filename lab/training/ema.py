"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models"), as the NAG paper uses it (App. D, sigma_rel = 0.05).

During training, a few power-function EMAs are tracked and snapshotted now and then. After
training, the EMA of any other width sigma_rel is reconstructed as the least-squares
combination of the snapshots whose averaging profiles best match the target profile.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """Exponent gamma of the power-function EMA whose relative width is sigma_rel.

    sigma_rel^2 = (g+1) / ((g+2)^2 (g+3)), i.e. g^3 + 7g^2 + (16 - s)g + (12 - s) = 0 with
    s = sigma_rel^-2; the largest real root is the answer.
    """
    s = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    return float(roots.real[np.abs(roots.imag) < 1e-9].max())


def power_ema_beta(step: int, gamma: float) -> float:
    """Decay for the `step`-th update (1-based): averages with weight ~ tau^gamma over [0, step]."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0)


class PowerEMA:
    """Power-function EMAs of a module's trainable tensors, one per gamma."""

    def __init__(self, module: torch.nn.Module, sigma_rels: tuple[float, ...] = (0.05, 0.10)):
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
        self.sigma_rels = tuple(sigma_rels)
        params = dict(module.named_parameters())
        self.averages = [{n: params[n].detach().float().clone() for n in self.names} for _ in self.gammas]
        self.step = 0

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.step += 1
        params = dict(module.named_parameters())
        for gamma, avg in zip(self.gammas, self.averages):
            beta = power_ema_beta(self.step, gamma)
            for n in self.names:
                avg[n].lerp_(params[n].detach().float(), 1.0 - beta)

    def snapshot(self) -> list[dict]:
        """One record per tracked gamma: the step, gamma, and a copy of the averages, in the
        CPU's memory (a run keeps 16 per gamma: on a GPU they held 32 copies of the network)."""
        return [{"step": self.step, "gamma": g, "params": {n: t.detach().to("cpu", copy=True) for n, t in avg.items()}}
                for g, avg in zip(self.gammas, self.averages)]

    def state_dict(self) -> dict:
        return {"step": self.step, "gammas": self.gammas, "averages": self.averages}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's averages, read onto the CPU, go where this run's are (the training
        device): left on the CPU, the first update after a resume on a GPU failed."""
        own = self.averages
        self.step, self.gammas = state["step"], list(state["gammas"])
        self.averages = [{n: t.to(own[0][n].device) for n, t in avg.items()} for avg in state["averages"]]


def _profile_inner(t1: float, g1: float, t2: float, g2: float) -> float:
    """Inner product of two power-function averaging profiles p(tau) = (g+1) tau^g / t^(g+1)."""
    m = min(t1, t2)
    return ((g1 + 1) * (g2 + 1) * m ** (g1 + g2 + 1)
            / ((g1 + g2 + 1) * t1 ** (g1 + 1) * t2 ** (g2 + 1)))


def posthoc_weights(snapshots: list[tuple[int, float]], sigma_rel: float, at_step: int | None = None) -> np.ndarray:
    """Least-squares weights of the snapshots (step, gamma) that best give the EMA of width
    `sigma_rel` at `at_step` (default: the last snapshot's step)."""
    steps = np.array([s for s, _ in snapshots], dtype=np.float64) / max(s for s, _ in snapshots)
    gammas = [g for _, g in snapshots]
    target_t = (at_step / max(s for s, _ in snapshots)) if at_step else 1.0
    target_g = sigma_rel_to_gamma(sigma_rel)
    n = len(snapshots)
    a = np.array([[_profile_inner(steps[i], gammas[i], steps[j], gammas[j]) for j in range(n)] for i in range(n)])
    b = np.array([_profile_inner(steps[i], gammas[i], target_t, target_g) for i in range(n)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def posthoc_ema(snapshots: list[dict], sigma_rel: float = 0.05) -> dict[str, torch.Tensor]:
    """Reconstruct the sigma_rel EMA parameters from snapshot records (PowerEMA.snapshot)."""
    return posthoc_average([(s["step"], s["gamma"]) for s in snapshots], snapshots, sigma_rel)


def posthoc_average(profiles: list[tuple[int, float]], snapshots: Iterable[dict],
                    sigma_rel: float = 0.05) -> dict[str, torch.Tensor]:
    """posthoc_ema of the snapshot records `snapshots`, whose (step, gamma) are `profiles`, in
    that order: read one at a time (from files, say), never all held at once."""
    weights = posthoc_weights(profiles, sigma_rel)
    total: dict[str, torch.Tensor] = {}
    for weight, snapshot in zip(weights, snapshots, strict=True):
        for name, tensor in snapshot["params"].items():
            term = float(weight) * tensor
            total[name] = total[name] + term if name in total else term
    return total
