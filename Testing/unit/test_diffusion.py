"""Diffusion maths: schedule, DDIM, EDICT, classifier-free guidance and the samplers."""

from __future__ import annotations

import math

import pytest
import torch

from brainldm.diffusion.ddim import ddim_inversion_step, ddim_step, predict_x0
from brainldm.diffusion.edict import (
    edict_coefficients,
    edict_generation_step,
    edict_inversion_step,
    leapfrog_x_first,
)
from brainldm.diffusion.guidance import (
    GuidedNoise,
    batched_guided_noise,
    composed_guided_noise,
    guided_noise,
    make_noise_fn,
)
from brainldm.diffusion.sampler import (
    Cancelled,
    SamplerSettings,
    chain_callbacks,
    final_latent,
    generate,
    invert,
)
from brainldm.diffusion.schedule import NoiseSchedule, ScheduleConfig, timestep_pairs
from brainldm.errors import SettingsError

SHAPE = (2, 3, 5, 6, 4)  # (B, C, X, Y, Z) latent


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


class NonlinearNoiseModel:
    """A fixed random, nonlinear, time- and label-dependent 'denoiser': tanh(conv3d(z) + time + label)."""

    def __init__(self, channels: int = 3, seed: int = 0, dtype=torch.float64) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = (torch.randn(channels, channels, 3, 3, 3, generator=g) / math.sqrt(27 * channels)).to(dtype)
        self.label_bias = torch.randn(3, channels, generator=g).to(dtype) * 0.3
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __call__(self, z: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        self.batch_sizes.append(z.shape[0])
        assert t.dtype == torch.long and labels.dtype == torch.long
        assert t.shape == labels.shape == (z.shape[0],)
        h = torch.nn.functional.conv3d(z, self.weight.to(z.dtype), padding=1)
        time = torch.sin(t.to(z.dtype) / 97.0).reshape(-1, 1, 1, 1, 1)
        bias = self.label_bias.to(z.dtype)[labels].reshape(z.shape[0], -1, 1, 1, 1)
        return torch.tanh(1.5 * h + time + bias)


def unconditional(model: NonlinearNoiseModel, label: int = 2):
    return lambda z, t: model(z, torch.full((z.shape[0],), t, dtype=torch.long), torch.full((z.shape[0],), label))


# --------------------------------------------------------------------------- schedule


def test_linear_schedule_matches_thesis_and_monai(schedule):
    from monai.networks.schedulers import DDPMScheduler

    assert schedule.alphas_cumprod.dtype == torch.float64
    assert schedule.betas[0].item() == pytest.approx(1e-4) and schedule.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(schedule.alphas_cumprod, torch.cumprod(1 - schedule.betas, 0))
    monai = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta")
    assert torch.allclose(schedule.alphas_cumprod.float(), monai.alphas_cumprod, rtol=1e-5, atol=1e-7)
    scaled = NoiseSchedule(beta_start=0.0015, beta_end=0.0195, kind="scaled_linear")
    monai_scaled = DDPMScheduler(schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    assert torch.allclose(scaled.alphas_cumprod.float(), monai_scaled.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert schedule.alpha_bar(-1) == 1.0
    assert schedule.alpha_bar(999) == pytest.approx(float(schedule.alphas_cumprod[-1]))
    with pytest.raises(ValueError):
        schedule.alpha_bar(1000)


def test_schedule_config_round_trip_and_validation():
    s = NoiseSchedule(500, 2e-4, 0.03, "linear")
    s2 = NoiseSchedule.from_config(s.to_dict())
    assert torch.equal(s.alphas_cumprod, s2.alphas_cumprod)
    with pytest.raises(SettingsError):
        ScheduleConfig(kind="cosine").validate()
    with pytest.raises(SettingsError):
        NoiseSchedule(beta_start=0.1, beta_end=0.01)


def test_add_noise_eq_2_13(schedule):
    from monai.networks.schedulers import DDPMScheduler

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ab = schedule.alpha_bar(400)
    assert torch.allclose(schedule.add_noise(x0, eps, 400), math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps)
    t = torch.tensor([10, 900])
    xt = schedule.add_noise(x0, eps, t)
    for i in range(2):
        assert torch.allclose(xt[i], schedule.add_noise(x0[i : i + 1], eps[i : i + 1], int(t[i]))[0])
    monai = DDPMScheduler(num_train_timesteps=1000, schedule="linear_beta")
    ref = monai.add_noise(x0.float(), eps.float(), t)
    assert torch.allclose(xt.float(), ref, atol=1e-5)


def test_timestep_pairs():
    assert timestep_pairs(4, 1000) == [(750, 500), (500, 250), (250, 0), (0, -1)]
    assert timestep_pairs(1, 1000) == [(0, -1)]
    pairs = timestep_pairs(100, 1000)
    assert len(pairs) == 100 and pairs[0] == (990, 980) and pairs[-1] == (0, -1)
    assert all(a[1] == b[0] for a, b in zip(pairs, pairs[1:]))
    assert timestep_pairs(600, 1000)[0] == (599, 598)
    assert timestep_pairs(1000, 1000)[0] == (999, 998)
    for bad in (0, 1001):
        with pytest.raises(SettingsError):
            timestep_pairs(bad, 1000)


# --------------------------------------------------------------------------- DDIM


def test_ddim_step_matches_monai_eq_2_33(schedule):
    from monai.networks.schedulers import DDIMScheduler

    g = torch.Generator().manual_seed(2)
    z = torch.randn(SHAPE, generator=g)
    eps = torch.randn(SHAPE, generator=g)
    monai = DDIMScheduler(num_train_timesteps=1000, schedule="linear_beta", clip_sample=False)
    monai.set_timesteps(50)
    for t, t_prev in [(980, 960), (500, 480), (0, -1)]:
        ref, ref_x0 = monai.step(eps, t, z)
        ours = ddim_step(z, eps, schedule.alpha_bar(t), schedule.alpha_bar(t_prev))
        assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
        assert torch.allclose(predict_x0(z, eps, schedule.alpha_bar(t)), ref_x0, atol=1e-4, rtol=1e-5)


def test_ddim_inversion_step_inverts_with_the_same_eps(schedule):
    g = torch.Generator().manual_seed(3)
    z = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    a_t, a_prev = schedule.alpha_bar(500), schedule.alpha_bar(490)
    up = ddim_inversion_step(z, eps, a_prev, a_t)
    assert torch.allclose(ddim_step(up, eps, a_t, a_prev), z, atol=1e-12)
    # Eq. 2.47 written out
    expected = math.sqrt(a_t) * (z - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev) + math.sqrt(1 - a_t) * eps
    assert torch.allclose(up, expected)


@pytest.mark.parametrize("num_steps", [10, 50])
def test_ddim_with_exact_noise_reproduces_x0(schedule, num_steps):
    """With the true noise of a known x0, eps(z, t) = (z - sqrt(abar_t) x0) / sqrt(1 - abar_t), DDIM lands on x0."""
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t_top = timestep_pairs(num_steps)[0][0]
    z_top = schedule.add_noise(x0, noise, t_top)

    def exact_eps(z, t):
        ab = schedule.alpha_bar(t)
        return (z - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    out = generate(z_top, exact_eps, schedule, SamplerSettings(method="ddim", num_steps=num_steps))
    assert (out - x0).abs().max() < 1e-10
    assert not torch.allclose(z_top, x0)
    # and DDIM inversion with the same exact noise lands on z_top
    assert (invert(x0, lambda z, t: noise, schedule, SamplerSettings("ddim", num_steps)) - z_top).abs().max() < 1e-10


@pytest.mark.parametrize("leapfrog", [True, False])
def test_edict_equals_ddim_for_latent_independent_noise(schedule, leapfrog):
    """If eps depends on t only, x and y stay equal and EDICT reduces to DDIM (Eq. 2.50-2.53)."""
    g = torch.Generator().manual_seed(20)
    table = {t: torch.randn(SHAPE, generator=g, dtype=torch.float64) for t, _ in timestep_pairs(8)}
    eps_fn = lambda z, t: table[t]  # noqa: E731
    zT = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ddim = generate(zT, eps_fn, schedule, SamplerSettings("ddim", 8))
    x, y = generate(zT, eps_fn, schedule, SamplerSettings("edict", 8, 0.93, leapfrog))
    assert (x - ddim).abs().max() < 1e-12 and (y - ddim).abs().max() < 1e-12


# --------------------------------------------------------------------------- EDICT


def test_edict_coefficients_reproduce_ddim(schedule):
    a_t, a_prev = schedule.alpha_bar(700), schedule.alpha_bar(680)
    a, b = edict_coefficients(a_t, a_prev)
    assert a == pytest.approx(math.sqrt(a_prev / a_t))
    assert b == pytest.approx(math.sqrt(1 - a_prev) - math.sqrt(a_prev * (1 - a_t) / a_t))  # Eq. 2.52
    g = torch.Generator().manual_seed(5)
    z, eps = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    assert torch.allclose(a * z + b * eps, ddim_step(z, eps, a_t, a_prev), atol=1e-12)  # Eq. 2.50


@pytest.mark.parametrize("x_first", [True, False])
def test_edict_single_step_is_exactly_invertible(schedule, x_first):
    model = NonlinearNoiseModel()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps_at = lambda z: unconditional(model)(z, 300)  # noqa: E731
    a_t, a_prev = schedule.alpha_bar(300), schedule.alpha_bar(280)
    gx, gy = edict_generation_step(x, y, eps_at, a_t, a_prev, 0.93, x_first)
    ix, iy = edict_inversion_step(gx, gy, eps_at, a_t, a_prev, 0.93, x_first)
    assert (ix - x).abs().max() < 1e-12 and (iy - y).abs().max() < 1e-12
    # undoing with the other order is not an inverse: the flag matters
    wx, _ = edict_inversion_step(gx, gy, eps_at, a_t, a_prev, 0.93, not x_first)
    assert (wx - x).abs().max() > 1e-6


def test_leapfrog_alternates():
    assert [leapfrog_x_first(i) for i in range(4)] == [True, False, True, False]
    assert all(leapfrog_x_first(i, leapfrog=False) for i in range(4))


@pytest.mark.parametrize(
    "omega, num_steps, leapfrog",
    [(0.91, 10, True), (0.97, 10, True), (0.99, 10, True), (0.91, 100, True), (0.97, 100, True),
     (0.99, 100, True), (0.97, 37, True), (0.93, 50, False)],
)
def test_edict_round_trip_exact_with_nonlinear_model(schedule, omega, num_steps, leapfrog):
    model = NonlinearNoiseModel(seed=7)
    eps_fn = unconditional(model)
    g = torch.Generator().manual_seed(8)
    z0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    settings = SamplerSettings("edict", num_steps, omega, leapfrog)
    zT = invert(z0, eps_fn, schedule, settings)
    assert isinstance(zT, tuple) and (zT[0] - z0).abs().max() > 0.1  # it did move
    x, y = generate(zT, eps_fn, schedule, settings)
    err = max((x - z0).abs().max().item(), (y - z0).abs().max().item())
    print(f"EDICT round trip, omega={omega}, N={num_steps}, leapfrog={leapfrog}: max error {err:.2e}")
    # leapfrog keeps the round trip well-conditioned (without it omega = 0.91, N = 100 reached 2.5e-10)
    assert err < (1e-10 if leapfrog else 1e-9)


@pytest.mark.parametrize("num_steps", [10, 100])
def test_ddim_round_trip_is_approximate(schedule, num_steps, capsys):
    model = NonlinearNoiseModel(seed=7)
    eps_fn = unconditional(model)
    g = torch.Generator().manual_seed(8)
    z0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    ddim = SamplerSettings("ddim", num_steps)
    zT = invert(z0, eps_fn, schedule, ddim)
    assert isinstance(zT, torch.Tensor)
    ddim_err = (generate(zT, eps_fn, schedule, ddim) - z0).abs().max().item()
    edict = SamplerSettings("edict", num_steps, 0.97)
    edict_err = (final_latent(generate(invert(z0, eps_fn, schedule, edict), eps_fn, schedule, edict)) - z0)
    edict_err = edict_err.abs().max().item()
    with capsys.disabled():
        print(f"\nround-trip max error, N={num_steps}, float64: DDIM {ddim_err:.3e}  EDICT {edict_err:.3e}")
    assert ddim_err > 1e-6
    assert ddim_err > 1e4 * edict_err


def test_edict_round_trip_float32(schedule, capsys):
    model = NonlinearNoiseModel(seed=7, dtype=torch.float32)
    eps_fn = unconditional(model)
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))
    settings = SamplerSettings("edict", 50, 0.97)
    x, _ = generate(invert(z0, eps_fn, schedule, settings), eps_fn, schedule, settings)
    err = (x - z0).abs().max().item()
    with capsys.disabled():
        print(f"\nEDICT round trip float32, N=50, omega=0.97: max error {err:.2e}")
    assert err < 1e-2


# --------------------------------------------------------------------------- guidance


def test_guided_noise_eq_2_45():
    g = torch.Generator().manual_seed(10)
    cond, null = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    assert torch.equal(guided_noise(cond, null, 0.0), cond)
    assert torch.allclose(guided_noise(cond, null, 5.0), 6.0 * cond - 5.0 * null)
    assert torch.allclose(guided_noise(cond, null, 3.0) - cond, 3.0 * (cond - null))


def test_composed_guidance_adds_one_term_per_condition():
    g = torch.Generator().manual_seed(13)
    cond, null, healthy = (torch.randn(SHAPE, generator=g) for _ in range(3))
    assert torch.equal(composed_guided_noise(cond), cond)
    assert torch.allclose(composed_guided_noise(cond, (null, 5.0)), guided_noise(cond, null, 5.0))
    both = composed_guided_noise(cond, (null, 2.0), (healthy, 3.0))
    assert torch.allclose(both, cond + 2.0 * (cond - null) + 3.0 * (cond - healthy))
    with pytest.raises(ValueError):
        composed_guided_noise(cond, (null[:1], 1.0))


def test_batched_guidance_is_one_call_and_matches_separate_calls():
    model = NonlinearNoiseModel(seed=11)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    start = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    seen = {}

    def model_with_position(z, t, labels, start=None, extent=None):
        seen["start"], seen["extent"] = start, extent
        return model(z, t, labels)

    out = batched_guided_noise(model_with_position, z, 250, label=0, null_label=2, scale=5.0,
                               model_kwargs={"start": start, "extent": 7.0})
    assert model.calls == 1 and model.batch_sizes == [4]
    assert torch.equal(seen["start"], torch.cat([start, start])) and seen["extent"] == 7.0
    cond = unconditional(model, label=0)(z, 250)
    null = unconditional(model, label=2)(z, 250)
    assert torch.allclose(out.eps, 6.0 * cond - 5.0 * null, atol=1e-12)
    assert torch.allclose(out.pseudo_gradient, cond - null, atol=1e-12)


def test_make_noise_fn_guidance_zero_equals_conditional():
    model = NonlinearNoiseModel(seed=13)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    cond = unconditional(model, label=0)(z, 100)
    plain = make_noise_fn(model, label=0, null_label=2, scale=0.0)(z, 100)
    assert torch.allclose(plain.eps, cond) and plain.pseudo_gradient is None
    calls = model.calls
    with_pg = make_noise_fn(model, label=0, null_label=2, scale=0.0, with_pseudo_gradient=True)(z, 100)
    assert model.calls == calls + 1  # still one batched call
    assert torch.allclose(with_pg.eps, cond, atol=1e-12)
    assert torch.allclose(with_pg.pseudo_gradient, cond - unconditional(model, label=2)(z, 100), atol=1e-12)
    inversion = make_noise_fn(model, label=2, null_label=2, scale=5.0)(z, 100)
    assert model.batch_sizes[-1] == SHAPE[0]  # null label: no second branch
    assert torch.allclose(inversion.eps, unconditional(model, label=2)(z, 100))


def test_make_noise_fn_casts_to_model_dtype():
    model = NonlinearNoiseModel(seed=15, dtype=torch.float32)
    seen = []

    def float32_model(z, t, labels):
        seen.append(z.dtype)
        return model(z, t, labels)

    z = torch.randn(SHAPE, dtype=torch.float64)
    out = make_noise_fn(float32_model, 0, 2, scale=2.0, model_dtype=torch.float32)(z, 10)
    assert seen == [torch.float32] and out.eps.dtype == torch.float64 and out.pseudo_gradient.dtype == torch.float64


# --------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("method", ["ddim", "edict"])
def test_callbacks_see_every_step_with_pseudo_gradient(schedule, method):
    model = NonlinearNoiseModel(seed=16)
    z0 = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(17))
    settings = SamplerSettings(method, 5, 0.95)
    log = []
    record = lambda i, n, t, info: log.append((i, n, t, info.direction, info.t_prev, info.pseudo_gradient))  # noqa
    zT = invert(z0, make_noise_fn(model, 2, 2), schedule, settings, callback=record)
    assert [(e[0], e[2], e[3], e[4]) for e in log] == [
        (0, 0, "invert", -1), (1, 200, "invert", 0), (2, 400, "invert", 200), (3, 600, "invert", 400),
        (4, 800, "invert", 600)]
    assert all(e[5] is None for e in log)
    log.clear()
    counter = []
    cb = chain_callbacks(record, None, lambda *a: counter.append(1))
    generate(zT, make_noise_fn(model, 0, 2, scale=5.0), schedule, settings, callback=cb)
    assert [e[2] for e in log] == [800, 600, 400, 200, 0] and all(e[1] == 5 for e in log)
    assert len(counter) == 5
    assert all(e[5] is not None and e[5].shape == SHAPE for e in log)
    # DDIM: the recorded pseudo-gradient is exactly eps(healthy) - eps(null) at the step's latent
    if method == "ddim":
        z = zT
        for (t, t_prev), entry in zip(timestep_pairs(5), log):
            cond, null = unconditional(model, 0)(z, t), unconditional(model, 2)(z, t)
            assert torch.allclose(entry[5], cond - null, atol=1e-12)
            z = ddim_step(z, 6 * cond - 5 * null, schedule.alpha_bar(t), schedule.alpha_bar(t_prev))


def test_cancel_stops_sampling(schedule):
    model = NonlinearNoiseModel()
    steps = []
    with pytest.raises(Cancelled):
        generate(torch.randn(SHAPE), unconditional(model), schedule, SamplerSettings("edict", 10),
                 callback=lambda i, *a: steps.append(i), cancel=lambda: len(steps) >= 3)
    assert steps == [0, 1, 2]


def test_guidance_changes_generation(schedule):
    model = NonlinearNoiseModel(seed=18)
    zT = torch.randn(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(19))
    settings = SamplerSettings("edict", 10, 0.97)
    plain = final_latent(generate(zT, make_noise_fn(model, 0, 2, 0.0), schedule, settings))
    guided = final_latent(generate(zT, make_noise_fn(model, 0, 2, 5.0), schedule, settings))
    assert (plain - guided).abs().max() > 1e-3


def test_timestep_pairs_with_a_noise_level():
    # L = 400 in 4 steps: stride 100, the inversion stops at t = 300
    assert timestep_pairs(4, 1000, noise_level=400) == [(300, 200), (200, 100), (100, 0), (0, -1)]
    # N = L: unit steps up to t = L - 1 (the thesis' "N encoding steps" read as the noise level)
    pairs = timestep_pairs(500, 1000, noise_level=500)
    assert pairs[0] == (499, 498) and pairs[-1] == (0, -1) and len(pairs) == 500
    assert timestep_pairs(50, 1000, noise_level=1000) == timestep_pairs(50, 1000)
    for steps, level in ((5, 4), (1, 0), (1, 1001)):
        with pytest.raises(SettingsError):
            timestep_pairs(steps, 1000, noise_level=level)


@pytest.mark.parametrize("method", ["edict", "ddim"])
def test_partial_inversion_reaches_the_noise_level_and_edict_still_round_trips(schedule, method):
    model = NonlinearNoiseModel(seed=7)
    eps_fn = unconditional(model)
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    seen = []
    settings = SamplerSettings(method, 20, 0.97, noise_level=300)
    zT = invert(z0, eps_fn, schedule, settings, callback=lambda i, n, t, info: seen.append(t))
    assert max(seen) == 285  # (N - 1) * (L // N)
    full = invert(z0, eps_fn, schedule, SamplerSettings(method, 20, 0.97))
    # a partly noised latent stays closer to the input than one noised all the way
    part_x, full_x = (v[0] if isinstance(v, tuple) else v for v in (zT, full))
    assert (part_x - z0).abs().mean() < (full_x - z0).abs().mean()
    if method == "edict":
        x, _ = generate(zT, eps_fn, schedule, settings)
        assert (x - z0).abs().max().item() < 1e-10


def test_sampler_settings_validation(schedule):
    for bad in (SamplerSettings("ddpm"), SamplerSettings(num_steps=0), SamplerSettings(omega=0.0),
                SamplerSettings(omega=1.5), SamplerSettings(num_steps=50, noise_level=40),
                SamplerSettings(noise_level=0), SamplerSettings(noise_level=2000)):
        with pytest.raises(SettingsError):
            bad.validate()
    with pytest.raises(TypeError):
        generate(torch.zeros(SHAPE), lambda z, t: "nope", schedule, SamplerSettings("ddim", 2))
    # a GuidedNoise without pseudo-gradient is accepted; its eps is what the step uses
    out = generate(torch.zeros(SHAPE), lambda z, t: GuidedNoise(torch.zeros_like(z)), schedule,
                   SamplerSettings("ddim", 2))
    assert torch.equal(out, torch.zeros(SHAPE))
