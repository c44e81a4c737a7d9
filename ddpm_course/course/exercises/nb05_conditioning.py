"""Checks of notebook 05 (conditioning): classifier-free guidance and label dropout."""

from __future__ import annotations

import math

import torch

from ...guidance import guidance_combine
from ...losses import drop_labels
from .framework import Mismatch, as_tensor, call, compare, exercise, gen, pixel


@exercise("guidance_combine", "05_conditioning", "classifier-free guidance", guidance_combine)
def _check_guidance(fn) -> str:
    g = gen(10)
    worst = 0.0
    for w in (3.0, 7.5, 0.0, 1.0):  # w = 3 first: at w = 0 or 1 several mistakes coincide
        u, c = torch.randn(2, 1, 28, 28, generator=g), torch.randn(2, 1, 28, 28, generator=g)
        mistakes = {
            "the guidance sign is flipped: move *towards* the conditional prediction, "
            "eps_uncond + w (eps_cond - eps_uncond)": c + w * (u - c),
            "this is the (1 + w) eps_cond - w eps_uncond convention of Ho & Salimans; the course's w = 1 "
            "means no guidance: eps_uncond + w (eps_cond - eps_uncond)": (1 + w) * c - w * u,
            "the difference (eps_cond - eps_uncond) is missing: eps_uncond + w (eps_cond - eps_uncond)": u + w * c,
            "you returned the conditional prediction without guidance": c,
        }
        out = call(fn, (u.clone(), c.clone(), w), f"my_guidance_combine(eps_uncond, eps_cond, guidance_scale={w})")
        worst = max(worst, compare(out, guidance_combine(u, c, w), what=f"the guided noise (guidance_scale={w})",
                                   where=pixel, mistakes=mistakes))
    return f"w = 3, 7.5, 0, 1, largest error {worst:.1e}"


@exercise("drop_labels", "05_conditioning", "label dropout for classifier-free guidance", drop_labels)
def _check_drop_labels(fn) -> str:
    n, null = 20000, 10
    labels = torch.randint(0, 10, (n,), generator=gen(11))
    for p in (0.0, 0.1, 0.5, 1.0):
        given = labels.clone()
        out = as_tensor(call(fn, (given, p, null, gen(12)), f"drop_labels(labels, p_uncond={p}, null_label=10, "
                                                                "generator)"), f"the labels (p_uncond={p})")
        if not torch.equal(given, labels):
            raise Mismatch("your function changed the caller's labels in place; build a new tensor "
                           "(torch.where) so the data set keeps its labels")
        if out.shape != labels.shape:
            raise Mismatch(f"the labels have the wrong shape: expected {tuple(labels.shape)}, got {tuple(out.shape)}")
        if out.dtype != torch.long:
            raise Mismatch(f"the labels must stay torch.long (the embedding needs indices), got {out.dtype}")
        dropped = out != labels
        if bool((out[dropped] == 0).any()) and not bool((out[dropped] == null).any()):
            raise Mismatch("dropped labels must become null_label (10 here), not 0: 0 is a real digit")
        if not bool((out[dropped] == null).all()):
            raise Mismatch(f"a changed label must become null_label={null}; found other values "
                           f"{sorted(set(out[dropped].tolist()) - {null})[:5]}")
        frac = float((out == null).float().mean())
        tol = 4 * math.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-9
        if abs(frac - p) > tol:
            hint = (" — it looks like you keep a label with probability p_uncond; drop it when "
                    "torch.rand(...) < p_uncond" if abs(frac - (1 - p)) <= tol else "")
            raise Mismatch(f"with p_uncond={p} you dropped {frac:.3f} of {n} labels; expected {p} ± {tol:.3f}"
                           f"{hint}")
        again = call(fn, (labels.clone(), p, null, gen(12)), "drop_labels a second time with the same seed")
        if not torch.equal(as_tensor(again, "the labels"), out):
            raise Mismatch("the same generator seed gave different labels: pass generator=generator to torch.rand")
    return f"p_uncond = 0, 0.1, 0.5, 1 on {n} labels, fractions within 4 standard deviations"
