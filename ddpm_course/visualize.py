"""Figures: image grids, process grids (samples x moments) and GIFs of the denoising.

Samplers never plot; they report each step through ``callback(i, t, x_t, x0)``. A
:class:`ProcessRecorder` is such a callback: it keeps a few evenly spaced moments of the process,
which :func:`process_grid` lays out as one row per sample and :func:`save_gif` animates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._checks import check_choice, check_image_batch, check_int
from .files import atomic_write

IMAGE_SUFFIXES = (".png", ".gif", ".jpg", ".jpeg", ".webp", ".bmp")


def _check_suffix(path, what: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{what} must end in an image extension ({', '.join(IMAGE_SUFFIXES)}), got {str(path)!r}")
    return path


def check_image_path(path, what: str = "path") -> Path:
    """Check, before any work, that ``path`` ends in an image extension and that its folder can be
    written (creating it); a ValueError names the path and the problem."""
    from .files import check_writable_folder

    path = _check_suffix(path, what)
    check_writable_folder(path.parent, f"the folder of {what}")
    return path


def write_image(path, image: np.ndarray, **kwargs) -> Path:
    """Encode ``image`` (H, W), (H, W, 3) or frames (K, H, W, 3) by the path's extension and write it
    atomically; ``kwargs`` go to imageio (e.g. GIF durations)."""
    import imageio.v3 as iio

    path = _check_suffix(path, "path")   # the folder is checked before the work, not per image
    data = iio.imwrite("<bytes>", image, extension=path.suffix.lower(), **kwargs)
    return atomic_write(path, lambda f: f.write(data))


def to_uint8_grid(x: torch.Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """Lay a batch (B, C, H, W) in [-1, 1] out as one image: uint8 array (H', W') or (H', W', 3)."""
    from torchvision.utils import make_grid  # here, not at import: torchvision takes seconds to import

    check_image_batch("x", x)
    grid = make_grid(((x.detach().float().cpu().clamp(-1, 1) + 1) / 2), nrow=nrow, padding=padding,
                     pad_value=1.0)
    grid = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return grid[..., 0] if x.shape[1] == 1 else grid


def save_grid(x: torch.Tensor, path, nrow: int = 8) -> Path:
    """Save a batch (B, C, H, W) in [-1, 1] as one PNG grid; return the path."""
    return write_image(path, to_uint8_grid(x, nrow))


def show_images(x: torch.Tensor, nrow: int = 8, title: str | None = None, ax=None, scale: float = 0.6):
    """Draw a batch (B, C, H, W) in [-1, 1] as a grid with matplotlib; return the Axes."""
    import matplotlib.pyplot as plt

    grid = to_uint8_grid(x, nrow)
    if ax is None:
        h, w = grid.shape[:2]
        _, ax = plt.subplots(figsize=(max(w / 28 * scale, 2), max(h / 28 * scale, 2)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def frame_indices(num_steps: int, num_frames: int) -> list:
    """``num_frames`` step indices evenly spread over 0 .. num_steps - 1, both ends included."""
    check_int("num_frames", num_frames, minimum=1)
    if num_frames == 1 or num_steps == 1:
        return [num_steps - 1]
    return sorted({round(i * (num_steps - 1) / (num_frames - 1)) for i in range(num_frames)})


class ProcessRecorder:
    """A sampler callback that keeps the process at evenly spaced steps (on the CPU).

    kind: "x_t" keeps the noisy sample the model saw (the first frame is the initial noise),
    "x0" keeps the model's prediction of the clean image. After sampling, call
    ``recorder.finish(samples)`` to append the final samples as the last frame.
    """

    def __init__(self, num_steps: int, num_frames: int = 8, kind: str = "x_t"):
        check_choice("kind", kind, ("x_t", "x0"))
        self.kind = kind
        self.keep = set(frame_indices(num_steps, max(num_frames - 1, 1)))
        self.frames: list = []
        self.timesteps: list = []

    def __call__(self, i: int, t: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        if i in self.keep:
            self.frames.append((x_t if self.kind == "x_t" else x0).detach().float().cpu().clamp(-1, 1))
            self.timesteps.append(t)

    def finish(self, samples: torch.Tensor) -> list:
        """Append the final samples (t = 0 done) and return the frames."""
        self.frames.append(samples.detach().float().cpu().clamp(-1, 1))
        self.timesteps.append(-1)
        return self.frames


def process_grid(frames: list) -> torch.Tensor:
    """Arrange frames [(B, C, H, W)] * K as (B * K, C, H, W): row b shows sample b over time.

    Show it with ``nrow=len(frames)`` (e.g. 8 seeds x 8 moments).
    """
    return torch.stack(frames, dim=1).flatten(0, 1)


def save_gif(frames: list, path, nrow: int = 8, fps: float = 10.0, hold_last: float = 2.0) -> Path:
    """Animate frames [(B, C, H, W)] (each shown as a grid) into a looping GIF at ``fps`` frames
    per second; the last frame stays on screen ``hold_last`` seconds so the result can be seen."""
    if not frames:
        raise ValueError("frames must hold at least one (B, C, H, W) tensor, got an empty list")
    images = np.stack([to_uint8_grid(f, nrow) for f in frames])
    if images.ndim == 3:  # grey -> RGB: Pillow's GIF writer fails on some multi-frame grey images
        images = np.repeat(images[..., None], 3, axis=-1)
    durations = [1000.0 / fps] * (len(frames) - 1) + [1000.0 / fps + 1000.0 * hold_last]
    return write_image(path, images, duration=durations, loop=0)
