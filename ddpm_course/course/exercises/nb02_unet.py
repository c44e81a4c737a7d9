"""Checks of notebook 02 (U-Net): the time embedding and a residual block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...unet import ResidualBlock, sinusoidal_embedding
from .framework import call, compare, exercise, gen


@exercise("sinusoidal_embedding", "02_unet", "the sinusoidal time embedding", sinusoidal_embedding)
def _check_sinusoidal(fn) -> str:
    t = torch.tensor([0, 1, 7, 50, 999])
    worst = 0.0
    for dim in (16, 64):
        half = dim // 2
        k = torch.arange(half, dtype=torch.float64)
        args = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / half)[None]
        args_dim = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / dim)[None]
        args_ddpm = t.double()[:, None] * torch.exp(-math.log(10000.0) * k / (half - 1))[None]
        mistakes = {
            "this is DDPM's original code (sines first, frequencies 10000 ** (-k / (dim/2 - 1))): a valid "
            "embedding, but the course follows Improved DDPM's code: cosines first, 10000 ** (-k / (dim / 2))":
                torch.cat([args_ddpm.sin(), args_ddpm.cos()], 1),
            "the frequencies use k / (dim/2 - 1), as DDPM's original code does; the course (Improved DDPM's "
            "code) uses 10000 ** (-k / (dim / 2))": torch.cat([args_ddpm.cos(), args_ddpm.sin()], 1),
            "sin and cos are in the wrong order: the course puts [cos(t f), sin(t f)]":
                torch.cat([args.sin(), args.cos()], 1),
            "cos and sin are interleaved; concatenate them instead: [cos(t f_0..f_{d/2-1}), sin(...)]":
                torch.stack([args.cos(), args.sin()], 2).flatten(1),
            "the frequencies use k / dim; they should be 10000 ** (-k / (dim / 2)), k = 0 .. dim/2 - 1":
                torch.cat([args_dim.cos(), args_dim.sin()], 1),
            "the frequencies grow instead of shrinking: use 10000 ** (-k / (dim / 2)), a minus sign":
                torch.cat([(t.double()[:, None] / torch.exp(-math.log(1e4) * k / half)).cos(),
                           (t.double()[:, None] / torch.exp(-math.log(1e4) * k / half)).sin()], 1),
        }
        out = call(fn, (t.clone(), dim), f"sinusoidal_embedding(t, dim={dim})")
        worst = max(worst, compare(out, sinusoidal_embedding(t, dim), what=f"the embedding (dim={dim})",
                                   where=lambda i, dim=dim: f"for t={int(t[i[0]])}, column {i[1]} of {dim}",
                                   mistakes=mistakes, rtol=1e-4, atol=1e-4))
    return f"t in {t.tolist()}, dim 16 and 64, largest error {worst:.1e}"


def residual_block_reference(block: ResidualBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """The package's residual block, called as the exercise is: (B, in, H, W), (B, E) -> (B, out, H, W)."""
    return block(x, emb)


def _test_block(in_ch: int, out_ch: int, seed: int) -> ResidualBlock:
    with torch.random.fork_rng(devices=[]):  # the student's global random state stays as it was
        torch.manual_seed(seed)
        block = ResidualBlock(in_ch, out_ch, emb_dim=32).eval()
        torch.nn.init.normal_(block.conv2.weight, std=0.1)  # zero at init; non-zero so every path counts
    return block


@exercise("residual_block", "02_unet", "a residual block's forward pass", residual_block_reference)
def _check_residual(fn) -> str:
    worst = 0.0
    for in_ch, out_ch, seed in ((16, 16, 3), (8, 16, 4)):
        block = _test_block(in_ch, out_ch, seed)
        g = gen(seed)
        x, emb = torch.randn(3, in_ch, 7, 7, generator=g), torch.randn(3, 32, generator=g)
        with torch.no_grad():
            h = block.conv1(F.silu(block.norm1(x)))
            p = block.emb_proj(F.silu(emb))[:, :, None, None]
            scale, shift = p.chunk(2, dim=1)
            p_raw = block.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)

            def finish(hm, skip=True, block=block, x=x):
                out = block.conv2(F.silu(hm))
                return block.skip(x) + out if skip else out

            expected = block(x, emb)
            mistakes = {
                "the skip connection is missing: return skip(x) + h": finish(block.norm2(h) * (1 + scale) + shift,
                                                                         skip=False),
                "scale and shift are applied before norm2, which then removes them: normalise first, "
                "then h * (1 + scale) + shift": finish(block.norm2(h * (1 + scale) + shift)),
                "the scale needs a 1 +: h * (1 + scale) + shift, so that a zero embedding leaves h unchanged":
                    finish(block.norm2(h) * scale + shift),
                "scale and shift are swapped: chunk(2, dim=1) gives (scale, shift) in that order":
                    finish(block.norm2(h) * (1 + shift) + scale),
                "the embedding goes through SiLU before emb_proj": finish(block.norm2(h) * (1 + p_raw[0]) + p_raw[1]),
            }
            out = call(fn, (block, x.clone(), emb.clone()), f"residual_block(block, x, emb) with {in_ch}->{out_ch}")
        worst = max(worst, compare(out, expected, what=f"the block's output ({in_ch}->{out_ch} channels)",
                                   where=lambda i: f"at image {i[0]}, channel {i[1]}, pixel ({i[2]}, {i[3]})",
                                   mistakes=mistakes))
    return f"blocks 16->16 and 8->16 channels, largest error {worst:.1e}"


