import math

import pytest
import torch
from diffusers import DDPMScheduler

from ddpm_course import NoiseSchedule


@pytest.mark.parametrize("T", [1000, 50])
def test_linear_matches_diffusers(T):
    ours = NoiseSchedule.linear(T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas, ref.alphas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_matches_diffusers(T):
    ours = NoiseSchedule.cosine(T)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    torch.testing.assert_close(ours.betas, ref.betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_matches_diffusers(kind):
    ours = NoiseSchedule.from_name(kind, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000,
                        beta_schedule="linear" if kind == "linear" else "squaredcos_cap_v2")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 1, 28, 28, generator=g) * 2 - 1
    noise = torch.randn(6, 1, 28, 28, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    # diffusers takes square roots in float32, we in float64: they agree to float32 rounding
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


def test_closed_forms():
    s = NoiseSchedule.linear(1000)
    b = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(s.alphas_cumprod.double(), torch.cumprod(1 - b, 0), rtol=1e-6, atol=0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - b, 0)[:-1]])
    beta_tilde = b * (1 - abar_prev) / (1 - torch.cumprod(1 - b, 0))
    torch.testing.assert_close(s.posterior_variance.double(), beta_tilde, rtol=1e-6, atol=0)
    assert s.posterior_variance[0] == 0  # q(x_{-1} | x_0, x_0) is a point mass
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    assert s.alphas_cumprod[-1] < 1e-4  # x_T is nearly pure noise
    abar = torch.cumprod(1 - b, 0)
    torch.testing.assert_close(s.snr.double(), abar / (1 - abar), rtol=1e-6, atol=0)


def test_cosine_alpha_bar_formula():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule.cosine(T)
    f = [math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2 for t in range(T + 1)]
    expected = torch.tensor([f[t + 1] / f[0] for t in range(T)], dtype=torch.float64)
    # equal until the max_beta cap bites at the very end
    torch.testing.assert_close(sched.alphas_cumprod[:-5].double(), expected[:-5], rtol=1e-5, atol=1e-9)


def test_add_noise_statistics():
    """x_t | x0 has mean sqrt(abar) x0 and variance 1 - abar (a known answer)."""
    s = NoiseSchedule.linear(1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((20000, 1, 1, 1), 0.7)
    t = torch.full((20000,), 300)
    x_t = s.add_noise(x0, torch.randn(x0.shape, generator=g), t)
    abar = float(s.alphas_cumprod[300])
    assert abs(x_t.mean().item() - math.sqrt(abar) * 0.7) < 0.02
    assert abs(x_t.var().item() - (1 - abar)) < 0.03


def test_to_and_config_round_trip():
    s = NoiseSchedule.cosine(100)
    s2 = s.to("cpu")
    assert s2 is not s and s2.T == 100 and torch.equal(s2.betas, s.betas)
    for sched in (NoiseSchedule.linear(20, 1e-3, 0.05), NoiseSchedule.cosine(30)):
        again = NoiseSchedule.from_config(sched.to_config())
        assert torch.equal(again.betas, sched.betas)
    assert "cosine" in repr(s)


@pytest.mark.parametrize("call, match", [
    (lambda: NoiseSchedule.linear(0), "T must be >= 1"),
    (lambda: NoiseSchedule.linear(10, beta_start=1.5), "beta_start"),
    (lambda: NoiseSchedule.linear(10, beta_start=0.02, beta_end=0.01), "beta_end must be >= beta_start"),
    (lambda: NoiseSchedule.cosine(10, max_beta=1.0), "max_beta"),
    (lambda: NoiseSchedule.from_name("quadratic"), "schedule must be one of"),
])
def test_bad_schedule_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_schedule_types():
    with pytest.raises(TypeError, match="T must be an int"):
        NoiseSchedule.linear(10.0)


def test_add_noise_bad_inputs():
    s = NoiseSchedule.linear(100)
    x0 = torch.zeros(2, 1, 8, 8)
    with pytest.raises(TypeError, match="t must be a torch.long tensor"):
        s.add_noise(x0, torch.zeros_like(x0), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"t must hold timesteps in \[0, 99\]"):
        s.add_noise(x0, torch.zeros_like(x0), torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"t must have shape \(2,\)"):
        s.add_noise(x0, torch.zeros_like(x0), torch.tensor([1]))
    with pytest.raises(ValueError, match="noise must be a tensor of the same shape as x0"):
        s.add_noise(x0, torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"x0 must have shape \(B, C, H, W\)"):
        s.add_noise(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), torch.tensor([1, 2]))


def test_respaced_keeps_alpha_bar_at_the_visited_steps():
    s = NoiseSchedule.linear(1000)
    same = s.respaced(range(1000))
    assert torch.allclose(same.betas, s.betas, rtol=1e-5, atol=1e-7)
    steps = [39, 79, 500, 999]
    r = s.respaced(steps)
    assert r.T == 4
    assert torch.allclose(r.alphas_cumprod, s.alphas_cumprod[steps], rtol=1e-5)
    with pytest.raises(ValueError, match="timesteps must be increasing"):
        s.respaced([5, 3])
