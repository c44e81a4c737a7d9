"""The noise-prediction network eps_theta(x_t, t[, y]): a U-Net sized for 28x28 digits.

The architecture follows DDPM (Ho et al. 2020) and Improved DDPM (Nichol & Dhariwal 2021):
residual blocks with GroupNorm and SiLU, a sinusoidal time embedding passed through an MLP and
added inside every residual block, self-attention at chosen resolutions (by default only the 7x7
bottleneck of a 28x28 input), and skip connections from every encoder block to the decoder.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022) adds a learned label
embedding to the time embedding. The embedding table has ``num_classes + 1`` rows: the last index,
``num_classes``, is the "no label" token that training uses with probability ``p_uncond``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import check_choice, check_image_batch, check_labels, check_timesteps, describe
from .precision import GroupNorm32, without_autocast
from .targets import PREDICTIONS

MAX_PARAMETERS = 2_000_000_000   # a config asking for more is refused before allocation (8 GB in float32)
MAX_IMAGE_SIZE = 1024


@dataclass
class UNetConfig:
    """Hyper-parameters of :class:`UNet`. Plain data: it is saved inside every checkpoint."""

    image_channels: int = 1          # 1 for MNIST; 3 for RGB image folders
    image_size: int = 28             # height = width; must divide by 2 ** (len(channel_mults) - 1)
    base_channels: int = 32          # width of the first level; the main knob for model size
    channel_mults: tuple = (1, 2, 2)  # width multiplier per resolution level: 28x28, 14x14, 7x7
    num_res_blocks: int = 2          # residual blocks per level in the encoder (decoder has one more)
    attention_resolutions: tuple = (7,)  # feature-map sizes that get self-attention
    attention_heads: int = 4         # heads in each self-attention layer
    dropout: float = 0.0             # dropout inside residual blocks; 0.1 helps long runs
    num_classes: int | None = None   # None = unconditional; 10 for class-conditional digits
    prediction: str = "eps"          # the output: "eps" (the noise, DDPM), "v" or "x0" (ddpm_course.targets)

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot build a U-Net."""
        for name in ("image_channels", "image_size", "base_channels", "num_res_blocks",
                     "attention_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {value!r}")
        if not self.channel_mults or any(
            isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mults
        ):
            raise ValueError(
                f"UNetConfig.channel_mults must be a non-empty tuple of positive ints, "
                f"got {self.channel_mults!r}"
            )
        factor = 2 ** (len(self.channel_mults) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig.image_size must be divisible by 2 ** (len(channel_mults) - 1) = {factor} "
                f"so that every downsampling halves it exactly, got image_size={self.image_size} "
                f"with channel_mults={self.channel_mults}"
            )
        valid = self.resolutions
        bad = [r for r in self.attention_resolutions if r not in valid]
        if bad:
            raise ValueError(
                f"UNetConfig.attention_resolutions must be among the feature-map sizes {valid}, "
                f"got {self.attention_resolutions!r}"
            )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ValueError(f"UNetConfig.num_classes must be None or a positive int, got {self.num_classes!r}")
        check_choice("UNetConfig.prediction", self.prediction, PREDICTIONS)
        widest, params = self.base_channels * max(self.channel_mults), self.approx_parameters()
        if params > MAX_PARAMETERS or self.image_size > MAX_IMAGE_SIZE:
            raise ValueError(
                f"UNetConfig asks for about {params:.2g} parameters ({4 * params / 1e9:.2g} GB in float32; widest "
                f"level {widest} channels) at image_size={self.image_size}; the limits are {MAX_PARAMETERS:.0e} "
                f"parameters and image_size {MAX_IMAGE_SIZE}, checked before anything is allocated")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.attention_heads and self.attention_resolutions:
                raise ValueError(
                    f"UNetConfig.attention_heads ({self.attention_heads}) must divide every level's "
                    f"width base_channels * mult, got width {self.base_channels * mult}"
                )

    def approx_parameters(self) -> int:
        """An upper estimate of the U-Net's parameter count, computed without building it: per level
        (encoder and decoder) about 3 * num_res_blocks + 3 convolutions of 3x3, (2 * width)^2 each."""
        per_level = (3 * self.num_res_blocks + 3) * 9 * 4
        return sum(per_level * (self.base_channels * m) ** 2 for m in self.channel_mults) + 1_000_000

    @property
    def resolutions(self) -> tuple:
        """Feature-map size at each level, e.g. (28, 14, 7)."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mults)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        """Rebuild a config from :meth:`to_dict`; unknown keys are an error that lists the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def num_groups(channels: int) -> int:
    """GroupNorm groups: up to 32 as in DDPM, but at least 4 channels per group when possible.

    One channel per group would be an InstanceNorm, which makes each channel's mean zero and so
    erases any per-channel bias added before it.
    """
    return max(g for g in range(1, 33) if channels % g == 0 and (channels // g >= 4 or g == 1))


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of timesteps (Vaswani et al. 2017; DDPM appendix B).

    t: (B,) timesteps (any dtype); returns (B, dim) float32: [cos(t * f_k), sin(t * f_k)] with
    frequencies f_k = max_period ** (-k / (dim / 2)) for k = 0 .. dim/2 - 1.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _compiling() -> bool:
    """Whether torch.compile is tracing this call (torch >= 2.3 says so; older versions: never)."""
    return bool(getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)())


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of t followed by a two-layer MLP: (B,) -> (B, emb_dim)."""

    def __init__(self, base_channels: int, emb_dim: int):
        super().__init__()
        self.base_channels = base_channels
        self.mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.base_channels))


class ResidualBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, conditioned on the time (and label) embedding in between.

    The embedding sets a per-channel scale and shift applied *after* the second GroupNorm
    (Improved DDPM's "scale-shift norm"): a bias added before a normalisation can be removed by it.
    x: (B, in_ch, H, W), emb: (B, emb_dim) -> (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = GroupNorm32(num_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = GroupNorm32(num_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift   # (B, out_ch, H, W), modulated by t (and y)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, with a residual.

    x: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.qkv(self.norm(x)), "b (three h d) x y -> three b h (x y) d", three=3, h=self.heads)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) for the feature map x (B, C, H, W): (B, heads, H*W, H*W), each row
        (a query position) a distribution over the H*W positions it reads from (row-major: x * W + y)."""
        q, k, _ = self._qkv(x)
        return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self._qkv(x)
        # (B, heads, H*W, C / heads). On the CPU in float32 under autocast too: there the bf16 kernel was
        # 7 times slower (docs/RESULTS.md, session 19); CUDA's fp16/bf16 kernels accumulate in float32
        if x.device.type == "cpu":
            with without_autocast("cpu"):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b h (x y) d -> b (h d) x y", x=H, y=W)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling then a 3x3 convolution (no checkerboards)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attention: bool, heads: int):
        super().__init__()
        self.res = ResidualBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch, heads) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """The noise predictor eps_theta(x_t, t[, y]) of DDPM, configured by :class:`UNetConfig`.

    forward(x_t, t, y=None): x_t (B, C, H, W) in roughly [-1, 1] scaled by the schedule; t long
    (B,) in [0, T - 1]; y long (B,) in [0, num_classes] (``num_classes`` = "no label") or None.
    Returns the predicted noise, (B, C, H, W) (or v or x0 when ``config.prediction`` says so; the
    samplers convert, :mod:`ddpm_course.targets`). A conditional model called without ``y`` uses
    the "no label" token, i.e. it predicts unconditionally.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("UNet takes a UNetConfig or keyword arguments, not both")
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {describe(config)}")
        config.validate()
        self.config = config
        ch, emb_dim = config.base_channels, 4 * config.base_channels
        self.time_embed = TimeEmbedding(ch, emb_dim)
        self.label_embed = (
            nn.Embedding(config.num_classes + 1, emb_dim) if config.num_classes is not None else None
        )
        self.conv_in = nn.Conv2d(config.image_channels, ch, 3, padding=1)
        self.down, skip_channels = self._build_encoder(emb_dim)
        mid_ch = ch * config.channel_mults[-1]
        mid_attn = config.resolutions[-1] in config.attention_resolutions
        self.mid = nn.ModuleList([
            Block(mid_ch, mid_ch, emb_dim, config.dropout, mid_attn, config.attention_heads),
            Block(mid_ch, mid_ch, emb_dim, config.dropout, False, config.attention_heads),
        ])
        self.up = self._build_decoder(emb_dim, skip_channels)
        out_ch = ch * config.channel_mults[0]   # the decoder ends at the first level's width
        self.norm_out = GroupNorm32(num_groups(out_ch), out_ch)
        self.conv_out = zero_module(nn.Conv2d(out_ch, config.image_channels, 3, padding=1))

    def _build_encoder(self, emb_dim: int):
        cfg, ch = self.config, self.config.base_channels
        layers, skips, width = nn.ModuleList(), [ch], ch
        for level, (mult, res) in enumerate(zip(cfg.channel_mults, cfg.resolutions)):
            for _ in range(cfg.num_res_blocks):
                attn = res in cfg.attention_resolutions
                layers.append(Block(width, ch * mult, emb_dim, cfg.dropout, attn, cfg.attention_heads))
                width = ch * mult
                skips.append(width)
            if level < len(cfg.channel_mults) - 1:
                layers.append(Downsample(width))
                skips.append(width)
        return layers, skips

    def _build_decoder(self, emb_dim: int, skips: list):
        cfg, ch = self.config, self.config.base_channels
        layers, skips, width = nn.ModuleList(), list(skips), ch * cfg.channel_mults[-1]
        for level in reversed(range(len(cfg.channel_mults))):
            mult, res = cfg.channel_mults[level], cfg.resolutions[level]
            for _ in range(cfg.num_res_blocks + 1):
                attn = res in cfg.attention_resolutions
                layers.append(Block(width + skips.pop(), ch * mult, emb_dim, cfg.dropout, attn,
                                    cfg.attention_heads))
                width = ch * mult
            if level > 0:
                layers.append(Upsample(width))
        return layers

    @property
    def num_classes(self) -> int | None:
        """Number of classes (None if unconditional); the label ``num_classes`` means 'no label'."""
        return self.config.num_classes

    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Time embedding plus label embedding: (B, 4 * base_channels)."""
        emb = self.time_embed(t)
        if self.label_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes)
            emb = emb + self.label_embed(y)
        return emb

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self._check_inputs(x_t, t, y)
        emb = self.embed(t, y)
        h = self.conv_in(x_t)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, Block) else layer(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)
        for layer in self.up:
            if isinstance(layer, Block):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _check_inputs(self, x_t, t, y) -> None:
        cfg = self.config
        check_image_batch("x_t", x_t)
        expected = (cfg.image_channels, cfg.image_size, cfg.image_size)
        if tuple(x_t.shape[1:]) != expected:
            raise ValueError(f"x_t must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"for this UNetConfig, got {tuple(x_t.shape)}")
        # Value ranges are checked on CPU only: on a GPU, reading t.min() would stall every call; under
        # torch.compile, it would break the graph in two.
        cpu = x_t.device.type == "cpu" and not _compiling()
        check_timesteps("t", t, x_t.shape[0], None, values=cpu)
        if y is not None:
            if cfg.num_classes is None:
                raise ValueError("y was given but this UNet is unconditional (UNetConfig.num_classes=None); "
                                 "call model(x_t, t) or build it with num_classes set")
            check_labels("y", y, x_t.shape[0], cfg.num_classes, allow_null=True, values=cpu)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self) -> str:
        """One line for notebooks: parameters, resolutions, widths, attention, conditioning."""
        cfg = self.config
        widths = "/".join(str(cfg.base_channels * m) for m in cfg.channel_mults)
        res = "->".join(f"{r}x{r}" for r in cfg.resolutions)
        attn = ",".join(f"{r}x{r}" for r in cfg.attention_resolutions) or "none"
        cond = f"{cfg.num_classes} classes + 'no label'" if cfg.num_classes else "unconditional"
        return (f"UNet: {self.num_parameters() / 1e6:.2f}M parameters | resolutions {res} | "
                f"widths {widths} | {cfg.num_res_blocks} res blocks/level | attention at {attn} | {cond}")

