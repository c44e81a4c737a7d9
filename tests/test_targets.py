"""What the network predicts (eps, v or x0): targets, conversions, losses and sampling agree."""

from __future__ import annotations

import pytest
import torch

from ddpm_course import NoiseSchedule, UNet, UNetConfig, diffusion_loss, guidance_combine, sample
from ddpm_course.losses import min_snr_weights, noise_batch
from ddpm_course.targets import PREDICTIONS, model_prediction, to_epsilon, training_target


def _batch(T=1000, B=6, seed=0):
    s = NoiseSchedule.linear(T)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(B, 1, 8, 8, generator=g)
    t = torch.tensor([0, 1, 10, T // 2, T - 2, T - 1])[:B]
    return s, x0, noise, t, s.add_noise(x0, noise, t)


def test_v_target_is_diffusers_velocity():
    from diffusers import DDPMScheduler

    s, x0, noise, t, _ = _batch()
    reference = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").get_velocity(x0, noise, t)
    torch.testing.assert_close(training_target(s, x0, noise, t, "v"), reference, rtol=1e-5, atol=1e-6)
    assert training_target(s, x0, noise, t, "eps") is noise and training_target(s, x0, noise, t, "x0") is x0


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_the_exact_target_converts_back_to_the_noise(prediction):
    s, x0, noise, t, x_t = _batch()
    eps = to_epsilon(s, x_t, t, training_target(s, x0, noise, t, prediction), prediction)
    # x0 -> eps divides by sqrt(1 - a-bar_t) = 0.01 at t = 0, which magnifies float32 rounding 100x
    torch.testing.assert_close(eps, noise, rtol=0, atol=2e-3 if prediction == "x0" else 1e-5)


def test_min_snr_weights_weigh_the_same_error_the_same_on_every_target():
    """One eps-prediction error, seen as a v or an x0 error of the same model: weighted alike."""
    s, x0, noise, t, x_t = _batch()
    eps_hat = noise + 0.1 * torch.randn(noise.shape, generator=torch.Generator().manual_seed(1))
    a, sig = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1), s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
    x0_hat = (x_t - sig * eps_hat) / a
    hats = {"eps": eps_hat, "x0": x0_hat, "v": a * eps_hat - sig * x0_hat}
    errors = {p: (hats[p] - training_target(s, x0, noise, t, p)).pow(2).flatten(1).mean(1) for p in PREDICTIONS}
    weighted = {p: min_snr_weights(s, t, 5.0, p) * errors[p] for p in PREDICTIONS}
    torch.testing.assert_close(weighted["v"], weighted["eps"], rtol=1e-3, atol=0)
    torch.testing.assert_close(weighted["x0"], weighted["eps"], rtol=2e-2, atol=0)   # x0_hat rounds at t = 0


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_the_loss_compares_the_output_with_the_models_own_target(prediction):
    s = NoiseSchedule.linear(50)
    model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(),
                            prediction=prediction))
    assert model_prediction(model) == prediction
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    loss = diffusion_loss(model, s, x0, generator=torch.Generator().manual_seed(0))
    weighted = diffusion_loss(model, s, x0, min_snr_gamma=5.0, generator=torch.Generator().manual_seed(0))
    batch = noise_batch(s, x0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        errors = (model(batch.x_t, batch.t) - training_target(s, x0, batch.noise, batch.t, prediction)).pow(2)
    per_image = errors.flatten(1).mean(1)
    torch.testing.assert_close(loss.detach(), per_image.mean())
    torch.testing.assert_close(weighted.detach(), (min_snr_weights(s, batch.t, 5.0, prediction) * per_image).mean())


def _as(prediction, eps_fn, s):
    """eps_fn rewritten to output ``prediction``'s quantity, as a model trained on it would."""
    def fn(x_t, t, y=None):
        eps = eps_fn(x_t, t, y)
        a, sig = s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1), s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = (x_t - sig * eps) / a
        return {"eps": eps, "x0": x0, "v": a * eps - sig * x0}[prediction]
    fn.prediction, fn.num_classes = prediction, 3
    return fn


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler, steps, guidance", [("ddpm", None, 1.0), ("ddim", 5, 2.0), ("dpm_solver", 5, 3.0)])
def test_a_v_or_x0_model_samples_like_the_noise_model_it_encodes(prediction, sampler, steps, guidance):
    s = NoiseSchedule.linear(40)

    def eps_fn(x_t, t, y):   # a smooth, label-dependent noise predictor
        return torch.tanh(0.7 * x_t + 0.01 * t.view(-1, 1, 1, 1) + 0.2 * y.view(-1, 1, 1, 1))

    eps_fn.num_classes = 3
    common = dict(sampler=sampler, steps=steps, labels=torch.tensor([0, 1, 2, 3]), guidance_scale=guidance)
    reference = sample(eps_fn, s, (4, 1, 6, 6), generator=torch.Generator().manual_seed(0), **common)
    converted = sample(_as(prediction, eps_fn, s), s, (4, 1, 6, 6), generator=torch.Generator().manual_seed(0),
                       **common)
    torch.testing.assert_close(converted, reference, rtol=1e-4, atol=1e-4)


def test_bad_predictions_are_refused_by_name():
    from ddpm_course.guidance import predict_noise

    with pytest.raises(ValueError, match=r"UNetConfig.prediction must be one of \['eps', 'v', 'x0'\], got 'noise'"):
        UNetConfig(prediction="noise")
    assert UNetConfig.from_dict({"base_channels": 8}).prediction == "eps"   # checkpoints from before the field
    v_model = UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(), prediction="v"))
    with pytest.raises(ValueError, match="schedule must be the model's training NoiseSchedule when the model "
                                         "predicts 'v'.*got None"):
        predict_noise(v_model, torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), None)

    def odd(x_t, t):
        return x_t
    odd.prediction = "score"
    with pytest.raises(ValueError, match=r"function.prediction must be one of \['eps', 'v', 'x0'\], got 'score'"):
        model_prediction(odd)
    wrapped = torch.nn.Module()
    wrapped.module = v_model       # as DistributedDataParallel holds it
    assert model_prediction(wrapped) == "v"


def test_a_v_model_trains_resumes_and_samples_from_its_checkpoint(tiny_config):
    from dataclasses import replace

    from ddpm_course import load_checkpoint, train

    config = tiny_config.replace(model=replace(tiny_config.model, prediction="v"), max_steps=3)
    train(config, progress=False, log=lambda *_: None)
    path = train(config.replace(max_steps=4), progress=False, log=lambda *_: None)   # resumes at step 3
    ckpt = load_checkpoint(path)
    assert ckpt.step == 4 and model_prediction(ckpt.ema_model) == "v"
    x = sample(ckpt.ema_model, ckpt.schedule, (3, 1, 28, 28), sampler="ddim", steps=4, labels=torch.tensor([0, 1, 2]),
               guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()


def test_the_notebooks_sample_a_model_that_predicts_x0_through_the_noise(tiny_config, tmp_path, capsys):
    from dataclasses import replace

    from ddpm_course import predict_noise, train
    from ddpm_course.course import course_model, settings_for

    config = tiny_config.replace(model=replace(tiny_config.model, prediction="x0"), max_steps=1)
    path = train(config, progress=False, log=lambda *_: None)
    ckpt = course_model(settings_for("cpu", device="cpu"), path=path)
    assert "predicts x0 (turned into the noise)" in capsys.readouterr().out
    # notebook 04's eps_model and notebook 05's guided_eps: the noise, from the x0 the network outputs
    model, s = ckpt.ema_model.eval(), ckpt.schedule
    x_t, t, y = torch.randn(2, 1, 28, 28), torch.tensor([5, 40]), torch.tensor([3, 7])
    with torch.no_grad():
        x0 = model(x_t, t, y)
        assert torch.allclose(predict_noise(model, x_t, t, y, schedule=s), to_epsilon(s, x_t, t, x0, "x0"))
        both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 10)]))
        guided = to_epsilon(s, x_t, t, guidance_combine(both[2:], both[:2], 3.0), "x0")
        assert torch.allclose(guided, predict_noise(model, x_t, t, y, 3.0, schedule=s), atol=1e-5)
