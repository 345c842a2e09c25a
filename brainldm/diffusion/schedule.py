"""Forward-process noise schedule and the timestep grid of deterministic samplers.

The forward process (thesis Eq. 2.10) adds Gaussian noise with variance ``beta_t``; its
closed form (Eq. 2.12/2.13) is ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with
``abar_t = prod_{s<=t} (1 - beta_s)``.

The thesis uses a linear schedule with ``T = 1000`` (Table 3.2) from ``beta_1 = 1e-4`` to
``beta_T = 0.02`` (Ho et al. 2020, thesis §2.3.2). The 2D models' tables (B.1, B.7) say
"linear scaled": guided-diffusion's linear schedule whose end points are multiplied by
``1000 / T``, which is the same schedule at ``T = 1000``. ``kind="scaled_linear"`` is the
Stable-Diffusion/MONAI LDM variant (linear in ``sqrt(beta)``), kept for models trained
with it.

Timesteps are 0-based as in MONAI/diffusers: ``t`` in ``[0, T)``, and ``t = -1`` stands for
the clean data (``abar = 1``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from brainldm.errors import SettingsError

SCHEDULE_KINDS = ("linear", "scaled_linear")


@dataclass(frozen=True)
class ScheduleConfig:
    """Serialisable description of a :class:`NoiseSchedule` (stored in model bundles)."""

    kind: str = "linear"
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 2e-2

    def validate(self) -> "ScheduleConfig":
        if self.kind not in SCHEDULE_KINDS:
            raise SettingsError(f"noise schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if int(self.num_train_timesteps) < 2:
            raise SettingsError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise SettingsError(
                f"betas must satisfy 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ScheduleConfig":
        known = {k: data[k] for k in ("kind", "num_train_timesteps", "beta_start", "beta_end") if k in data}
        return cls(**known).validate()


class NoiseSchedule:
    """Variance schedule ``beta_t`` and cumulative products ``abar_t`` in float64 (Eq. 2.10-2.13).

    Parameters mirror :class:`ScheduleConfig`; ``NoiseSchedule.from_config(cfg)`` builds one
    from a stored config. All tensors live on the CPU in float64: the samplers read Python
    floats from them (:meth:`alpha_bar`), so the arithmetic precision follows the latents.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        kind: str = "linear",
    ) -> None:
        self.config = ScheduleConfig(kind, int(num_train_timesteps), float(beta_start), float(beta_end)).validate()
        T = self.config.num_train_timesteps
        if kind == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        else:  # scaled_linear: linear in sqrt(beta)
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @classmethod
    def from_config(cls, config: ScheduleConfig | dict) -> "NoiseSchedule":
        if isinstance(config, dict):
            config = ScheduleConfig.from_dict(config)
        return cls(config.num_train_timesteps, config.beta_start, config.beta_end, config.kind)

    def to_dict(self) -> dict:
        return self.config.to_dict()

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        c = self.config
        return f"NoiseSchedule(kind={c.kind!r}, T={c.num_train_timesteps}, beta={c.beta_start}..{c.beta_end})"

    def alpha_bar(self, t: int) -> float:
        """``abar_t`` as a Python float; ``t = -1`` is the clean data (``abar = 1``)."""
        t = int(t)
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep {t} outside [-1, {self.num_train_timesteps})")
        return float(self.alphas_cumprod[t])

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """Sample ``x_t`` from ``q(x_t | x_0)`` (Eq. 2.12) by reparametrisation (Eq. 2.13).

        ``x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps``. ``t`` is an int (same step for
        the whole batch) or a ``(B,)`` integer tensor (one step per sample).
        """
        if x0.shape != eps.shape:
            raise ValueError(f"x0 {tuple(x0.shape)} and eps {tuple(eps.shape)} must have the same shape")
        if isinstance(t, torch.Tensor) and t.ndim > 0:
            t_cpu = t.detach().to("cpu", torch.long)
            if t_cpu.shape[0] != x0.shape[0]:
                raise ValueError(f"t has {t_cpu.shape[0]} entries for a batch of {x0.shape[0]}")
            if (t_cpu < 0).any() or (t_cpu >= self.num_train_timesteps).any():
                raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps})")
            abar = self.alphas_cumprod[t_cpu].to(device=x0.device, dtype=x0.dtype)
            abar = abar.reshape((-1,) + (1,) * (x0.ndim - 1))
            return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
        abar = self.alpha_bar(int(t))
        return abar**0.5 * x0 + (1.0 - abar) ** 0.5 * eps


def timestep_pairs(num_steps: int, num_train_timesteps: int = 1000,
                   noise_level: int | None = None) -> list[tuple[int, int]]:
    """Explicit ``(t, t_prev)`` pairs of an N-step DDIM/EDICT subsequence, in generation order.

    Timesteps are ``k * (L // N)`` for ``k = 0..N-1`` with ``L = T`` by default (the DDIM
    "uniform" subsequence of Song et al. 2021 used by MONAI/diffusers); each generation step
    goes from ``t`` to ``t_prev = t - L // N`` and the last goes to ``t_prev = -1``
    (``abar = 1``, the clean latent). Inversion walks the same pairs in reverse
    (``t_prev -> t``). Example, ``N = 4, T = 1000``: ``[(750, 500), (500, 250), (250, 0), (0, -1)]``.

    ``noise_level`` ``L < T`` stops the inversion part-way, at about timestep ``L`` (the noise
    level of Wolleb et al. 2022 and Sanchez et al. 2022, whose DDIM encodings use
    ``L`` = 400-600 of ``T`` = 1000, thesis §3.4.6): the input is only partly noised, so the
    anatomy survives and guidance edits what differs from healthy. ``N = L`` takes unit steps.

    When ``N`` does not divide ``L`` the highest timestep is ``(N - 1) * (L // N)``
    (e.g. ``N = 600`` reaches ``t = 599``), as in MONAI's scheduler.
    """
    num_steps = int(num_steps)
    T = int(num_train_timesteps)
    span = T if noise_level is None else int(noise_level)
    if not 1 <= span <= T:
        raise SettingsError(f"noise level L must be between 1 and {T} (the training timesteps), got {span}")
    if not 1 <= num_steps <= span:
        raise SettingsError(f"number of diffusion steps N must be between 1 and {span} (the noise level), "
                            f"got {num_steps}")
    stride = span // num_steps
    ts = [k * stride for k in range(num_steps)]
    pairs = []
    for k in range(num_steps - 1, -1, -1):
        pairs.append((ts[k], ts[k - 1] if k > 0 else -1))
    return pairs
