"""Exercise checks: the solutions pass, stubs are 'not attempted', and typical mistakes are named.

Each wrong implementation below is written the way a student would write it (not generated from
the checker's own list), and the test asserts the words of the diagnosis.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddpm_course.course import exercises
from ddpm_course.course.exercises import EXERCISES, check, run_check


def feedback(name, fn):
    result = run_check(name, fn)
    return result.status, result.message


@pytest.mark.parametrize("name", list(EXERCISES))
def test_stub_is_not_attempted(name):
    def stub(*args):
        raise NotImplementedError
    assert feedback(name, stub)[0] == "not attempted"


def test_each_reference_is_the_package_function_called_the_exercise_way():
    """The references adapt the call, never copy the maths: each agrees with the package function
    (called its own way) on random inputs."""
    from ddpm_course import NoiseSchedule, ddim_step, ddpm_step, predict_x0
    from ddpm_course.ema import EMA
    from ddpm_course.losses import epsilon_loss

    g = torch.Generator().manual_seed(0)
    ref = {name: ex.reference for name, ex in EXERCISES.items()}
    s = NoiseSchedule.cosine(200)
    abar = s.alphas_cumprod
    x, eps, z = (torch.randn(3, 1, 8, 8, generator=g) for _ in range(3))
    t = torch.randint(0, 200, (3,), generator=g)
    torch.testing.assert_close(ref["alpha_bar"](s.betas), s.alphas_cumprod)
    torch.testing.assert_close(ref["add_noise"](x, eps, t, abar), s.add_noise(x, eps, t))
    torch.testing.assert_close(ref["predict_x0"](x, 120, eps, abar), predict_x0(s, x, 120, eps), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ref["ddpm_step"](x, 120, eps, s, z),
                               ddpm_step(s, x, 120, eps, noise=z, clip_x0=False, variance="beta").x_prev)
    torch.testing.assert_close(ref["ddim_step"](x, 120, 60, eps, abar),
                               ddim_step(s, x, 120, 60, eps, clip_x0=False).x_prev, rtol=1e-4, atol=1e-4)
    model = torch.nn.Linear(4, 4)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    expected = ref["ema_update"](ema.model.weight.detach().clone(), model.weight.detach(), 0.9)
    ema.update(model, step=10**6)          # past the warm-up: the decay is 0.9
    torch.testing.assert_close(ema.model.weight, expected)
    def net(x_t, tt):
        return 0.5 * x_t
    assert ref["epsilon_loss"] is epsilon_loss
    torch.testing.assert_close(epsilon_loss(net, s, x, t, eps), ((0.5 * s.add_noise(x, eps, t) - eps) ** 2).mean())


def test_checks_leave_the_students_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    for name, ex in EXERCISES.items():
        run_check(name, ex.reference)
    torch.testing.assert_close(torch.rand(3), expected)


def test_every_course_notebook_has_two_exercises():
    for notebook in ("01_forward_diffusion", "02_unet", "03_training", "04_sampling", "05_conditioning"):
        assert len(exercises.exercises_in(notebook)) >= 2, notebook


def test_check_returns_the_package_function_when_wrong_and_records_what_was_submitted(capsys):
    def mine(betas):
        return torch.cumprod(1 - betas, 0)

    assert check("alpha_bar", mine) is mine
    wrong = check("alpha_bar", lambda betas: 1 - betas)
    assert wrong is EXERCISES["alpha_bar"].reference
    out = capsys.readouterr().out
    assert "✔ alpha_bar: correct" in out and "✘ alpha_bar:" in out
    assert exercises.SUBMITTED["alpha_bar"] is not mine   # the last function checked is what gets graded
    with pytest.raises(AssertionError, match="did not pass"):
        exercises.assert_passed("alpha_bar")


def _answer(name, args, capsys):
    import base64
    import io
    import pickle

    from ddpm_course.course.exercises.framework import ANSWER_MARK, answer_call

    capsys.readouterr()
    answer_call(name, base64.b64encode(pickle.dumps(args)).decode())
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(ANSWER_MARK)
    return torch.load(io.BytesIO(base64.b64decode(line[len(ANSWER_MARK):])), weights_only=True)


def test_the_kernel_answers_the_graders_calls_with_tensors_only(capsys):
    """What a grader's call returns: the output and the arguments after the call (in-place changes),
    the student's error by name, the type of a non-tensor result, or that nothing was submitted."""
    def in_place(labels, p, null, generator):
        labels[0] = null
        return labels

    check("drop_labels", in_place)
    answer = _answer("drop_labels", (torch.zeros(4, dtype=torch.long), 0.5, 10, torch.Generator()), capsys)
    assert answer["out"].tolist() == [10, 0, 0, 0] and answer["args"][0].tolist() == [10, 0, 0, 0]
    check("drop_labels", lambda *a: [1, 2])
    answer = _answer("drop_labels", (torch.zeros(2), 0.5), capsys)
    assert answer["type"] == "list" and answer["args"][1] is None and "out" not in answer
    check("drop_labels", lambda *a: 1 / 0)
    assert _answer("drop_labels", (torch.zeros(2),), capsys)["error"] == "ZeroDivisionError"
    exercises.SUBMITTED.pop("drop_labels")
    assert _answer("drop_labels", (torch.zeros(2),), capsys) == {"missing": True}


def test_unknown_exercise_and_non_callable():
    with pytest.raises(ValueError, match="name must be one of"):
        run_check("alpha_barr", lambda b: b)
    with pytest.raises(TypeError, match="fn must be the function"):
        run_check("alpha_bar", 3)


def test_alpha_bar_mistakes():
    def shifted(b):
        return torch.cat([torch.ones(1), torch.cumprod(1 - b, 0)[:-1]])

    assert "off by one step" in feedback("alpha_bar", shifted)[1]
    assert "sqrt" in feedback("alpha_bar", lambda b: torch.cumprod(1 - b, 0) ** 0.5)[1]
    assert "product of the betas" in feedback("alpha_bar", lambda b: torch.cumprod(b, 0))[1]
    assert "wrong shape" in feedback("alpha_bar", lambda b: torch.cumprod(1 - b, 0)[1:])[1]
    status, message = feedback("alpha_bar", lambda b: torch.cumprod(1 - b, 0) * 1.01)
    assert status == "failed" and "largest error" in message and "at t=" in message


def test_add_noise_mistakes():
    def no_sqrt(x0, noise, t, abar):
        a = abar[t].view(-1, 1, 1, 1)
        return a * x0 + (1 - a) * noise

    def width_broadcast(x0, noise, t, abar):
        a = abar[t]                       # (B,) broadcasts along W when B == W
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def off_by_one(x0, noise, t, abar):
        a = abar[t - 1].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    assert "square roots are missing" in feedback("add_noise", no_sqrt)[1]
    assert "broadcast along the image width" in feedback("add_noise", width_broadcast)[1]  # silent when B == W
    assert "off by one" in feedback("add_noise", off_by_one)[1]


def test_sinusoidal_mistakes():
    def sin_first(t, dim):
        half = dim // 2
        f = torch.exp(-math.log(10000) * torch.arange(half) / half)
        a = t.float()[:, None] * f
        return torch.cat([a.sin(), a.cos()], 1)

    assert "wrong order" in feedback("sinusoidal_embedding", sin_first)[1]

    def ddpm_original(t, dim):   # as in DDPM's own code
        half = dim // 2
        f = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))
        a = t.float()[:, None] * f
        return torch.cat([a.sin(), a.cos()], 1)

    assert "DDPM's original code" in feedback("sinusoidal_embedding", ddpm_original)[1]
    status, message = feedback("sinusoidal_embedding", lambda t, dim: torch.zeros(len(t), dim + 1))
    assert status == "failed" and "wrong shape" in message


def test_residual_block_mistakes():
    def no_skip(block, x, emb):
        h = block.conv1(F.silu(block.norm1(x)))
        scale, shift = block.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return block.conv2(block.dropout(F.silu(block.norm2(h) * (1 + scale) + shift)))

    def before_norm(block, x, emb):
        h = block.conv1(F.silu(block.norm1(x)))
        scale, shift = block.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        return block.skip(x) + block.conv2(F.silu(block.norm2(h * (1 + scale) + shift)))

    assert "skip connection" in feedback("residual_block", no_skip)[1]
    assert "before norm2" in feedback("residual_block", before_norm)[1]


def test_training_mistakes():
    def predicts_x0(model, schedule, x0, t, noise):
        return F.mse_loss(model(schedule.add_noise(x0, noise, t), t), x0)

    assert "target should be the noise, not x0" in feedback("epsilon_loss", predicts_x0)[1]
    assert "swapped" in feedback("ema_update", lambda e, p, d: (1 - d) * e + d * p)[1]


def test_sampling_mistakes():
    def ddpm_noise_at_zero(x_t, t, eps, s, z):
        a, ab, b = s.alphas[t], s.alphas_cumprod[t], s.betas[t]
        return (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + b.sqrt() * z

    def ddim_wraps(x_t, t, t_prev, eps, abar):
        x0 = (x_t - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()
        return abar[t_prev].sqrt() * x0 + (1 - abar[t_prev]).sqrt() * eps

    def x0_plus(x_t, t, eps, abar):
        return (x_t + (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()

    def paper_index(x_t, t, eps, s, z):   # Ho et al.'s t used as the array index: one step early
        i = max(t - 1, 0)
        a, ab, b = s.alphas[i], s.alphas_cumprod[i], s.betas[i]
        return (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + (b.sqrt() * z if t > 0 else 0)

    def paper_alpha_bar(x_t, t, eps, s, z):
        a, b = s.alphas[t], s.betas[t]
        ab = s.alphas_cumprod[t - 1] if t > 0 else torch.tensor(0.0)
        return (x_t - b / (1 - ab).sqrt() * eps) / a.sqrt() + (b.sqrt() * z if t > 0 else 0)

    assert "at t = 0" in feedback("ddpm_step", ddpm_noise_at_zero)[1]
    assert "every coefficient is one step early" in feedback("ddpm_step", paper_index)[1]
    assert "alpha-bar is one step early" in feedback("ddpm_step", paper_alpha_bar)[1]
    assert "last* (noisiest)" in feedback("ddim_step", ddim_wraps)[1]
    assert "wrong sign" in feedback("predict_x0", x0_plus)[1]


def test_guidance_mistakes():
    assert "sign is flipped" in feedback("guidance_combine", lambda u, c, w: c + w * (u - c))[1]
    assert "Ho & Salimans" in feedback("guidance_combine", lambda u, c, w: (1 + w) * c - w * u)[1]


def test_drop_labels_mistakes():
    def inverted(labels, p, null, generator=None):
        keep = torch.rand(labels.shape, generator=generator) < p
        return torch.where(keep, labels, torch.full_like(labels, null))

    def to_zero(labels, p, null, generator=None):
        drop = torch.rand(labels.shape, generator=generator) < p
        return torch.where(drop, torch.zeros_like(labels), labels)

    def in_place(labels, p, null, generator=None):
        labels[torch.rand(labels.shape, generator=generator) < p] = null
        return labels

    def no_generator(labels, p, null, generator=None):
        return torch.where(torch.rand(labels.shape) < p, torch.full_like(labels, null), labels)

    assert "keep a label with probability" in feedback("drop_labels", inverted)[1]
    assert "not 0" in feedback("drop_labels", to_zero)[1]
    assert "in place" in feedback("drop_labels", in_place)[1]
    assert "generator=generator" in feedback("drop_labels", no_generator)[1]


def test_errors_in_student_code_are_reported():
    status, message = feedback("guidance_combine", lambda u, c, w: u.flatten() @ c)
    assert status == "failed" and "raised RuntimeError" in message and "guidance_combine(" in message
