"""Samplers: determinism, exactness against an oracle denoiser, and step-by-step agreement with diffusers."""
from __future__ import annotations

import math
from fractions import Fraction

import diffusers.utils.import_utils as _diffusers_imports
import pytest
import torch

_diffusers_imports._torchvision_available = False  # torchvision cannot load here; schedulers never need it
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler  # noqa: E402

from ddpm.samplers import (  # noqa: E402
    SamplerStep,
    classifier_free_guidance,
    ddim_step,
    ddpm_step,
    dpmpp_2m_step,
    guided_model,
    sample,
    sample_progressive,
    trailing_timesteps,
)
from ddpm.schedules import NoiseSchedule, ScheduleConfig, model_output_to_x0_eps  # noqa: E402
from ddpm.unet import UNetConfig, build_unet  # noqa: E402

DEFAULT = NoiseSchedule.from_config(ScheduleConfig())  # cosine, zero terminal SNR, v-prediction, T = 200
PAPER = NoiseSchedule.from_config(ScheduleConfig.paper())  # linear, √ᾱ_T ≈ 0.36, ε-prediction, T = 200
COSINE_V = NoiseSchedule.from_config(ScheduleConfig(zero_terminal_snr=False))  # cosine, SNR_T > 0, v-prediction
COSINE_EPS = NoiseSchedule.from_config(ScheduleConfig(zero_terminal_snr=False, prediction_type="epsilon"))


# ---- an exact denoiser for Gaussian data -----------------------------------------------------------
MU, S = 0.3, 0.5  # data: x0 ~ N(MU, S²) independently per pixel
ORACLE_SHAPE = (8000, 1, 2, 2)  # 32,000 independent values: standard error 0.003 on the mean, 0.002 on the std
MEAN_TOL = 0.015  # 5 standard errors


def gaussian_oracle(schedule: NoiseSchedule):
    """The ideal network for x0 ~ N(MU, S²): x̂0 = E[x0 | x_t] = MU + √ᾱ S²/(ᾱ S² + 1-ᾱ) (x_t - √ᾱ MU),
    returned as ε̂ = (x_t - √ᾱ x̂0)/√(1-ᾱ) or v̂ = √ᾱ ε̂ - √(1-ᾱ) x̂0 (computed in float64)."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alphas_cumprod[t.cpu()].reshape(-1, 1, 1, 1)
        x = x_t.double()
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if schedule.prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return out.float()

    return model


def gaussian_ddim_std(schedule: NoiseSchedule, timesteps: list[int], eta: float) -> float:
    """The exact std that DDIM (Song et al. eq. 12) produces from x_T ~ N(0, 1) with the oracle above.

    With y = x_t - √ᾱ_t MU every step is y' = r y + σ z, so Var' = r² Var + σ² (ᾱ_T = 0 makes y_T = x_T).
    DDPM is DDIM with η = 1 over every step. Few-step DDIM shrinks the variance (Cauchy-Schwarz: r ≤ √(V'/V)).
    """
    ac, var = schedule.alphas_cumprod.tolist(), 1.0
    for i, t in enumerate(timesteps):
        a = ac[t]
        a_prev = ac[timesteps[i + 1]] if i + 1 < len(timesteps) else 1.0
        k = math.sqrt(a) * S**2 / (a * S**2 + 1 - a)  # x̂0 - MU = k y
        sigma2 = eta**2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        r = math.sqrt(a_prev) * k + math.sqrt(1 - a_prev - sigma2) * (1 - math.sqrt(a) * k) / math.sqrt(1 - a)
        var = r * r * var + sigma2
    return math.sqrt(var)


def oracle_samples(schedule: NoiseSchedule, sampler: str, steps: int | None, eta: float = 0.0, seed: int = 0) -> torch.Tensor:
    return sample(gaussian_oracle(schedule), schedule, ORACLE_SHAPE, sampler, steps, eta=eta, clip_sample=False,
                  generator=torch.Generator().manual_seed(seed))


def test_ddpm_over_all_steps_with_an_exact_denoiser_reproduces_the_data_distribution():
    x = oracle_samples(DEFAULT, "ddpm", None)
    expected_std = gaussian_ddim_std(DEFAULT, list(range(199, -1, -1)), eta=1.0)
    assert x.mean().item() == pytest.approx(MU, abs=MEAN_TOL)
    assert x.std().item() == pytest.approx(expected_std, abs=0.01)
    # σ² = β̃ leaves out the uncertainty of x̂0, so even exact DDPM is ~2% narrow at T = 200.
    assert x.std().item() == pytest.approx(S, abs=0.02)


@pytest.mark.parametrize("steps, eta", [(10, 0.0), (20, 0.0), (10, 1.0), (20, 1.0)])
def test_ddim_with_an_exact_denoiser_matches_the_closed_form_ddim_distribution(steps, eta):
    x = oracle_samples(DEFAULT, "ddim", steps, eta)
    expected_std = gaussian_ddim_std(DEFAULT, trailing_timesteps(200, steps), eta)
    assert x.mean().item() == pytest.approx(MU, abs=MEAN_TOL)  # zero terminal SNR: the mean is exact at any step count
    assert x.std().item() == pytest.approx(expected_std, abs=0.01)
    assert 0.75 * S < expected_std < S  # few-step DDIM is narrow by a known amount, more so with η = 1


def test_ddim_closed_form_std_tends_to_the_data_std_as_steps_grow():
    stds = [gaussian_ddim_std(DEFAULT, trailing_timesteps(200, n), 0.0) for n in (10, 20, 50, 200)]
    assert stds == sorted(stds)
    assert stds[-1] == pytest.approx(S, abs=0.005)


@pytest.mark.parametrize("steps, std_tol", [(10, 0.03), (20, 0.015)])
def test_dpmpp_with_an_exact_denoiser_reproduces_the_data_distribution(steps, std_tol):
    """Second order: 20 steps are within sampling noise of the data, 10 steps within 6% on the std."""
    x = oracle_samples(DEFAULT, "dpmpp", steps)
    assert x.mean().item() == pytest.approx(MU, abs=MEAN_TOL)
    assert x.std().item() == pytest.approx(S, abs=std_tol)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp"])
def test_paper_schedule_started_from_pure_noise_is_biased_where_zero_terminal_snr_is_not(sampler):
    """The paper's x_T keeps √ᾱ_T ≈ 0.36 of the image, so starting from N(0, I) misplaces the mean."""
    paper_bias = abs(oracle_samples(PAPER, sampler, 20).mean().item() - MU)
    ztsnr_bias = abs(oracle_samples(DEFAULT, sampler, 20).mean().item() - MU)
    # deterministic flow map x0 = MU + (S/σ_T)(x_T - √ᾱ_T MU): bias (S/σ_T)·√ᾱ_T·MU ≈ 0.057
    assert paper_bias > 0.04
    assert ztsnr_bias < MEAN_TOL
    assert paper_bias > 3 * ztsnr_bias


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 10), ("dpmpp", 10)])
def test_epsilon_prediction_on_a_positive_terminal_snr_schedule_is_exact_too(sampler, steps):
    """Same oracle through the ε path (x̂0 = (x_t - √(1-ᾱ) ε̂)/√ᾱ is defined when SNR_T > 0)."""
    x_eps = oracle_samples(COSINE_EPS, sampler, steps)
    x_v = oracle_samples(COSINE_V, sampler, steps)
    torch.testing.assert_close(x_eps, x_v, rtol=1e-4, atol=1e-4)  # same model in two parametrisations
    assert x_eps.mean().item() == pytest.approx(MU, abs=MEAN_TOL)


# ---- determinism and the step generator -------------------------------------------------------------
@pytest.fixture
def tiny_net(tiny_config):
    torch.manual_seed(0)
    net = build_unet(tiny_config).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("sampler, steps, eta", [("ddpm", None, 0.0), ("ddim", 5, 0.0), ("ddim", 5, 1.0), ("dpmpp", 5, 0.0)])
def test_same_seed_gives_identical_images_and_another_seed_different_ones(tiny_net, tiny_schedule_config, sampler, steps, eta):
    schedule = NoiseSchedule.from_config(tiny_schedule_config)

    def run(seed: int) -> torch.Tensor:
        with torch.inference_mode():
            return sample(tiny_net, schedule, (2, 3, 28, 28), sampler, steps, eta=eta, generator=torch.Generator().manual_seed(seed))

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert (a - c).abs().mean() > 0.1


def test_explicit_start_noise_is_used_as_x_T(tiny_net, tiny_schedule_config):
    schedule = NoiseSchedule.from_config(tiny_schedule_config)
    x_T = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        a = sample(tiny_net, schedule, x_T.shape, "dpmpp", 4, noise=x_T, generator=torch.Generator().manual_seed(0))
        b = sample(tiny_net, schedule, x_T.shape, "dpmpp", 4, noise=x_T, generator=torch.Generator().manual_seed(1))
        c = sample(tiny_net, schedule, x_T.shape, "dpmpp", 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)  # DPM-Solver++ is deterministic given x_T
    assert torch.equal(a, c)  # and x_T is the generator's first draw


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 7), ("dpmpp", 4), ("ddim", 200)])
def test_generator_yields_one_sampler_step_per_network_call_with_the_right_timesteps(sampler, steps):
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.zeros_like(x)

    out = list(sample_progressive(model, DEFAULT, (3, 1, 2, 2), sampler, steps, generator=torch.Generator().manual_seed(0)))
    expected_ts = list(range(199, -1, -1)) if sampler == "ddpm" else trailing_timesteps(200, steps)
    assert all(isinstance(s, SamplerStep) for s in out)
    assert [s.t for s in out] == expected_ts
    assert [s.index for s in out] == list(range(len(expected_ts)))
    assert {s.num_steps for s in out} == {len(expected_ts)}
    assert [c.tolist() for c in calls] == [[t] * 3 for t in expected_ts]
    assert all(s.prev_sample.shape == s.pred_original_sample.shape == (3, 1, 2, 2) for s in out)


def test_sample_returns_the_last_step_of_the_generator(tiny_net, tiny_schedule_config):
    schedule = NoiseSchedule.from_config(tiny_schedule_config)
    with torch.inference_mode():
        steps = list(sample_progressive(tiny_net, schedule, (2, 3, 28, 28), "ddim", 4, eta=0.5,
                                        generator=torch.Generator().manual_seed(3)))
        final = sample(tiny_net, schedule, (2, 3, 28, 28), "ddim", 4, eta=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(final, steps[-1].prev_sample)


def test_trailing_timesteps_start_at_T_minus_1_and_are_evenly_spaced():
    assert trailing_timesteps(200, 10) == [199, 179, 159, 139, 119, 99, 79, 59, 39, 19]
    assert trailing_timesteps(200, 1) == [199]
    assert trailing_timesteps(200, 200) == list(range(199, -1, -1))
    assert trailing_timesteps(200, 3) == [199, 132, 66]


def test_trailing_timesteps_equal_diffusers_trailing_spacing_for_every_step_count():
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=200, timestep_spacing="trailing")
    for n in range(1, 201):
        scheduler.set_timesteps(n)
        ours = trailing_timesteps(200, n)
        theirs = [t for t in scheduler.timesteps.tolist() if t >= 0]  # float np.arange can add a t = -1 (n = 29)
        assert len(ours) == len(theirs) == n and ours == sorted(set(ours), reverse=True) and ours[-1] >= 0
        for i, (a, b) in enumerate(zip(ours, theirs)):
            if a != b:  # only where T - i·T/n is exactly k + ½ and float error decides the rounding (n = 48, i = 9)
                exact = Fraction(200) - i * Fraction(200, n)
                assert exact.denominator == 2 and abs(a - b) == 1, (n, i, a, b)


@pytest.mark.parametrize("steps", [0, 201, -3])
def test_trailing_timesteps_reject_step_counts_outside_1_to_T(steps):
    with pytest.raises(ValueError, match="between 1 and T = 200"):
        trailing_timesteps(200, steps)


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "ddim", "num_steps": 0}, "between 1 and T"),
    ({"sampler": "dpmpp", "num_steps": 500}, "between 1 and T"),
    ({"sampler": "ddim", "num_steps": 10, "eta": -0.1}, r"eta must be in \[0, 1\]"),
    ({"sampler": "ddim", "num_steps": 10, "eta": 1.5}, r"eta must be in \[0, 1\]"),
    ({"sampler": "ddpm", "num_steps": 50}, "uses all T = 200 steps"),
    ({"sampler": "euler", "num_steps": 10}, "sampler must be one of"),
])
def test_sampler_rejects_out_of_range_arguments_with_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(sample_progressive(lambda x, t: x, DEFAULT, (1, 1, 2, 2), **kwargs))


# ---- every step against diffusers ----------------------------------------------------------------
SHAPE = (2, 3, 4, 4)
SCHEDULES = {"default": DEFAULT, "paper": PAPER, "cosine_v": COSINE_V}


def fake_model(x: torch.Tensor, t: int) -> torch.Tensor:
    """A fixed smooth function of (x, t) standing in for a network: same output for both libraries."""
    return 0.8 * torch.sin(1.7 * x + 0.01 * t) + 0.1 * math.cos(0.05 * t)


def start_noise(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def in_float64(scheduler, schedule: NoiseSchedule):
    """Give a diffusers DDPM/DDIM scheduler our β in float64 (it keeps float32 tables, and 1 - ᾱ_t/ᾱ_(t-1)
    loses 3 digits in float32 near t = 0), so any difference left is a difference in the formulas."""
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
    scheduler.one = scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str, tol: float = 1e-10) -> None:
    torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ddpm_step_matches_diffusers_ddpm_scheduler_at_every_step(name, clip):
    schedule = SCHEDULES[name]
    theirs = in_float64(DDPMScheduler(num_train_timesteps=200, trained_betas=schedule.betas.numpy(), variance_type="fixed_small",
                                      clip_sample=clip, prediction_type=schedule.prediction_type), schedule)
    x = start_noise()
    for t in range(199, -1, -1):
        out = fake_model(x, t)
        # diffusers draws its noise from the generator: seed ours identically
        ref = theirs.step(out, t, x, generator=torch.Generator().manual_seed(1000 + t))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1000 + t), dtype=torch.float64) if t > 0 else None
        prev, x0 = ddpm_step(schedule, out, t, x, noise, clip_sample=clip)
        close(x0, ref.pred_original_sample, f"x̂0 at t={t}")
        close(prev, ref.prev_sample, f"x_(t-1) at t={t}")
        x = prev


# η = 1 is covered by the DDPM identity below: diffusers' √(1 - ᾱ' - σ²) is NaN at ᾱ_T = 0 when rounding makes it -1e-17
@pytest.mark.parametrize("steps, eta, clip", [(10, 0.0, False), (10, 0.0, True), (20, 0.9, False), (8, 0.5, True), (200, 0.0, False)])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ddim_step_matches_diffusers_ddim_scheduler_at_every_step(name, steps, eta, clip):
    schedule = SCHEDULES[name]
    theirs = in_float64(DDIMScheduler(num_train_timesteps=200, trained_betas=schedule.betas.numpy(), clip_sample=clip,
                                      set_alpha_to_one=True, timestep_spacing="trailing",
                                      prediction_type=schedule.prediction_type), schedule)
    theirs.set_timesteps(steps)
    timesteps = trailing_timesteps(200, steps)
    assert theirs.timesteps.tolist() == timesteps
    x = start_noise()
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        out = fake_model(x, t)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2000 + t), dtype=torch.float64)
        # ours re-derives ε̂ from the clipped x̂0 (improved-diffusion); diffusers does so with use_clipped_model_output
        ref = theirs.step(out, t, x, eta=eta, use_clipped_model_output=clip, variance_noise=noise if eta > 0 else None)
        prev, x0 = ddim_step(schedule, out, t, prev_t, x, eta, noise, clip_sample=clip)
        close(x0, ref.pred_original_sample, f"x̂0 at t={t}")
        close(prev, ref.prev_sample, f"x_prev at t={t}")
        x = prev


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ddim_with_every_step_and_eta_1_is_the_ddpm_step(name, clip):
    """Song et al. §4.1: η = 1 over consecutive steps is ancestral DDPM with σ² = β̃."""
    schedule = SCHEDULES[name]
    x = start_noise()
    for t in range(199, -1, -1):
        out = fake_model(x, t)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        ddim = ddim_step(schedule, out, t, t - 1, x, eta=1.0, noise=noise, clip_sample=clip)
        ddpm = ddpm_step(schedule, out, t, x, noise, clip_sample=clip)
        close(ddim[1], ddpm[1], f"x̂0 at t={t}")
        # at ᾱ_T = 0, √(1 - ᾱ' - σ²) is the square root of a rounding error (~1e-16): ~1e-8 is as exact as it gets
        close(ddim[0], ddpm[0], f"x_(t-1) at t={t}", tol=1e-7)
        x = ddpm[0]


@pytest.mark.parametrize("steps", [10, 20, 7, 1])
@pytest.mark.parametrize("name", ["paper", "cosine_v"])  # diffusers' DPM-Solver needs a finite λ_T (no zero terminal SNR)
def test_dpmpp_2m_step_matches_diffusers_dpmsolver_multistep_at_every_step(name, steps):
    schedule = SCHEDULES[name]
    theirs = DPMSolverMultistepScheduler(num_train_timesteps=200, trained_betas=schedule.betas.numpy(),
                                         algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                         timestep_spacing="trailing", final_sigmas_type="zero",
                                         prediction_type=schedule.prediction_type)
    theirs.set_timesteps(steps)
    timesteps = trailing_timesteps(200, steps)
    assert theirs.timesteps.tolist() == timesteps
    x, prev_x0, last_t = start_noise(dtype=torch.float32), None, None
    for i, t in enumerate(timesteps):
        prev_t = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        out = fake_model(x, t)
        ref = theirs.step(out, t, x).prev_sample
        x0 = model_output_to_x0_eps(schedule, out, x, torch.full((SHAPE[0],), t))[0]
        # diffusers' DPM-Solver++ keeps x̂0 as its model output; it always steps in float32 (σ tables included)
        close(x0, theirs.model_outputs[-1], f"x̂0 at t={t}", tol=2e-5)
        prev = dpmpp_2m_step(schedule, x0, prev_x0, t, prev_t, last_t, x)
        close(prev, ref, f"x_prev at t={t}", tol=2e-5)
        x, prev_x0, last_t = prev, x0, t
    assert torch.isfinite(x).all()


def _diffusers_loop(scheduler, steps: int | None, noise_generator: torch.Generator, **step_kwargs) -> torch.Tensor:
    if steps is not None:
        scheduler.set_timesteps(steps)
    x = torch.randn(SHAPE, generator=noise_generator)
    for t in scheduler.timesteps:
        x = scheduler.step(fake_model(x, int(t)), int(t), x, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp"])
def test_sample_progressive_reproduces_a_diffusers_sampling_loop_with_the_same_generator(sampler):
    """The whole loop (timesteps, order of random draws, multistep state) matches, not just single steps."""
    schedule = PAPER
    kw = {"num_train_timesteps": 200, "trained_betas": schedule.betas.numpy(), "prediction_type": "epsilon"}
    g = torch.Generator().manual_seed(11)
    if sampler == "ddpm":
        ref = _diffusers_loop(in_float64(DDPMScheduler(**kw, clip_sample=False), schedule), None, g, generator=g)
        steps, eta = None, 0.0
    elif sampler == "ddim":
        ddim = DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
        ref = _diffusers_loop(in_float64(ddim, schedule), 20, g, eta=1.0, generator=g)
        steps, eta = 20, 1.0
    else:
        ref = _diffusers_loop(DPMSolverMultistepScheduler(**kw, timestep_spacing="trailing", final_sigmas_type="zero"), 12, g)
        steps, eta = 12, 0.0
    ours = sample(lambda x, t: fake_model(x, int(t[0])), schedule, SHAPE, sampler, steps, eta=eta, clip_sample=False,
                  generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)  # float32 samples over the whole loop


# ---- classifier-free guidance ---------------------------------------------------------------------
NULL = 9  # "no class" of a 9-class model


class RecordingModel:
    """A stand-in conditional network whose output depends on x, t and the label; records every call."""

    def __init__(self):
        self.calls: list[tuple[int, list[int]]] = []  # (batch size, labels)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], labels.tolist()))
        return x * (1 + labels.float())[:, None, None, None] + 0.01 * t.float()[:, None, None, None]


def test_classifier_free_guidance_is_uncond_plus_scale_times_the_difference():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 1.0), cond)  # up to rounding: u + (c - u)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 3.0), 3 * cond - 2 * uncond)


def test_guided_model_at_scale_1_is_the_plain_conditional_call_and_at_0_the_no_class_call():
    x, t, labels = torch.randn(3, 1, 2, 2), torch.tensor([5, 5, 5]), torch.tensor([0, 4, 8])
    model = RecordingModel()
    assert torch.equal(guided_model(model, labels, 1.0, NULL)(x, t), model(x, t, labels))
    assert model.calls[0] == (3, [0, 4, 8])
    model.calls.clear()
    assert torch.equal(guided_model(model, labels, 0.0, NULL)(x, t), model(x, t, torch.full((3,), NULL)))
    assert model.calls[0] == (3, [NULL] * 3)


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_guided_model_combines_cond_and_uncond_from_one_call_on_a_batch_of_2b(scale):
    x, t, labels = torch.randn(3, 1, 2, 2), torch.tensor([7, 7, 7]), torch.tensor([0, 4, 8])
    model = RecordingModel()
    out = guided_model(model, labels, scale, NULL)(x, t)
    assert model.calls == [(6, [0, 4, 8, NULL, NULL, NULL])]
    cond, uncond = model(x, t, labels), model(x, t, torch.full((3,), NULL))
    torch.testing.assert_close(out, uncond + scale * (cond - uncond))


def test_guided_model_with_class_weights_pairs_them_with_the_one_hot_of_no_class():
    seen = []

    def model(x, t, labels):
        seen.append(labels.clone())
        return x * labels.sum(1)[:, None, None, None]

    weights = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])  # K = 2 tissues and "no class"
    guided_model(model, weights, 2.0, 2)(torch.randn(2, 1, 2, 2), torch.tensor([1, 1]))
    assert torch.equal(seen[0], torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))
    guided_model(model, weights, 0.0, 2)(torch.randn(2, 1, 2, 2), torch.tensor([1, 1]))
    assert torch.equal(seen[1], torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))


def test_sample_progressive_can_start_from_a_given_x_at_given_timesteps():
    seen = []

    def model(x, t):
        seen.append((x.clone(), t.tolist()))
        return torch.zeros_like(x)

    x = torch.randn(2, 1, 2, 2)
    steps = list(sample_progressive(model, DEFAULT, (2, 1, 2, 2), "dpmpp", noise=x, timesteps=[10, 4, 1]))
    assert [s.t for s in steps] == [10, 4, 1] and [t for _, t in seen] == [[10, 10], [4, 4], [1, 1]]
    assert torch.equal(seen[0][0], x)


def test_guided_model_on_a_real_conditional_network_equals_two_separate_passes(tiny_config):
    torch.manual_seed(0)
    net = build_unet(UNetConfig.from_dict({**tiny_config.to_dict(), "num_classes": 9})).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))  # the class embedding too: cond and uncond differ
    x, t, labels = torch.randn(2, 3, 28, 28), torch.tensor([3, 11]), torch.tensor([1, 6])
    with torch.inference_mode():
        out = guided_model(net, labels, 2.5, 9)(x, t)
        cond, uncond = net(x, t, labels), net(x, t, torch.full((2,), 9))
    assert (cond - uncond).abs().max() > 1e-3
    torch.testing.assert_close(out, uncond + 2.5 * (cond - uncond), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler, steps", [("dpmpp", 4), ("ddim", 3)])
def test_a_guided_sampler_makes_one_network_call_per_step(sampler, steps):
    model = RecordingModel()
    fn = guided_model(model, torch.tensor([2, 3]), 3.0, NULL)
    out = list(sample_progressive(fn, DEFAULT, (2, 1, 2, 2), sampler, steps, generator=torch.Generator().manual_seed(0)))
    assert len(model.calls) == len(out) == steps
    assert [b for b, _ in model.calls] == [4] * steps
    assert all(s.prev_sample.shape == (2, 1, 2, 2) for s in out)


def test_guided_model_without_labels_is_the_model_itself_and_refuses_bad_settings():
    model = RecordingModel()
    assert guided_model(model, None, 3.0, 9) is model
    assert guided_model(model, None, 3.0, None) is model
    with pytest.raises(ValueError, match="unconditional"):
        guided_model(model, torch.tensor([0]), 2.0, None)
    with pytest.raises(ValueError, match="guidance scale must be ≥ 0"):
        guided_model(model, torch.tensor([0]), -0.5, 9)
