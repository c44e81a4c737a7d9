import imageio.v3 as iio
import pytest
import torch
from helpers import GaussianEps

from ddpm_course import NoiseSchedule, ProcessRecorder, process_grid, sample_ddim, save_gif, save_grid
from ddpm_course.visualize import frame_indices, to_uint8_grid


def test_uint8_grid_maps_range_and_layout():
    x = torch.stack([torch.full((1, 4, 4), -1.0), torch.full((1, 4, 4), 1.0), torch.zeros(1, 4, 4)])
    grid = to_uint8_grid(x, nrow=3, padding=1)
    assert grid.shape == (6, 16) and grid.dtype.name == "uint8"
    assert grid[1, 1] == 0 and grid[1, 6] == 255 and grid[1, 11] in (127, 128) and grid[0, 0] == 255
    rgb = to_uint8_grid(torch.zeros(2, 3, 4, 4), nrow=2)
    assert rgb.shape[-1] == 3


def test_frame_indices():
    assert frame_indices(50, 8) == [0, 7, 14, 21, 28, 35, 42, 49]
    assert frame_indices(10, 1) == [9]
    assert frame_indices(3, 10) == [0, 1, 2]


def test_recorder_process_grid_and_gif(tmp_path):
    """Report 001's figure: 8 seeds x 8 moments, the first the noise and the last the sample."""
    s = NoiseSchedule.linear(100)
    recorder = ProcessRecorder(num_steps=20, num_frames=8)
    x_T = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    x = sample_ddim(GaussianEps(s), s, (8, 1, 6, 6), steps=20, x_T=x_T, callback=recorder)
    frames = recorder.finish(x)
    assert len(frames) == 8 and recorder.timesteps[0] == 99 and recorder.timesteps[-1] == -1
    assert torch.equal(frames[0], x_T.clamp(-1, 1)) and torch.equal(frames[-1], x.clamp(-1, 1))
    grid = process_grid(frames)
    assert grid.shape == (64, 1, 6, 6)
    assert torch.equal(grid[0], frames[0][0]) and torch.equal(grid[7], frames[7][0])
    assert torch.equal(grid[8], frames[0][1])  # row 2 is the second seed
    path = save_gif(frames, tmp_path / "p.gif", nrow=4, fps=10, hold_last=2.0)
    assert iio.imread(path).shape[0] == 8
    durations = [iio.immeta(path, index=i)["duration"] for i in (0, 7)]
    assert durations == [100, 2100]  # ms: 10 frames per second, the result held 2 more seconds
    assert iio.imread(save_grid(grid, tmp_path / "g.png", nrow=8)).shape == (2 + 8 * 8, 2 + 8 * 8)
    with pytest.raises(ValueError, match="frames must hold at least one"):
        save_gif([], tmp_path / "e.gif")
    with pytest.raises(ValueError, match="kind must be one of"):
        ProcessRecorder(10, kind="eps")
