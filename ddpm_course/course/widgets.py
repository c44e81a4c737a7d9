"""Interactive views for the notebooks (ipywidgets): a slider over t, a slider over guidance.

Each view also has a static twin (a strip or a grid) for readers without a live kernel, e.g. on
GitHub. The samples behind the guidance slider are computed once, so moving it is instant.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from ..schedules import NoiseSchedule
from ..visualize import show_images


def noised(schedule: NoiseSchedule, images: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """x_t for every image at the same t (an int), with fixed noise."""
    tt = torch.full((images.shape[0],), t, dtype=torch.long, device=images.device)
    return schedule.add_noise(images, noise, tt)


def _readout(schedule: NoiseSchedule, t: int) -> str:
    abar = float(schedule.alphas_cumprod[t])
    return f"t={t}   alpha-bar={abar:.4f}   SNR={abar / (1 - abar):.3g}"


def noising_strip(schedules: dict, images: torch.Tensor, noise: torch.Tensor, ts) -> plt.Figure:
    """Static figure: one row per schedule, one column per t, the first image noised to x_t."""
    fig, axes = plt.subplots(len(schedules), len(ts), figsize=(1.3 * len(ts), 1.9 * len(schedules)), squeeze=False)
    for row, (name, schedule) in enumerate(schedules.items()):
        for col, t in enumerate(ts):
            ax = axes[row][col]
            ax.imshow(noised(schedule, images[:1], noise[:1], t)[0, 0].clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={t}\nab={float(schedule.alphas_cumprod[t]):.3f}", fontsize=8)
            if col == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return fig


def noising_slider(schedules: dict, images: torch.Tensor, *, seed: int = 0, t: int = 250):
    """A slider over t and a dropdown over schedules, showing ``images`` at x_t (same noise throughout)."""
    import ipywidgets as widgets

    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    T = next(iter(schedules.values())).T

    def draw(schedule: str, t: int) -> None:
        s = schedules[schedule]
        show_images(noised(s, images, noise, t).clamp(-1, 1), nrow=images.shape[0], title=_readout(s, t))
        plt.show()

    return widgets.interactive(
        draw, schedule=widgets.Dropdown(options=list(schedules), description="schedule"),
        t=widgets.IntSlider(value=t, min=0, max=T - 1, step=1, description="t", continuous_update=True,
                            layout=widgets.Layout(width="600px")))


def guidance_slider(samples_by_scale: dict, nrow: int = 10):
    """A slider over precomputed guidance scales: {scale: images (B, C, H, W)}."""
    import ipywidgets as widgets

    def draw(scale: float) -> None:
        show_images(samples_by_scale[scale], nrow=nrow, title=f"guidance scale w = {scale}")
        plt.show()

    return widgets.interactive(draw, scale=widgets.SelectionSlider(options=list(samples_by_scale),
                                                                   description="w", value=list(samples_by_scale)[0]))
