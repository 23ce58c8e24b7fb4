"""Explaining a flagged pair: pixel SSIM and the likely transform between the two images.

Both images are resized to 64 x 64 and compared in pixels, independently of the embedding space
that flagged them, so a reviewer gets a second, simple line of evidence. The transform is a
*likely* one, found by trying the inverse of each family (flip, rescale, shift, rotation) and
keeping what raises the pixel correlation, then comparing intensity statistics and
high-frequency energy. It can be wrong, and says "likely".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64


@dataclass(frozen=True)
class PairExplanation:
    """Pixel evidence for one flagged pair.

    Attributes:
        ssim: structural similarity of the two images at 64 x 64 (1 = identical).
        correlation: Pearson correlation of the pixels at 64 x 64, after the best alignment.
        likely_transform: e.g. ``"identical"``, ``"flip + intensity"``, ``"crop/rescale"``.
    """

    ssim: float
    correlation: float
    likely_transform: str


def _resize(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    from privaudit.embed.base import Preprocessing

    return Preprocessing(size=(size, size)).apply([image])[0, 0].numpy().astype(np.float64)


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float = 1.0) -> float:
    """Mean structural similarity (Wang et al., IEEE TIP 2004) of two same-shape images.

    Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, as in the paper and in
    scikit-image's ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``,
    which the tests use as the reference. Written here to avoid a 30 MB dependency for one
    function.
    """
    from scipy.ndimage import gaussian_filter

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim needs images of one shape; got {a.shape} and {b.shape}")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: np.ndarray) -> np.ndarray:
        return gaussian_filter(x, sigma=1.5, truncate=3.5, mode="reflect")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    pad = 3  # scikit-image crops (win_size - 1) // 2 = 3 pixels at the border for sigma 1.5
    return float(s[pad:-pad, pad:-pad].mean())


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _zoom(image: np.ndarray, factor: float) -> np.ndarray:
    """Centre crop of 1/factor of the side, resized back (factor > 1 zooms in)."""
    from scipy.ndimage import affine_transform

    centre = (np.array(image.shape) - 1) / 2.0
    matrix = np.eye(2) / factor
    return affine_transform(image, matrix, offset=centre - matrix @ centre, order=1, mode="nearest")


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    from scipy.ndimage import shift

    return shift(image, (dy, dx), order=0, mode="nearest")


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.ndimage import rotate

    return rotate(image, degrees, reshape=False, order=1, mode="nearest")


def _best_shift(a: np.ndarray, b: np.ndarray, max_shift: int = 6) -> tuple[int, int]:
    """The integer shift of ``a`` that best matches ``b`` (phase correlation)."""
    fa, fb = np.fft.fft2(a - a.mean()), np.fft.fft2(b - b.mean())
    cross = fb * np.conj(fa)
    cross /= np.abs(cross) + 1e-12
    r = np.real(np.fft.ifft2(cross))
    dy, dx = np.unravel_index(int(np.argmax(r)), r.shape)
    dy = dy - a.shape[0] if dy > a.shape[0] // 2 else dy
    dx = dx - a.shape[1] if dx > a.shape[1] // 2 else dx
    return (int(np.clip(dy, -max_shift, max_shift)), int(np.clip(dx, -max_shift, max_shift)))


def _hf_energy(x: np.ndarray) -> float:
    """High-frequency share of the image's variance (blind to contrast changes)."""
    from scipy.ndimage import laplace

    return float(np.var(laplace(x, mode="nearest")) / (np.var(x) + 1e-12))


def explain_pair(synthetic: np.ndarray, train: np.ndarray) -> PairExplanation:
    """SSIM, correlation and a likely transform taking ``train`` to ``synthetic``."""
    a, b = _resize(synthetic), _resize(train)
    score = ssim(a, b)
    if np.abs(a - b).max() < 1.0 / 255.0:
        return PairExplanation(score, 1.0, "identical")
    labels = []
    base = _corr(a, b)
    gain = 0.01  # an alignment must raise the correlation by this much to count
    if _corr(a[:, ::-1], b) > base + gain:
        labels.append("flip")
        a = np.ascontiguousarray(a[:, ::-1])
        base = _corr(a, b)
    # Geometric: rescale (a crop resized back is a zoom-in), then shift, then rotation.
    zooms = {f: _corr(_zoom(b, f), a) for f in (1.05, 1.1, 1.15, 1.2, 1.3)}
    f_best = max(zooms, key=zooms.get)
    if zooms[f_best] > base + gain:
        labels.append("crop/rescale")
        b = _zoom(b, f_best)
        base = zooms[f_best]
    dy, dx = _best_shift(b, a)
    if (dy or dx) and _corr(_shift(b, dy, dx), a) > base + gain:
        labels.append("shift")
        b = _shift(b, dy, dx)
        base = _corr(b, a)
    angles = {d: _corr(_rotate(b, d), a) for d in (-12, -8, -4, 4, 8, 12)}
    d_best = max(angles, key=angles.get)
    if angles[d_best] > base + gain:
        labels.append("rotation")
        b = _rotate(b, d_best)
        base = angles[d_best]
    # Photometric, on the aligned pair.
    if abs(a.mean() - b.mean()) > 0.03 or not 0.9 <= (a.std() + 1e-9) / (b.std() + 1e-9) <= 1.1:
        labels.append("intensity")
    ratio = (_hf_energy(a) + 1e-12) / (_hf_energy(b) + 1e-12)
    if ratio > 1.5:
        labels.append("noise")
    elif ratio < 1 / 1.5:
        labels.append("blur")
    return PairExplanation(score, base, " + ".join(labels) if labels else "near-identical")
