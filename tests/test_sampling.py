import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from helpers import GaussianEps

from ddpm_course import (
    NoiseSchedule,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    dpm_solver_step,
    guidance_combine,
    predict_x0,
    sample_ddim,
    sample_ddpm,
    sample_dpm_solver,
)

SHAPE = (4000, 1, 2, 2)  # 16,000 values: the std of a sample std is ~0.003


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_ddpm_samples_gaussian_data():
    s = NoiseSchedule.linear(1000)
    x = sample_ddpm(GaussianEps(s), s, SHAPE, generator=gen(0), clip_x0=False)
    assert abs(x.mean().item() - 0.3) < 0.02
    assert abs(x.std().item() - 0.5) < 0.02


def test_ddpm_cosine_and_beta_variance_sample_gaussian_data():
    s = NoiseSchedule.cosine(200)
    for variance in ("posterior", "beta"):
        x = sample_ddpm(GaussianEps(s), s, SHAPE, generator=gen(1), clip_x0=False, variance=variance)
        assert abs(x.mean().item() - 0.3) < 0.02
        assert abs(x.std().item() - 0.5) < 0.03


@pytest.mark.parametrize("steps, tol", [(1000, 0.02), (250, 0.02)])
def test_ddim_samples_gaussian_data(steps, tol):
    s = NoiseSchedule.linear(1000)
    x = sample_ddim(GaussianEps(s), s, SHAPE, steps=steps, generator=gen(2), clip_x0=False)
    assert abs(x.mean().item() - 0.3) < tol
    assert abs(x.std().item() - 0.5) < tol


def test_dpm_solver_samples_gaussian_data_and_beats_ddim():
    s = NoiseSchedule.linear(1000)
    model = GaussianEps(s)
    x = sample_dpm_solver(model, s, SHAPE, steps=50, generator=gen(2), clip_x0=False)
    assert abs(x.mean().item() - 0.3) < 0.02 and abs(x.std().item() - 0.5) < 0.02
    # second order: closer to the true spread than DDIM with the same 20 model calls
    dpm = sample_dpm_solver(model, s, SHAPE, steps=20, generator=gen(2), clip_x0=False).std().item()
    ddim = sample_ddim(model, s, SHAPE, steps=20, generator=gen(2), clip_x0=False).std().item()
    assert abs(dpm - 0.5) < 0.5 * abs(ddim - 0.5)


def test_dpm_solver_first_order_is_ddim_and_matches_diffusers():
    s = NoiseSchedule.linear(1000)
    model = GaussianEps(s)
    x_T = torch.randn(64, 1, 2, 2, generator=gen(3))
    ddim = sample_ddim(model, s, x_T.shape, steps=10, x_T=x_T, clip_x0=False)
    first = sample_dpm_solver(model, s, x_T.shape, steps=10, x_T=x_T, clip_x0=False, order=1)
    torch.testing.assert_close(first, ddim, rtol=0, atol=1e-5)
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2,
                                      final_sigmas_type="zero")
    ref.set_timesteps(10)
    grid = [int(t) for t in ref.timesteps]  # diffusers' own grid: 999, 899, ..., 500, 400, ..., 100
    x, ours, earlier = x_T.clone(), x_T.clone(), {}
    for i, t in enumerate(grid):
        x = ref.step(model(x, torch.full((64,), t)), t, x).prev_sample
        t_prev = grid[i + 1] if i + 1 < len(grid) else -1
        ours, x0 = dpm_solver_step(s, ours, t, t_prev, model(ours, torch.full((64,), t)), clip_x0=False, **earlier)
        earlier = {"x0_earlier": x0, "t_earlier": t}
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-4)


def test_ddim_eta1_all_steps_is_ddpm():
    """Same process: with the same generator the two samplers even follow the same path."""
    s = NoiseSchedule.linear(1000)
    model = GaussianEps(s)
    for clip in (False, True):
        a = sample_ddpm(model, s, (16, 1, 4, 4), generator=gen(3), clip_x0=clip)
        b = sample_ddim(model, s, (16, 1, 4, 4), steps=1000, eta=1.0, generator=gen(3), clip_x0=clip)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    # and in distribution, with different seeds
    a = sample_ddpm(model, s, SHAPE, generator=gen(4), clip_x0=False)
    b = sample_ddim(model, s, SHAPE, steps=1000, eta=1.0, generator=gen(5), clip_x0=False)
    assert abs(a.mean().item() - b.mean().item()) < 0.03 and abs(a.std().item() - b.std().item()) < 0.03


def test_ddpm_step_matches_diffusers():
    s = NoiseSchedule.linear(1000)
    ref = DDPMScheduler(num_train_timesteps=1000, clip_sample=True)
    g = gen(6)
    x_t, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g) * 0.5
    for t in (999, 500, 37, 1, 0):
        noise = torch.randn(x_t.shape, generator=gen(t))
        ours = ddpm_step(s, x_t, t, eps, noise=noise if t > 0 else None, clip_x0=True)
        theirs = ref.step(eps, t, x_t, generator=gen(t))
        torch.testing.assert_close(ours.x_prev, theirs.prev_sample, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.x0, theirs.pred_original_sample, rtol=1e-4, atol=1e-5)


def test_ddim_step_matches_diffusers():
    s = NoiseSchedule.linear(1000)
    ref = DDIMScheduler(num_train_timesteps=1000, clip_sample=True, set_alpha_to_one=True)
    ref.set_timesteps(50)  # leading spacing: 980, 960, ..., 0
    g = gen(7)
    x_t, eps = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    for t in (980, 500, 20, 0):
        for eta in (0.0, 0.7):
            noise = torch.randn(x_t.shape, generator=gen(t))
            ours = ddim_step(s, x_t, t, max(t - 20, -1), eps, eta=eta, noise=noise, clip_x0=True)
            theirs = ref.step(eps, t, x_t, eta=eta, use_clipped_model_output=True,
                              variance_noise=noise if eta > 0 else None)
            torch.testing.assert_close(ours.x_prev, theirs.prev_sample, rtol=1e-4, atol=1e-5)


def test_step_variances():
    """With eps = 0 and noise = 1, x_prev - mean is exactly sigma_t."""
    s = NoiseSchedule.linear(100)
    x_t = torch.zeros(1, 1, 2, 2)
    for variance, table in (("posterior", s.posterior_variance), ("beta", s.betas)):
        mean = ddpm_step(s, x_t, 40, torch.zeros_like(x_t), noise=torch.zeros_like(x_t), variance=variance).x_prev
        out = ddpm_step(s, x_t, 40, torch.zeros_like(x_t), noise=torch.ones_like(x_t), variance=variance).x_prev
        torch.testing.assert_close(out - mean, torch.full_like(x_t, table[40].sqrt().item()))


def test_predict_x0_inverts_add_noise():
    s = NoiseSchedule.cosine(100)
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 50, 90])
    torch.testing.assert_close(predict_x0(s, s.add_noise(x0, noise, t), t, noise), x0, rtol=1e-4, atol=1e-4)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    for T, steps in ((1000, 1), (1000, 7), (1000, 10), (1000, 50), (1000, 250), (200, 33)):
        ref = DDIMScheduler(num_train_timesteps=T, timestep_spacing="trailing")  # diffusers' trailing spacing
        ref.set_timesteps(steps)
        assert ddim_timesteps(T, steps) == ref.timesteps.tolist(), (T, steps)
    ts = ddim_timesteps(1000, 7)
    assert ts[0] == 999 and len(set(ts)) == 7 and ts == sorted(ts, reverse=True)
    assert ddim_timesteps(10, 1) == [9]


def test_seeded_reproducibility_and_callback():
    s = NoiseSchedule.linear(60)
    model = GaussianEps(s)
    calls = []
    a = sample_ddpm(model, s, (2, 1, 4, 4), generator=gen(8),
                    callback=lambda i, t, x_t, x0: calls.append((i, t, x_t.shape, x0.shape)))
    b = sample_ddpm(model, s, (2, 1, 4, 4), generator=gen(8))
    c = sample_ddpm(model, s, (2, 1, 4, 4), generator=gen(9))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [i for i, *_ in calls] == list(range(60)) and [t for _, t, *_ in calls] == list(range(59, -1, -1))
    d1 = sample_ddim(model, s, (2, 1, 4, 4), steps=10, generator=gen(8))
    d2 = sample_ddim(model, s, (2, 1, 4, 4), steps=10, x_T=torch.randn(2, 1, 4, 4, generator=gen(8)))
    assert torch.equal(d1, d2)  # eta = 0: the result is a function of x_T


class LabelModel:
    """eps = 0.1 * label (no label = 10 -> eps = -1): makes guidance arithmetic visible."""
    num_classes = 10

    def __init__(self):
        self.batches, self.labels = [], []

    def __call__(self, x_t, t, y):
        self.batches.append(x_t.shape[0])
        self.labels.append(y.tolist())
        value = torch.where(y == 10, -1.0, 0.1 * y.float())
        return value.view(-1, 1, 1, 1).expand_as(x_t)


def test_guidance_passes_and_sign():
    from ddpm_course.guidance import predict_noise

    model = LabelModel()
    x, t, y = torch.zeros(3, 1, 2, 2), torch.tensor([5, 5, 5]), torch.tensor([2, 4, 6])
    out = predict_noise(model, x, t, y, guidance_scale=1.0)
    assert model.batches == [3]  # w = 1: one plain conditional pass
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.2, 0.4, 0.6]))
    out = predict_noise(model, x, t, y, guidance_scale=3.0)
    assert model.batches[-1] == 6  # cond and uncond in one batched pass
    expected = -1.0 + 3.0 * (torch.tensor([0.2, 0.4, 0.6]) + 1.0)  # eps_u + w (eps_c - eps_u)
    torch.testing.assert_close(out[:, 0, 0, 0], expected)
    torch.testing.assert_close(guidance_combine(torch.tensor(1.0), torch.tensor(3.0), 0.5), torch.tensor(2.0))


def test_sampler_with_labels_runs_and_uses_them():
    s = NoiseSchedule.linear(20)
    model = LabelModel()
    x = sample_ddim(model, s, (3, 1, 2, 2), steps=5, labels=7, guidance_scale=2.0, generator=gen(0))
    assert model.batches == [6] * 5 and model.labels == [[7, 7, 7, 10, 10, 10]] * 5   # one pass: y, then "no label"
    guided = -1.0 + 2.0 * (0.7 - (-1.0))            # eps_uncond + w (eps_cond - eps_uncond) = 2.4

    def constant(x_t, t, y=None):
        return torch.full_like(x_t, guided)
    torch.testing.assert_close(x, sample_ddim(constant, s, (3, 1, 2, 2), steps=5, generator=gen(0)))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(shape=(2, 1, 4)), ValueError, r"shape must be a tuple \(B, C, H, W\)"),
    (dict(steps=0), ValueError, "steps must be >= 1"),
    (dict(steps=61), ValueError, "steps must be <= 60"),
    (dict(guidance_scale="2"), TypeError, "guidance_scale must be a number"),
    (dict(eta=-1.0), ValueError, "eta must be >= 0"),
    (dict(labels=torch.tensor([0, 11])), ValueError, r"labels must hold class labels in \[0, 10\]"),
    (dict(labels=[1, 2]), TypeError, "labels must be None, an int or a torch.long tensor"),
    (dict(x_T=torch.zeros(3, 1, 4, 4)), ValueError, r"x_T must have the sampler's shape \(2, 1, 4, 4\)"),
    (dict(callback=5), TypeError, "callback must be callable"),
])
def test_sampler_bad_inputs(kwargs, error, match):
    s = NoiseSchedule.linear(60)
    model = GaussianEps(s, num_classes=10)
    shape = kwargs.pop("shape", (2, 1, 4, 4))
    with pytest.raises(error, match=match):
        sample_ddim(model, s, shape, **kwargs)


def test_step_functions_check_timesteps():
    s = NoiseSchedule.linear(10)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="t must be <= 9"):
        ddpm_step(s, x, 10, x, noise=x)
    with pytest.raises(ValueError, match="t_prev must be <= 4"):
        ddim_step(s, x, 5, 5, x)
    with pytest.raises(ValueError, match="noise must be given for t > 0"):
        ddpm_step(s, x, 3, x)


def test_sampler_rejects_non_models():
    s = NoiseSchedule.linear(10)
    with pytest.raises(TypeError, match="model must be callable"):
        sample_ddpm("unet", s, (1, 1, 2, 2))
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        sample_ddpm(GaussianEps(s), "linear", (1, 1, 2, 2))
    with pytest.raises(ValueError, match="variance must be one of"):
        sample_ddpm(GaussianEps(s), s, (1, 1, 2, 2), variance="large")
    with pytest.raises(ValueError, match="no num_classes attribute"):
        sample_ddpm(GaussianEps(s), s, (1, 1, 2, 2), labels=1, guidance_scale=2.0)
