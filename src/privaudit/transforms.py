"""Transforms a copied image may have gone through, in named families.

One implementation serves three purposes: the augmentations the ``copydetect`` descriptor is
trained on, the planted copies of the recall benchmark, and the positive control of the copies
check. Every transform maps a working-format image (2D float32 in [0, 1]) to another of the same
shape, and draws its parameters from the ``rng`` it is given, so a seed fixes the result.

Families and their parameter ranges (mild: what a generator that memorised an image, or a
careless anonymisation step, would produce):

=============  =================================================================================
exact          unchanged
flip           mirrored left-right
crop           a crop of 80-95 % of each side, resized back
rotate         rotated by 3-10 degrees either way (edges replicated)
shift          translated by 2-6 % of the side (edges replicated)
gamma          gamma 0.6-0.8 or 1.25-1.6
window         intensity window narrowed to [lo, hi], lo in 0-0.15, hi in 0.8-1 (clipped, rescaled)
contrast       contrast x0.6-0.85 or x1.2-1.5 around the mean, brightness +-0.08
blur           Gaussian blur, sigma 0.6-1.5 px at 64 px (scaled with the image)
noise          Gaussian noise, sigma 0.02-0.06
jpeg           JPEG re-encoding at quality 20-60
combo          crop, then flip or not, then gamma, then noise
=============  =================================================================================
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def _to_pil(image: np.ndarray) -> object:
    from PIL import Image

    return Image.fromarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8), mode="L")


def _from_pil(pil: object) -> np.ndarray:
    return np.asarray(pil, dtype=np.float32) / np.float32(255.0)


def _affine(image: np.ndarray, *, angle: float = 0.0, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """Rotate (degrees), scale about the centre and translate (pixels); edges replicated."""
    from scipy.ndimage import affine_transform

    h, w = image.shape
    theta = np.deg2rad(angle)
    c, s = np.cos(theta), np.sin(theta)
    # Output pixel o maps to input pixel M @ (o - centre - shift) / scale + centre.
    matrix = np.array([[c, s], [-s, c]]) / scale
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - matrix @ (centre + np.array([dy, dx]))
    out = affine_transform(image.astype(np.float64), matrix, offset=offset, order=1, mode="nearest")
    return out.astype(np.float32)


def exact(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image.astype(np.float32, copy=True)


def flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1], dtype=np.float32)


def crop(image: np.ndarray, rng: np.random.Generator, *, low: float = 0.8, high: float = 0.95) -> np.ndarray:
    from PIL import Image

    h, w = image.shape
    ch, cw = (max(2, int(round(side * rng.uniform(low, high)))) for side in (h, w))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    # Float-mode PIL resize keeps the full precision of the working format.
    pil = Image.fromarray(np.ascontiguousarray(image[top : top + ch, left : left + cw], dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32).clip(0, 1)


def rotate(image: np.ndarray, rng: np.random.Generator, *, low: float = 3.0, high: float = 10.0) -> np.ndarray:
    return _affine(image, angle=float(rng.choice([-1, 1]) * rng.uniform(low, high))).clip(0, 1)


def shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape
    dy, dx = (float(rng.choice([-1, 1]) * rng.uniform(0.02, 0.06) * side) for side in (h, w))
    return _affine(image, dx=dx, dy=dy).clip(0, 1)


def gamma(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    g = rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 1.6)
    return np.power(np.clip(image, 0, 1), g).astype(np.float32)


def window(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    lo, hi = rng.uniform(0.0, 0.15), rng.uniform(0.8, 1.0)
    return ((np.clip(image, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = rng.uniform(0.6, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.5)
    mean = float(image.mean())
    return np.clip((image - mean) * k + mean + rng.uniform(-0.08, 0.08), 0, 1).astype(np.float32)


def blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma = rng.uniform(0.6, 1.5) * max(image.shape) / 64.0
    return gaussian_filter(image.astype(np.float64), sigma=sigma, mode="nearest").astype(np.float32)


def noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0.0, rng.uniform(0.02, 0.06), image.shape), 0, 1).astype(np.float32)


def jpeg(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    _to_pil(image).save(buf, format="JPEG", quality=int(rng.integers(20, 61)))
    buf.seek(0)
    with Image.open(buf) as pil:
        return _from_pil(pil.convert("L"))


def combo(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = crop(image, rng)
    if rng.random() < 0.5:
        out = flip(out, rng)
    return noise(gamma(out, rng), rng)


FAMILIES: dict[str, Transform] = {
    "exact": exact,
    "flip": flip,
    "crop": crop,
    "rotate": rotate,
    "shift": shift,
    "gamma": gamma,
    "window": window,
    "contrast": contrast,
    "blur": blur,
    "noise": noise,
    "jpeg": jpeg,
    "combo": combo,
}


def apply(family: str, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Apply the transform family ``family`` to ``image``."""
    try:
        transform = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown transform family {family!r}; known: {', '.join(FAMILIES)}") from None
    return transform(image, rng)
