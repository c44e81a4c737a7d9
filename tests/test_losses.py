import math

import pytest
import torch

from ddpm_course import NoiseSchedule, UNet, UNetConfig, diffusion_loss
from ddpm_course.losses import drop_labels


def test_known_answers():
    """A zero predictor has loss E[eps^2] = 1 (MSE) or E|eps| = sqrt(2/pi) (L1); the exact
    predictor for a single known image has loss 0."""
    s = NoiseSchedule.linear(1000)
    x0 = torch.full((512, 1, 8, 8), 0.5)
    g = torch.Generator().manual_seed(0)
    zero = lambda x_t, t: torch.zeros_like(x_t)  # noqa: E731
    assert abs(diffusion_loss(zero, s, x0, generator=g).item() - 1.0) < 0.02
    assert abs(diffusion_loss(zero, s, x0, loss_type="l1", generator=g).item() - math.sqrt(2 / math.pi)) < 0.02

    def exact(x_t, t):
        a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - a.sqrt() * 0.5) / (1 - a).sqrt()

    assert diffusion_loss(exact, s, x0, generator=g).item() < 1e-8


def test_label_dropout_rate():
    labels = torch.randint(0, 10, (20000,), generator=torch.Generator().manual_seed(1))
    dropped = drop_labels(labels, 0.25, 10, torch.Generator().manual_seed(2))
    frac = (dropped == 10).float().mean().item()
    assert abs(frac - 0.25) < 0.015
    kept = dropped != 10
    assert torch.equal(dropped[kept], labels[kept])


def test_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    s = NoiseSchedule.cosine(100)
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=()))
    x0 = (torch.rand(8, 1, 28, 28) > 0.7).float() * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)

    def eval_loss():
        with torch.no_grad():
            return diffusion_loss(model, s, x0.repeat(8, 1, 1, 1), generator=torch.Generator().manual_seed(9)).item()

    before = eval_loss()
    for _ in range(60):
        loss = diffusion_loss(model, s, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)


def test_stratified_timesteps_cover_every_stratum_and_are_still_uniform():
    from ddpm_course.losses import sample_timesteps

    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_timesteps(8, 1000, "cpu", g, method="stratified") for _ in range(4000)])
    assert draws.dtype == torch.long and draws.min() >= 0 and draws.max() <= 999
    assert torch.equal((draws // 125).sort(dim=1).values, torch.arange(8).expand(4000, 8))  # one per 1/8 of [0, T)
    counts = torch.bincount(draws.flatten() // 100, minlength=10).float()
    assert ((counts / counts.mean() - 1).abs() < 0.05).all()     # each t still uniform: 3200 per tenth
    # the point: a batch's mean over t varies less (here t / T itself: std 1/sqrt(12 B) -> 1/(sqrt(12) B))
    uniform = torch.stack([sample_timesteps(16, 1000, "cpu", g) for _ in range(2000)]).float().div(1000).mean(1)
    strat = torch.stack([sample_timesteps(16, 1000, "cpu", g, method="stratified")
                         for _ in range(2000)]).float().div(1000).mean(1)
    assert abs(uniform.std().item() - (1 / (12 * 16)) ** 0.5) < 0.006
    assert strat.std().item() < 0.35 * uniform.std().item()
    for B, T in ((7, 100), (40, 10)):           # T not a multiple of B, and more images than steps
        t = torch.stack([sample_timesteps(B, T, "cpu", g, method="stratified") for _ in range(20000)])
        assert t.min() == 0 and t.max() == T - 1
        k = torch.arange(B)                     # the k-th smallest t lies in the k-th 1/B of [0, T)
        low, high = (k * T) // B, -((-(k + 1) * T) // B) - 1
        ordered = t.sort(dim=1).values
        assert ((ordered >= low) & (ordered <= high)).all()
        counts = torch.bincount(t.flatten(), minlength=T).float()
        assert ((counts / counts.mean() - 1).abs() < 0.15).all()     # >= 1400 per t: 5 standard deviations
    with pytest.raises(ValueError, match="T must be >= 1, got 0"):
        sample_timesteps(8, 0, "cpu", method="stratified")
    with pytest.raises(ValueError, match=r"method must be one of \['uniform', 'stratified'\], got 'sobol'"):
        sample_timesteps(8, 1000, "cpu", method="sobol")


def test_bad_loss_arguments():
    s = NoiseSchedule.linear(10)
    zero = lambda x_t, t, y=None: torch.zeros_like(x_t)  # noqa: E731
    x0 = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        diffusion_loss(zero, s, x0, loss_type="huber")
    with pytest.raises(ValueError, match="p_uncond must be <= 1"):
        diffusion_loss(zero, s, x0, torch.tensor([0, 1]), p_uncond=2.0)
    with pytest.raises(ValueError, match="no num_classes attribute"):
        diffusion_loss(zero, s, x0, torch.tensor([0, 1]), p_uncond=0.5)


def test_min_snr_weights_known_values_and_large_gamma_is_plain_mse():
    from ddpm_course.losses import min_snr_weights

    s = NoiseSchedule.linear(1000)
    t = torch.tensor([0, 500, 999])
    w = min_snr_weights(s, t, 5.0)
    snr = s.alphas_cumprod[t] / (1 - s.alphas_cumprod[t])
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr, rtol=1e-2)  # snr here in float32
    assert w[0] < 0.01 and w[2] == 1.0          # nearly clean steps weigh little, noisy ones fully
    model = lambda x, t: 0.3 * x  # noqa: E731
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    plain = diffusion_loss(model, s, x0, generator=torch.Generator().manual_seed(0))
    huge = diffusion_loss(model, s, x0, min_snr_gamma=1e12, generator=torch.Generator().manual_seed(0))
    weighted = diffusion_loss(model, s, x0, min_snr_gamma=5.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain, huge, rtol=1e-5) and weighted < plain
    with pytest.raises(ValueError, match="min_snr_gamma must be > 0"):
        diffusion_loss(model, s, x0, min_snr_gamma=0.0)
