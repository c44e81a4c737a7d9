"""The notebooks' sliders: live controls over PNG frames drawn off-screen, never through pyplot."""

from __future__ import annotations

import torch
from nbformat.v4 import new_code_cell, new_notebook

from ddpm_course import NoiseSchedule
from ddpm_course.course.widgets import guidance_slider, noising_slider

PNG = b"\x89PNG"


def test_noising_slider_redraws_when_t_or_the_schedule_changes():
    schedules = {"linear": NoiseSchedule.linear(100), "cosine": NoiseSchedule.cosine(100)}
    box = noising_slider(schedules, torch.zeros(3, 1, 28, 28), t=10)
    (schedule, step), image = box.children[0].children, box.children[1]
    first = bytes(image.value)
    assert first.startswith(PNG)
    step.value = 90
    assert bytes(image.value).startswith(PNG) and bytes(image.value) != first
    later = bytes(image.value)
    schedule.value = "cosine"
    assert bytes(image.value) != later


def test_guidance_slider_shows_the_frame_of_each_scale():
    samples = {w: torch.full((4, 1, 28, 28), w / 5 - 0.5) for w in (0.0, 1.0, 3.0)}
    box = guidance_slider(samples, nrow=4)
    scale, image = box.children
    frames = set()
    for w in samples:
        scale.value = w
        assert bytes(image.value).startswith(PNG)
        frames.add(bytes(image.value))
    assert len(frames) == 3


SLIDERS = """import torch
from ddpm_course import NoiseSchedule
from ddpm_course.course.widgets import guidance_slider, noising_slider
schedules = {"linear": NoiseSchedule.linear(100), "cosine": NoiseSchedule.cosine(100)}
display(noising_slider(schedules, torch.zeros(4, 1, 28, 28)))
display(guidance_slider({w: torch.zeros(10, 1, 28, 28) + w / 10 for w in (0.0, 1.0, 3.0)}))
"""


def test_slider_cells_never_hang_under_the_inline_backend(tmp_path, monkeypatch):
    """What hung before (an interactive() redraw per slider under matplotlib's inline backend),
    executed as nbconvert does, with a time limit. (Once here; the notebooks with sliders were also
    executed 10 times each this way, see the issue's note.)"""
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)       # the kernel's default: the inline backend
    nb = new_notebook(cells=[new_code_cell("%matplotlib inline"), new_code_cell(SLIDERS)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[1].outputs
    assert [o["output_type"] for o in outputs] == ["display_data", "display_data"]
    assert all("application/vnd.jupyter.widget-view+json" in o["data"] for o in outputs)


def test_a_resumed_loss_plot_starts_from_the_earlier_history():
    from ddpm_course.course import LiveLossPlot

    plot = LiveLossPlot("resumed", every=1e9, history=[(10, 0.5), (20, 0.25)])
    plot({"step": 30, "loss": 0.2})
    assert plot.steps == [10, 20, 30] and plot.losses == [0.5, 0.25, 0.2] and plot.resumed_at == 20
    assert LiveLossPlot().resumed_at is None
