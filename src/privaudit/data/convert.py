"""One working format for every input: 2D grayscale float32 in [0, 1].

The rules, in order (also in the README):

* **Channels.** ``(H, W)`` is grayscale. ``(H, W, C)`` with C = 1, 2, 3 or 4 is channels-last:
  RGB and RGBA become luminance ``0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, the weights
  Pillow uses for "L"); alpha is dropped; grey+alpha keeps the grey. Anything else with three or
  more dimensions is a volume or a stack and is refused: privaudit audits 2D images for now.
* **Intensity.** 8-bit data is divided by 255, keeping its absolute display scale. Data with no
  fixed display range — 16- and 32-bit integers (often 10-12-bit detector values in a 16-bit
  container), DICOM after the modality LUT, and floats outside [0, 1] — is scaled by the image's
  own minimum and maximum. Floats already inside [0, 1] and booleans are kept as they are.
  A constant image becomes all zeros.
* **Non-finite values** (NaN, Inf) are refused, never silently replaced.
"""

from __future__ import annotations

import numpy as np

from privaudit.errors import InputError

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class ImageFormatError(InputError):
    """An array cannot be read as one 2D image (wrong rank, dtype or values)."""


def to_working(image: np.ndarray, *, where: str = "image", minmax: bool = False) -> np.ndarray:
    """Convert one decoded image to the working format (see the module docstring).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array of any real dtype.
        where: a name for error messages (a path or ``"train.npz[12]"``).
        minmax: scale by the image's own range whatever its dtype (used for DICOM).

    Returns:
        A new ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``.

    Raises:
        ImageFormatError: wrong rank, non-numeric dtype, or non-finite values.
    """
    arr = np.asarray(image)
    if arr.dtype.kind not in "biuf":
        raise ImageFormatError(f"{where}: unsupported pixel type {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] in (1, 2, 3, 4):
        arr = _to_grey(arr)
    elif arr.ndim != 2:
        raise ImageFormatError(
            f"{where}: got shape {arr.shape}, which looks like a 3D volume or image stack; "
            "privaudit audits 2D images only for now"
        )
    if min(arr.shape) < 1:
        raise ImageFormatError(f"{where}: empty image of shape {arr.shape}")
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.float32)
    if kind == "f" and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ImageFormatError(f"{where}: {bad} pixel(s) are NaN or infinite")
    if not minmax:
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / np.float32(255.0)
        if kind == "f" and arr.min() >= 0.0 and arr.max() <= 1.0:
            return arr.astype(np.float32)
    return _minmax(arr)


def _to_grey(arr: np.ndarray) -> np.ndarray:
    channels = arr.shape[-1]
    if channels in (1, 2):  # grey, grey + alpha
        return arr[..., 0]
    rgb = arr[..., :3]
    grey = rgb.astype(np.float64) @ _LUMA
    if arr.dtype == np.uint8:
        # Keep 8-bit RGB on the 8-bit scale so that it is divided by 255 like 8-bit grey.
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return grey


def _minmax(arr: np.ndarray) -> np.ndarray:
    values = arr.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((values - lo) / (hi - lo)).astype(np.float32)
