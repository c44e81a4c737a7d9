"""Argument checks shared by the public functions.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong type) with a message that names
the argument, what was given and what is allowed, so that a student sees at once which call was
wrong. Nothing here fixes a bad input silently.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def describe(value) -> str:
    """A short description of a value for error messages: tensors by dtype and shape."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{value!r} ({type(value).__name__})"


def check_choice(name: str, value, allowed: Sequence) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool) within ``[minimum, maximum]``; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """Check that ``value`` is a finite real number in the given range; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {describe(value)}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value < minimum or (open_min and value == minimum)):
        bound = ">" if open_min else ">="
        raise ValueError(f"{name} must be {bound} {minimum}, got {value}")
    if maximum is not None and (value > maximum or (open_max and value == maximum)):
        bound = "<" if open_max else "<="
        raise ValueError(f"{name} must be {bound} {maximum}, got {value}")
    return value


def check_image_batch(name: str, x) -> None:
    """Check that ``x`` is a float tensor of shape (B, C, H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {describe(x)}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(x)}")


def check_shape(name: str, shape) -> tuple[int, int, int, int]:
    """Check a sampler's ``shape`` argument: four positive ints (B, C, H, W)."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or len(shape) != 4:
        raise ValueError(f"{name} must be a tuple (B, C, H, W) of four ints, got {shape!r}")
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"{name} must hold four positive ints (B, C, H, W), got {shape!r}")
    return tuple(shape)


def check_timesteps(name: str, t, batch_size: int, T: int | None, *, values: bool = True) -> None:
    """Check that ``t`` is a long tensor of shape (batch_size,) with values in [0, T - 1].

    ``T=None`` (unknown, e.g. inside the model) only checks that timesteps are non-negative.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.long tensor of shape ({batch_size},), got {describe(t)}"
        )
    if t.dtype != torch.long:
        raise TypeError(f"{name} must be a torch.long tensor, got {describe(t)}")
    if t.shape != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},), got shape {tuple(t.shape)}")
    if not values or not t.numel():
        return
    if T is None:
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"{name} must hold non-negative timesteps, got minimum {int(t.min())}")
    elif t.numel() and (int(t.min()) < 0 or int(t.max()) > T - 1):
        raise ValueError(
            f"{name} must hold timesteps in [0, {T - 1}] (0-based, T={T}), "
            f"got values from {int(t.min())} to {int(t.max())}"
        )


def check_labels(
    name: str, y, batch_size: int, num_classes: int | None, *, allow_null: bool, values: bool = True
):
    """Check class labels: a long tensor (B,) with values in [0, num_classes - 1].

    With ``allow_null`` the value ``num_classes`` ("no label", for classifier-free guidance) is
    allowed too. ``num_classes=None`` (unknown) only checks that labels are non-negative.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.long tensor of shape ({batch_size},), got {describe(y)}")
    if y.dtype != torch.long:
        raise TypeError(f"{name} must be a torch.long tensor, got {describe(y)}")
    if y.shape != (batch_size,):
        raise ValueError(f"{name} must have shape ({batch_size},), got shape {tuple(y.shape)}")
    if not values or y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    top = None if num_classes is None else (num_classes if allow_null else num_classes - 1)
    if lo < 0 or (top is not None and hi > top):
        allowed = f"[0, {top}]" if top is not None else ">= 0"
        extra = f" ({num_classes} means 'no label')" if allow_null and num_classes else ""
        raise ValueError(f"{name} must hold class labels in {allowed}{extra}, got values from {lo} to {hi}")
