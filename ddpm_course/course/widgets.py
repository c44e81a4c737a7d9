"""Interactive views for the notebooks (ipywidgets): a slider over t, a slider over guidance.

Each view also has a static twin (a strip or a grid) for readers without a live kernel, e.g. on
GitHub. The samples behind the guidance slider are computed once, so moving it is instant.

The sliders never draw through pyplot or the inline backend: each frame is rendered off-screen by
a bare matplotlib ``Figure`` into PNG bytes shown by an ``ipywidgets.Image``, updated when a control
changes. (``widgets.interactive`` with ``plt.show()`` inside an output widget sometimes hung
``jupyter nbconvert --execute`` under the inline backend; this structure has nothing to flush.)
"""

from __future__ import annotations

import io

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


def render_png(images: torch.Tensor, nrow: int, title: str, scale: float = 0.6) -> bytes:
    """A grid of ``images`` (B, C, H, W) in [-1, 1] with a title, as PNG bytes, drawn off-screen."""
    from matplotlib.figure import Figure  # not pyplot: no figure manager, no inline backend

    rows = -(-images.shape[0] // nrow)
    width, height = nrow * images.shape[-1] / 28 * scale, rows * images.shape[-2] / 28 * scale
    fig = Figure(figsize=(max(width, 2.0), max(height, 1.0) + 0.4))
    show_images(images, nrow=nrow, title=title, ax=fig.subplots())
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def noising_slider(schedules: dict, images: torch.Tensor, *, seed: int = 0, t: int = 250):
    """A slider over t and a dropdown over schedules, showing ``images`` at x_t (same noise throughout)."""
    import ipywidgets as widgets

    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    T = next(iter(schedules.values())).T
    schedule = widgets.Dropdown(options=list(schedules), description="schedule")
    step = widgets.IntSlider(value=t, min=0, max=T - 1, step=1, description="t", continuous_update=True,
                             layout=widgets.Layout(width="600px"))
    image = widgets.Image(format="png")

    def update(_=None) -> None:
        s = schedules[schedule.value]
        image.value = render_png(noised(s, images, noise, step.value).clamp(-1, 1), images.shape[0],
                                 _readout(s, step.value))

    schedule.observe(update, "value")
    step.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox([schedule, step]), image])


def guidance_slider(samples_by_scale: dict, nrow: int = 10):
    """A slider over precomputed guidance scales: {scale: images (B, C, H, W)}."""
    import ipywidgets as widgets

    scales = list(samples_by_scale)
    scale = widgets.SelectionSlider(options=scales, description="w", value=scales[0])
    frames = {w: render_png(x, nrow, f"guidance scale w = {w}") for w, x in samples_by_scale.items()}
    image = widgets.Image(value=frames[scales[0]], format="png")
    scale.observe(lambda change: setattr(image, "value", frames[change["new"]]), "value")
    return widgets.VBox([scale, image])
