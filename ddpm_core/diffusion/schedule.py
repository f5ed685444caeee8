"""The noise schedule of a DDPM and the closed forms that follow from it.

References:
    Ho, Jain and Abbeel (2020), "Denoising Diffusion Probabilistic Models",
    https://arxiv.org/abs/2006.11239 (equations numbered as in the paper).

Timestep convention, used everywhere in this package and the book:

    t = 0            the clean image x_0
    t = 1, ..., T    noisier and noisier images; x_T is (almost) pure noise

A timestep ``t`` is always the integer of the paper, never an index. The
per-step tensors (``betas``, ``alphas``, ``alpha_bars``, ``posterior_variance``)
have length T and hold the value for timestep ``t`` at index ``t - 1``.
``NoiseSchedule.at`` does that lookup for a batch of timesteps; the samplers, which step one
integer t at a time, read index ``t - 1`` themselves. ``NoiseSchedule.alpha_bar(t)`` is the one
lookup that also takes t = 0, where alpha_bar_0 = 1: the samplers that jump from any timestep to
any earlier one (DDIM, DPM-Solver++) land on t = 0 with it.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import Tensor

from ddpm_core.utils.errors import DDPMError


class NoiseSchedule:
    """The linear beta schedule of Ho et al. 2020 and its derived quantities.

    Args:
        num_steps: T, the number of diffusion steps.
        beta_start: beta_1, the variance added by the first step.
        beta_end: beta_T, the variance added by the last step.
    """

    def __init__(self, num_steps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> None:
        _check_linear_betas(num_steps, beta_start, beta_end)
        self.num_steps = num_steps
        self.beta_start = beta_start
        self.beta_end = beta_end
        # Computed in float64 and stored in float32: the cumulative product of
        # 1000 factors loses digits in float32 that the book's checks would see.
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        alphas = 1.0 - betas  # Ho et al. 2020, alpha_t := 1 - beta_t
        alpha_bars = torch.cumprod(alphas, dim=0)  # alpha_bar_t := prod_{s<=t} alpha_s
        # alpha_bar_{t-1} for t = 1..T, with alpha_bar_0 = 1 (the empty product)
        alpha_bar_0 = torch.ones(1, dtype=torch.float64)
        alpha_bars_prev = torch.cat([alpha_bar_0, alpha_bars[:-1]])
        # Ho et al. 2020, eq. (7):
        # beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t
        posterior_variance = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas
        # Ho et al. 2020, eq. (7): mu_tilde_t(x_t, x_0)'s coefficients of x_0 and x_t
        posterior_mean_coef_x0 = alpha_bars_prev.sqrt() * betas / (1.0 - alpha_bars)
        posterior_mean_coef_xt = (
            alphas.sqrt() * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
        )
        self.betas, self.alphas = betas.float(), alphas.float()
        self.alpha_bars = alpha_bars.float()
        self.alpha_bars_prev = alpha_bars_prev.float()
        self.posterior_variance = posterior_variance.float()
        self.posterior_mean_coef_x0 = posterior_mean_coef_x0.float()
        self.posterior_mean_coef_xt = posterior_mean_coef_xt.float()

    def __repr__(self) -> str:
        return f"NoiseSchedule(num_steps={self.num_steps}, beta_start={self.beta_start}, beta_end={self.beta_end})"

    def at(self, values: Tensor, t: Tensor | int, ndim: int = 4) -> Tensor:
        """Look up per-timestep ``values`` at timesteps ``t`` (1..T), shaped to broadcast.

        ``t`` may be an int or a 1-D tensor of a batch's timesteps; the result has
        shape (B, 1, ..., 1) with ``ndim`` dimensions so it multiplies a batch of images.
        """
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() and (int(t.min()) < 1 or int(t.max()) > self.num_steps):
            raise DDPMError(
                f"Timesteps must lie in 1..{self.num_steps} (t=0 is the clean image and has no "
                f"schedule value), got values from {int(t.min())} to {int(t.max())}."
            )
        out = values.to(t.device)[t - 1]
        return out.reshape(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) in one step, Ho et al. 2020, eq. (4):
        x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps."""
        alpha_bar = self.at(self.alpha_bars, t, x0.ndim).to(x0)
        return alpha_bar.sqrt() * x0 + (1.0 - alpha_bar).sqrt() * noise

    def posterior_mean(self, x0: Tensor, xt: Tensor, t: Tensor | int) -> Tensor:
        """The mean mu_tilde_t(x_t, x_0) of q(x_{t-1} | x_t, x_0):
        Ho et al. 2020, eq. (7)."""
        coef_x0 = self.at(self.posterior_mean_coef_x0, t, xt.ndim).to(xt)
        coef_xt = self.at(self.posterior_mean_coef_xt, t, xt.ndim).to(xt)
        return coef_x0 * x0 + coef_xt * xt

    def predict_x0(self, xt: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """Invert eq. (4) for x_0 given a noise estimate:
        x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        alpha_bar = self.at(self.alpha_bars, t, xt.ndim).to(xt)
        return (xt - (1.0 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()

    @cached_property
    def alpha_bars_f64(self) -> Tensor:
        """alpha_bar_t for t = 1..T in float64, from the float32 betas the network was trained with.

        DDIM and DPM-Solver++ need 1 - alpha_bar_t near t = 1, of which the float32 ``alpha_bars``
        keep only about 3 digits.
        """
        return torch.cumprod(1.0 - self.betas.double(), dim=0)

    def alpha_bar(self, t: int) -> float:
        """alpha_bar_t of one timestep t = 0..T, in float64 (``alpha_bars_f64``), with alpha_bar_0 = 1:
        the empty product, x_0 has no noise. The samplers that jump between any two timesteps read it here."""
        if not 0 <= t <= self.num_steps:
            raise DDPMError(f"alpha_bar_t needs a timestep in 0..{self.num_steps}, got {t}.")
        return 1.0 if t == 0 else self.alpha_bars_f64[t - 1].item()

    def signal_to_noise(self) -> Tensor:
        """SNR(t) = alpha_bar_t / (1 - alpha_bar_t), the ratio of signal to noise variance in x_t."""
        return self.alpha_bars / (1.0 - self.alpha_bars)


def _check_linear_betas(num_steps: int, beta_start: float, beta_end: float) -> None:
    if num_steps < 1:
        raise DDPMError(f"num_steps must be a positive integer, got {num_steps}.")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise DDPMError(
            f"Betas must satisfy 0 < beta_start <= beta_end < 1, "
            f"got beta_start={beta_start}, beta_end={beta_end}."
        )
