"""A diagram of a U-Net drawn from the model itself: its blocks, resolutions and channels, the skip
connections, and where the time/label embedding and self-attention enter (notebook 02)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..unet import Block, Downsample, UNet, Upsample


@dataclass(frozen=True)
class Layer:
    """One top-level layer of a :class:`~ddpm_course.unet.UNet`, in forward order."""

    name: str         # "down.2", "mid.0", "conv_in", ...
    kind: str         # "conv", "res", "res+attn", "down", "up"
    part: str         # "input", "encoder", "middle", "decoder", "output"
    in_channels: int
    out_channels: int
    resolution: int   # output height (= width)
    skip_from: int | None = None   # index (in the layer list) of the encoder output it concatenates


def top_level_layers(model: UNet) -> list:
    """(name, module) of the U-Net's top-level layers in the order the forward pass runs them."""
    return ([("conv_in", model.conv_in)] + [(f"down.{i}", m) for i, m in enumerate(model.down)]
            + [(f"mid.{i}", m) for i, m in enumerate(model.mid)] + [(f"up.{i}", m) for i, m in enumerate(model.up)]
            + [("conv_out", model.conv_out)])


def layer_shapes(model: UNet, *inputs) -> list:
    """(name, module, input shape, output shape) of each top-level layer for one forward pass of
    ``model(*inputs)``, in order."""
    rows, hooks = [], []
    for name, module in top_level_layers(model):
        hooks.append(module.register_forward_hook(
            lambda m, i, o, name=name: rows.append((name, m, tuple(i[0].shape), tuple(o.shape)))))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return rows


def unet_layers(model: UNet) -> list:
    """The layers of ``model`` with their shapes, from one forward pass on a zero image."""
    cfg = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, cfg.image_channels, cfg.image_size, cfg.image_size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    layers, stack = [], []
    for name, module, shape_in, shape_out in layer_shapes(model, x, t):
        c_in, c_out, res = shape_in[1], shape_out[1], shape_out[-1]
        parts = {"conv_in": "input", "conv_out": "output", "down": "encoder", "mid": "middle", "up": "decoder"}
        part = parts[name.split(".")[0]]
        if isinstance(module, Block):
            kind = "res+attn" if not isinstance(module.attn, torch.nn.Identity) else "res"
        else:
            kind = "down" if isinstance(module, Downsample) else "up" if isinstance(module, Upsample) else "conv"
        skip = stack.pop() if part == "decoder" and kind.startswith("res") else None
        layers.append(Layer(name, kind, part, c_in, c_out, res, skip))
        if part in ("input", "encoder"):
            stack.append(len(layers) - 1)
    return layers


_COLOURS = {"conv": "#b7e1a1", "res": "#a6cee3", "res+attn": "#fdbf6f", "down": "#d9d9d9", "up": "#d9d9d9"}


def draw_unet(model: UNet, ax=None):
    """Draw ``model`` as a U: one box per layer (kind, channels in -> out), one row per resolution,
    the skip connections as arcs; return the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    layers = unet_layers(model)
    sizes = sorted({layer.resolution for layer in layers}, reverse=True)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(8, 1.05 * len(layers)), 1.5 + 1.3 * len(sizes)))
    y_of = {res: -row * 1.3 for row, res in enumerate(sizes)}
    for i, layer in enumerate(layers):
        x, y = i * 1.05, y_of[layer.resolution]
        ax.add_patch(FancyBboxPatch((x - 0.45, y - 0.4), 0.9, 0.8, boxstyle="round,pad=0.02",
                                    fc=_COLOURS[layer.kind], ec="black", lw=0.8))
        label = {"conv": "3x3 conv", "res": "res", "res+attn": "res\n+attn", "down": "down\n/2", "up": "up\nx2"}
        ax.text(x, y + 0.12, label[layer.kind], ha="center", va="center", fontsize=7, weight="bold")
        ax.text(x, y - 0.25, f"{layer.in_channels}->{layer.out_channels}", ha="center", va="center", fontsize=6)
        if i:
            prev = layers[i - 1]
            ax.add_patch(FancyArrowPatch(((i - 1) * 1.05 + 0.45, y_of[prev.resolution]), (x - 0.45, y),
                                         arrowstyle="-|>", mutation_scale=7, lw=0.8))
        if layer.skip_from is not None:
            xs = layer.skip_from * 1.05
            rad = -min(0.25, 0.9 / (x - xs))  # arcs about 0.45 high: under the row above
            ax.add_patch(FancyArrowPatch((xs, y + 0.4), (x, y + 0.4), connectionstyle=f"arc3,rad={rad:.3f}",
                                         arrowstyle="-|>", mutation_scale=6, lw=0.6, color="gray", ls="--"))
    for res, y in y_of.items():
        ax.text(-0.9, y, f"{res}x{res}", ha="right", va="center", fontsize=8)
    cond = "t (and the label y)" if model.num_classes else "t"
    ax.set_title(f"U-Net, {model.num_parameters() / 1e6:.2f}M parameters: {cond} -> sinusoidal embedding -> MLP -> "
                 "a scale and shift in every res block; dashed: skip connections (concatenated)", fontsize=9)
    ax.set_xlim(-1.8, len(layers) * 1.05)
    ax.set_ylim(min(y_of.values()) - 0.7, 1.0)
    ax.set_axis_off()
    return ax
