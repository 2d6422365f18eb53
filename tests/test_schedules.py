"""Noise schedules and the closed-form Gaussian algebra, each checked against an independent formula."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ddpm.schedules import (
    NoiseSchedule,
    ScheduleConfig,
    eps_from_v,
    eps_from_x0,
    min_snr_weight,
    model_output_to_x0_eps,
    q_posterior_mean_variance,
    q_sample,
    q_sample_from,
    training_target,
    v_target,
    x0_from_eps,
    x0_from_v,
)


def schedule(**kw) -> NoiseSchedule:
    return NoiseSchedule.from_config(ScheduleConfig(**kw))


def test_linear_alphas_cumprod_is_the_cumprod_of_linspace_betas():
    s = schedule(kind="linear", num_timesteps=50, beta_start=1e-4, beta_end=0.02, zero_terminal_snr=False,
                 prediction_type="epsilon")
    betas = [1e-4 + (0.02 - 1e-4) * i / 49 for i in range(50)]
    expected = torch.tensor([math.prod(1 - b for b in betas[: i + 1]) for i in range(50)], dtype=torch.float64)
    assert s.alphas_cumprod.dtype == torch.float64
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.betas, torch.tensor(betas, dtype=torch.float64), rtol=1e-9, atol=1e-15)


def test_cosine_alphas_cumprod_is_f_t_over_f_0_with_the_last_beta_clipped():
    T, s_off = 40, 0.008
    s = schedule(kind="cosine", num_timesteps=T, cosine_s=s_off, zero_terminal_snr=False, prediction_type="epsilon")

    def f(t: float) -> float:
        return math.cos((t / T + s_off) / (1 + s_off) * math.pi / 2) ** 2

    expected = torch.tensor([f(t) / f(0) for t in range(1, T + 1)], dtype=torch.float64)
    # f(T) = cos²(π/2) ≈ 0, so β_T would be 1; Nichol & Dhariwal clip every β at 0.999.
    torch.testing.assert_close(s.alphas_cumprod[:-1], expected[:-1], rtol=1e-10, atol=0)
    assert s.betas[-1].item() == pytest.approx(0.999, abs=1e-12)
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected[-2].item() * 0.001, rel=1e-9)


def test_paper_schedule_has_the_papers_values_and_keeps_36_percent_signal_at_T():
    cfg = ScheduleConfig.paper()
    assert (cfg.kind, cfg.num_timesteps, cfg.prediction_type, cfg.zero_terminal_snr) == ("linear", 200, "epsilon", False)
    s = NoiseSchedule.from_config(cfg)
    assert s.betas[0].item() == pytest.approx(1e-4, rel=1e-9)
    assert s.betas[-1].item() == pytest.approx(0.02, rel=1e-9)
    closed_form = math.sqrt(math.prod(1 - (1e-4 + (0.02 - 1e-4) * i / 199) for i in range(200)))
    assert s.terminal_signal == pytest.approx(closed_form, rel=1e-9)
    assert s.terminal_signal == pytest.approx(0.36, abs=0.01)  # x_T still holds a third of the image
    assert s.terminal_snr > 0.1


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_zero_terminal_snr_rescaling_ends_at_pure_noise_and_keeps_the_first_step(kind):
    plain = schedule(kind=kind, num_timesteps=100, zero_terminal_snr=False, prediction_type="v_prediction")
    rescaled = schedule(kind=kind, num_timesteps=100, zero_terminal_snr=True)
    r, o = rescaled.sqrt_alphas_cumprod, plain.sqrt_alphas_cumprod
    assert r[-1].item() == 0.0  # exactly, not approximately
    assert rescaled.terminal_snr == 0.0 and rescaled.terminal_signal == 0.0
    assert r[0].item() == pytest.approx(o[0].item(), rel=1e-12)
    assert torch.all(r[1:] < r[:-1]), "√ᾱ must fall strictly at every step"
    # Lin et al.'s rescaling is affine in √ᾱ: differences keep their ratios.
    ratio = (r[1:] - r[:-1]) / (o[1:] - o[:-1])
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()), rtol=1e-9, atol=0)
    assert torch.all((rescaled.betas > 0) & (rescaled.betas <= 1))
    assert rescaled.betas[-1].item() == 1.0


def test_default_config_is_cosine_zero_terminal_snr_v_prediction():
    cfg = ScheduleConfig()
    s = NoiseSchedule.from_config(cfg)
    assert (cfg.kind, cfg.zero_terminal_snr, cfg.prediction_type) == ("cosine", True, "v_prediction")
    assert s.terminal_snr == 0.0
    assert s.terminal_signal == 0.0


@pytest.mark.parametrize("cfg", [ScheduleConfig.paper(), ScheduleConfig()], ids=["paper", "default"])
def test_posterior_mean_and_variance_equal_the_gaussian_product(cfg):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_{t-1}; √ᾱ_{t-1} x_0, 1-ᾱ_{t-1}) · N(x_t; √α_t x_{t-1}, β_t), for scalars."""
    s = NoiseSchedule.from_config(cfg)
    x0, x_t = 0.37, -1.21
    for t in [1, 2, 50, 120, s.num_timesteps - 2, s.num_timesteps - 1]:
        a_prev, alpha, beta = s.alphas_cumprod[t - 1].item(), 1 - s.betas[t].item(), s.betas[t].item()
        precision = 1 / (1 - a_prev) + alpha / beta
        mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(alpha) * x_t / beta) / precision
        got_mean, got_var = q_posterior_mean_variance(
            s, torch.tensor([[x0]], dtype=torch.float64), torch.tensor([[x_t]], dtype=torch.float64), torch.tensor([t]))
        assert got_mean.item() == pytest.approx(mean, rel=1e-9, abs=1e-12), t
        assert got_var.item() == pytest.approx(1 / precision, rel=1e-9), t
    # t = 0: x_{-1} is the data itself, so the posterior is a point mass at x_0.
    mean0, var0 = q_posterior_mean_variance(s, torch.tensor([[x0]], dtype=torch.float64),
                                            torch.tensor([[x_t]], dtype=torch.float64), torch.tensor([0]))
    assert mean0.item() == pytest.approx(x0, rel=1e-9)
    assert var0.item() == pytest.approx(0.0, abs=1e-15)


def test_q_sample_has_mean_sqrt_alphabar_x0_and_variance_one_minus_alphabar():
    s = NoiseSchedule.from_config(ScheduleConfig.paper())
    g = torch.Generator().manual_seed(0)
    n, x0_value = 40_000, 0.7
    for t in [0, 60, 199]:
        x0 = torch.full((n, 1, 1, 1), x0_value)
        x_t = q_sample(s, x0, torch.full((n,), t), torch.randn(n, 1, 1, 1, generator=g))
        a = s.alphas_cumprod[t].item()
        # standard errors: 0.005 for the mean, 0.007 for the variance at n = 40k
        assert x_t.mean().item() == pytest.approx(math.sqrt(a) * x0_value, abs=0.02)
        assert x_t.var().item() == pytest.approx(1 - a, abs=0.03)


def test_q_sample_from_continues_the_forward_process_so_that_two_legs_make_one():
    """x_s = q(x_s | x_0) then x_t = q(x_t | x_s): the x_0 coefficient is √ᾱ_t and the noise variance 1 - ᾱ_t."""
    s = NoiseSchedule.from_config(ScheduleConfig())
    x0, zero = torch.full((1, 1, 1, 1), 0.7), torch.zeros(1, 1, 1, 1)
    for a, b in [(-1, 0), (-1, 150), (10, 60), (60, 199)]:
        assert q_sample_from(s, x0, -1, b, zero).item() == pytest.approx(0.7 * s.sqrt_alphas_cumprod[b].item(), rel=1e-6)
        first = q_sample(s, x0, torch.tensor([a]), zero) if a >= 0 else x0
        assert q_sample_from(s, first, a, b, zero).item() == pytest.approx(0.7 * s.sqrt_alphas_cumprod[b].item(), rel=1e-6)
        noise_only = [q_sample_from(s, zero, a, b, torch.ones(1, 1, 1, 1)).item(),
                      (q_sample(s, zero, torch.tensor([a]), torch.ones(1, 1, 1, 1)).item() if a >= 0 else 0.0)]
        ratio = s.alphas_cumprod[b].item() / (s.alphas_cumprod[a].item() if a >= 0 else 1.0)
        variance = noise_only[0] ** 2 + ratio * noise_only[1] ** 2  # independent noises add in variance
        assert variance == pytest.approx(1 - s.alphas_cumprod[b].item(), rel=1e-6)
    torch.testing.assert_close(q_sample_from(s, x0, -1, 42, zero + 0.3), q_sample(s, x0, torch.tensor([42]), zero + 0.3))
    with pytest.raises(ValueError, match="need -1 ≤ s < t < T"):
        q_sample_from(s, x0, 50, 50, zero)


def test_q_sample_casts_coefficients_to_the_tensor_dtype_and_broadcasts_per_sample():
    s = NoiseSchedule.from_config(ScheduleConfig())
    x0, noise = torch.ones(3, 3, 4, 4), torch.zeros(3, 3, 4, 4)
    t = torch.tensor([0, 100, 199])
    x_t = q_sample(s, x0, t, noise)
    assert x_t.dtype == torch.float32
    for i in range(3):
        assert torch.allclose(x_t[i], torch.full((3, 4, 4), s.sqrt_alphas_cumprod[t[i]].item()))


@pytest.mark.parametrize("cfg", [ScheduleConfig.paper(), ScheduleConfig()], ids=["paper", "default"])
def test_eps_x0_and_v_conversions_round_trip(cfg):
    s = NoiseSchedule.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 40, 100, 150, 198])  # ε ↔ x̂₀ is undefined at SNR 0, so T-1 is left out here
    x_t = q_sample(s, x0, t, eps)
    v = v_target(s, x0, eps, t)
    torch.testing.assert_close(x0_from_eps(s, x_t, t, eps), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_x0(s, x_t, t, x0), eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_from_v(s, x_t, t, v), x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_from_v(s, x_t, t, v), eps, rtol=1e-9, atol=1e-9)
    target = training_target(s, x0, eps, t)
    torch.testing.assert_close(target, eps if cfg.prediction_type == "epsilon" else v)
    x0_hat, eps_hat = model_output_to_x0_eps(s, target, x_t, t)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-9, atol=1e-9)


def test_x0_from_v_is_finite_and_exact_at_snr_zero_where_x0_from_eps_is_not():
    s = NoiseSchedule.from_config(ScheduleConfig())
    T = s.num_timesteps
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.full((2,), T - 1)
    x_t = q_sample(s, x0, t, eps)
    assert torch.equal(x_t, eps)  # pure noise
    x0_hat = x0_from_v(s, x_t, t, v_target(s, x0, eps, t))
    assert torch.isfinite(x0_hat).all()
    torch.testing.assert_close(x0_hat, x0)
    assert not torch.isfinite(x0_from_eps(s, x_t, t, eps)).all()  # why the default predicts v


def test_schedule_config_rejects_epsilon_with_zero_terminal_snr():
    with pytest.raises(ValueError, match="epsilon.*zero_terminal_snr.*v_prediction"):
        ScheduleConfig(zero_terminal_snr=True, prediction_type="epsilon")


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "quadratic"}, "schedule kind"),
    ({"prediction_type": "sample"}, "prediction_type"),
    ({"num_timesteps": 1}, "num_timesteps"),
    ({"kind": "linear", "beta_start": 0.02, "beta_end": 0.01}, "beta_start < beta_end"),
])
def test_schedule_config_rejects_out_of_range_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScheduleConfig(**kwargs)


@pytest.mark.parametrize("cfg", [ScheduleConfig(), ScheduleConfig.paper(), ScheduleConfig(kind="cosine", num_timesteps=37,
                                 cosine_s=0.01, zero_terminal_snr=False, prediction_type="epsilon")])
def test_schedule_config_round_trips_through_json(cfg):
    again = ScheduleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert torch.equal(NoiseSchedule.from_config(again).alphas_cumprod, NoiseSchedule.from_config(cfg).alphas_cumprod)


def test_schedule_config_from_dict_names_unknown_keys():
    with pytest.raises(KeyError, match="beta_max"):
        ScheduleConfig.from_dict({**ScheduleConfig().to_dict(), "beta_max": 0.02})


def test_min_snr_weight_is_min_snr_gamma_over_the_implicit_x0_weight():
    gamma = 5.0
    t = torch.arange(200)
    eps_sched = NoiseSchedule.from_config(ScheduleConfig.paper())
    snr = eps_sched.alphas_cumprod / (1 - eps_sched.alphas_cumprod)
    w = min_snr_weight(eps_sched, t, gamma)
    torch.testing.assert_close(w, (snr.clamp(max=gamma) / snr).float())
    assert w[0].item() == pytest.approx(gamma / snr[0].item(), rel=1e-5)  # SNR ≈ 1e4 at t = 1: heavily down-weighted
    assert w[-1].item() == 1.0  # SNR < γ: untouched

    v_sched = NoiseSchedule.from_config(ScheduleConfig())
    snr_v = v_sched.alphas_cumprod / (1 - v_sched.alphas_cumprod)
    w_v = min_snr_weight(v_sched, t, gamma)
    torch.testing.assert_close(w_v, ((snr_v + 1).clamp(max=gamma) / (snr_v + 1)).float())
    assert w_v[-1].item() == 1.0  # SNR 0: the step from pure noise keeps full weight
    assert torch.all((w_v > 0) & (w_v <= 1))
    assert torch.all(w_v[1:] >= w_v[:-1])  # weight grows as the SNR falls


def test_min_snr_for_v_prediction_caps_the_implicit_x0_weight_snr_plus_1_so_snr_0_keeps_its_training_signal():
    """Why v uses min(SNR + 1, γ)/(SNR + 1) and not Hang et al.'s min(SNR, γ)/(SNR + 1).

    x̂₀ = √ᾱ x_t − √(1−ᾱ) v̂, so ‖v̂ − v‖² = ‖x̂₀ − x₀‖² / (1 − ᾱ) = (SNR + 1)·‖x̂₀ − x₀‖²: a v-loss is an x̂₀-loss
    weighted SNR + 1.  Min-SNR caps that weight at γ.  Hang et al.'s min(SNR, γ)/(SNR + 1) caps SNR instead and,
    on a zero-terminal-SNR schedule, gives weight 0 at t = T: the step the sampler starts from (pure noise) would
    never be trained.  Capping SNR + 1 keeps weight 1 there and differs from Hang et al. only where SNR < γ.
    """
    gamma, T = 5.0, 200
    sched = NoiseSchedule.from_config(ScheduleConfig(kind="linear", zero_terminal_snr=False, prediction_type="v_prediction"))
    # ᾱ by hand, in plain Python floats, for three steps: high SNR, SNR near γ, low SNR
    betas = [1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)]
    for t in (0, 40, 150):
        abar = math.prod(1 - b for b in betas[:t + 1])
        snr = abar / (1 - abar)
        expected = min(snr + 1, gamma) / (snr + 1)
        assert min_snr_weight(sched, torch.tensor([t]), gamma).item() == pytest.approx(expected, rel=1e-5)
    # the identity behind it, on tensors: weight · v-loss = min(SNR + 1, γ) · x̂₀-loss for any prediction
    g = torch.Generator().manual_seed(0)
    x0, noise, v_hat = (torch.randn(3, 3, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 40, 150])
    x_t = q_sample(sched, x0, t, noise)
    v_loss = ((v_hat - v_target(sched, x0, noise, t)) ** 2).mean((1, 2, 3))
    x0_loss = ((x0_from_v(sched, x_t, t, v_hat) - x0) ** 2).mean((1, 2, 3))
    snr = sched.snr[t]
    torch.testing.assert_close(min_snr_weight(sched, t, gamma).double() * v_loss, (snr + 1).clamp(max=gamma) * x0_loss,
                               rtol=1e-5, atol=0)
    # at SNR 0 (zero terminal SNR, t = T) the weight is 1 where Hang et al.'s would be 0
    zt = NoiseSchedule.from_config(ScheduleConfig())
    assert zt.snr[-1].item() == 0 and min_snr_weight(zt, torch.tensor([T - 1]), gamma).item() == 1.0


@pytest.mark.parametrize("cfg, diffusers_kwargs", [
    (ScheduleConfig.paper(), {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}),
    (ScheduleConfig(zero_terminal_snr=False), {"beta_schedule": "squaredcos_cap_v2"}),
    (ScheduleConfig(), {"beta_schedule": "squaredcos_cap_v2", "rescale_betas_zero_snr": True}),
], ids=["paper-linear", "cosine", "cosine-zero-terminal-snr"])
def test_schedules_equal_diffusers_own_definitions(cfg, diffusers_kwargs):
    """Same ᾱ as diffusers' schedules (which it computes in float32, hence the 1e-6 tolerance)."""
    import diffusers.utils.import_utils

    diffusers.utils.import_utils._torchvision_available = False
    from diffusers import DDPMScheduler

    theirs = DDPMScheduler(num_train_timesteps=cfg.num_timesteps, **diffusers_kwargs)
    ours = NoiseSchedule.from_config(cfg)
    torch.testing.assert_close(ours.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.betas, theirs.betas.double(), rtol=0, atol=1e-6)
    assert (ours.alphas_cumprod[-1].item() == 0.0) == cfg.zero_terminal_snr
