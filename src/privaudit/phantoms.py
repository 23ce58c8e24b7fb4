"""Procedural chest-radiograph-like phantoms with planted ground truth.

Each *patient* has a stable anatomy drawn once from a seeded generator: thorax outline, two lung
fields, heart, mediastinum, clavicles, a rib cage with its own count, spacing and curvature, and a
few patient-specific marks (calcified granulomas, surgical clips). Patients with label ``1`` also
carry a diffuse opacity in one lung. Each *scan* renders that anatomy under a new pose (rotation,
shift, scale), exposure (gain, gamma) and detector noise, so two scans of one patient are alike
but not identical, as real follow-up radiographs are.

:func:`make_study` builds what the demo and the tests need: a training and a holdout split by
patient, and two synthetic sets with recorded ground truth:

* ``leaky``: some training scans copied, exactly and under mild transforms, mixed with scans of
  new patients;
* ``clean``: scans of new patients only.

Everything is seeded: the same arguments give the same pixels.

Example:
    >>> study = make_study(n_train_patients=6, n_holdout_patients=4, n_synthetic=10, seed=1)
    >>> len(study.train), len(study.leaky), len(study.copies) > 0
    (24, 10, True)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privaudit._util import atomic_write_text
from privaudit.data.imageset import ImageSet

#: Transforms applied to planted copies, cycled in this order. All are mild enough that the
#: copy stays a copy of that scan (not merely the same patient); flips, crops and re-windowing
#: are harder cases for the learned embedders.
COPY_TRANSFORMS = ("exact", "noise", "intensity", "blur", "shift")


@dataclass(frozen=True)
class Anatomy:
    """A phantom patient's stable anatomy, in normalised coordinates ([-1, 1] across the image)."""

    thorax: tuple[float, float, float]  # centre y, half-width, half-height
    lungs: tuple[tuple[float, float, float, float], ...]  # (cx, cy, half-width, half-height) x2
    heart: tuple[float, float, float, float]
    mediastinum_width: float
    ribs: tuple[int, float, float, float, float]  # count, top, spacing, curvature, thickness
    clavicle_slope: float
    marks: tuple[tuple[float, float, float, float], ...]  # (x, y, radius, intensity)
    opacity: tuple[float, float, float] | None  # (x, y, radius) for label 1
    tissue: float  # soft-tissue density
    placement: tuple[float, float, float]  # patient size / field of view: scale, x and y offset
    texture: tuple[tuple[float, float, float, float], ...]  # (fx, fy, phase, amplitude) waves


@dataclass(frozen=True)
class PlantedCopy:
    """Ground truth for one copied scan in a leaky synthetic set."""

    synthetic_id: str
    train_id: str
    train_patient_id: str
    transform: str


@dataclass(frozen=True)
class PhantomStudy:
    """Training, holdout and two synthetic sets, with the planted copies of the leaky one."""

    train: ImageSet
    holdout: ImageSet
    leaky: ImageSet
    clean: ImageSet
    copies: tuple[PlantedCopy, ...]


def make_anatomy(rng: np.random.Generator, *, label: int) -> Anatomy:
    """Draw one patient's anatomy."""
    half_w = rng.uniform(0.70, 0.86)
    lung_w = rng.uniform(0.25, 0.33)
    lung_h = rng.uniform(0.48, 0.62)
    gap = rng.uniform(0.06, 0.12)
    lung_cy = rng.uniform(-0.08, 0.05)
    asym = rng.uniform(-0.04, 0.04)
    lungs = (
        (-(gap + lung_w) + asym, lung_cy, lung_w * rng.uniform(0.95, 1.05), lung_h * rng.uniform(0.95, 1.05)),
        ((gap + lung_w) + asym, lung_cy + rng.uniform(-0.03, 0.03), lung_w, lung_h),
    )
    heart = (rng.uniform(0.05, 0.20), lung_cy + rng.uniform(0.22, 0.34), rng.uniform(0.20, 0.30), rng.uniform(0.17, 0.24))
    ribs = (
        int(rng.integers(7, 11)),
        lung_cy - lung_h * rng.uniform(0.85, 1.0),
        rng.uniform(0.10, 0.15),
        rng.uniform(0.25, 0.65),
        rng.uniform(0.018, 0.032),
    )
    n_marks = int(rng.integers(1, 4))
    marks = []
    for _ in range(n_marks):
        side = lungs[int(rng.integers(0, 2))]
        marks.append(
            (
                side[0] + rng.uniform(-0.6, 0.6) * side[2],
                side[1] + rng.uniform(-0.7, 0.7) * side[3],
                rng.uniform(0.025, 0.06),
                rng.uniform(0.35, 0.6),
            )
        )
    opacity = None
    if label:
        side = lungs[int(rng.integers(0, 2))]
        opacity = (side[0] + rng.uniform(-0.3, 0.3) * side[2], side[1] + rng.uniform(0.0, 0.5) * side[3], rng.uniform(0.15, 0.25))
    return Anatomy(
        thorax=(rng.uniform(-0.05, 0.08), half_w, rng.uniform(0.85, 1.0)),
        lungs=lungs,
        heart=heart,
        mediastinum_width=rng.uniform(0.07, 0.12),
        ribs=ribs,
        clavicle_slope=rng.uniform(0.15, 0.35),
        marks=tuple(marks),
        opacity=opacity,
        tissue=rng.uniform(0.40, 0.58),
        placement=(rng.uniform(0.82, 1.08), rng.uniform(-0.10, 0.10), rng.uniform(-0.10, 0.10)),
        texture=tuple(
            (rng.uniform(-4.0, 4.0), rng.uniform(-4.0, 4.0), rng.uniform(0.0, 2 * math.pi), rng.uniform(0.02, 0.05))
            for _ in range(4)
        ),
    )


def _soft(inside: np.ndarray, edge: float) -> np.ndarray:
    """Smooth 0..1 step: 1 well inside (``inside`` > 0), 0 outside; anti-aliased edges."""
    return 0.5 * (1.0 + np.tanh(inside / edge))


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a: float, b: float, edge: float) -> np.ndarray:
    r = np.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2)
    return _soft(1.0 - r, edge / min(a, b))


def render(
    anatomy: Anatomy,
    *,
    size: int = 64,
    angle: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Render the noise-free attenuation map of ``anatomy`` under a pose, as float64 in ~[0, 1]."""
    lin = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(lin, lin, indexing="ij")
    # Inverse pose: image coordinates -> anatomical coordinates.
    c, s = math.cos(angle), math.sin(angle)
    p_scale, p_dx, p_dy = anatomy.placement
    xs = (x - shift[0] - p_dx) / (scale * p_scale)
    ys = (y - shift[1] - p_dy) / (scale * p_scale)
    u = c * xs + s * ys
    v = -s * xs + c * ys
    edge = 2.0 / size  # about one pixel

    ty, tw, th = anatomy.thorax
    body = _ellipse(u, v, 0.0, ty, tw, th + 0.4, edge)
    texture = sum(a * np.cos(math.pi * (fx * u + fy * v) + ph) for fx, fy, ph, a in anatomy.texture)
    img = 0.04 + (anatomy.tissue + texture) * body
    lung_mask = np.zeros_like(u)
    for cx, cy, a, b in anatomy.lungs:
        lung_mask = np.maximum(lung_mask, _ellipse(u, v, cx, cy, a, b, 2 * edge))
    img = img - 0.30 * lung_mask * body
    # Ribs: curved bands across each lung field, visible mostly over the lungs.
    count, top, spacing, curvature, thick = anatomy.ribs
    ribs = np.zeros_like(u)
    for k in range(count):
        centre = top + k * spacing + curvature * (u**2) * 0.5
        ribs = np.maximum(ribs, _soft(thick - np.abs(v - centre), edge))
    img = img + 0.09 * ribs * lung_mask
    # Clavicles.
    for sign in (-1.0, 1.0):
        line = -0.75 + anatomy.clavicle_slope * (sign * u - 0.1)
        clav = _soft(0.035 - np.abs(v - line), edge) * _soft(0.75 - np.abs(u), edge) * _soft(sign * u, edge)
        img = img + 0.15 * clav * body
    # Mediastinum and spine.
    img = img + 0.18 * _soft(anatomy.mediastinum_width - np.abs(u), edge) * body
    hx, hy, ha, hb = anatomy.heart
    img = img + 0.22 * _ellipse(u, v, hx, hy, ha, hb, 2 * edge)
    for mx, my, r, intensity in anatomy.marks:
        img = img + intensity * _ellipse(u, v, mx, my, r, r, edge)
    if anatomy.opacity is not None:
        ox, oy, r = anatomy.opacity
        img = img + 0.16 * np.exp(-(((u - ox) ** 2 + (v - oy) ** 2) / (2 * r * r))) * lung_mask
    return img


def scan(anatomy: Anatomy, rng: np.random.Generator, *, size: int = 64) -> np.ndarray:
    """One radiograph of ``anatomy``: random pose, exposure and noise; float32 in [0, 1]."""
    img = render(
        anatomy,
        size=size,
        angle=math.radians(rng.uniform(-7.0, 7.0)),
        shift=(rng.uniform(-0.10, 0.10), rng.uniform(-0.10, 0.10)),
        scale=rng.uniform(0.90, 1.10),
    )
    gain = rng.uniform(0.9, 1.1)
    gamma = rng.uniform(0.85, 1.15)
    img = np.clip(img * gain, 0.0, 1.0) ** gamma
    img = img + rng.normal(0.0, rng.uniform(0.01, 0.025), img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def transform_copy(image: np.ndarray, transform: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one of :data:`COPY_TRANSFORMS` to a training image (a copy a generator could emit)."""
    img = image.astype(np.float64)
    if transform == "exact":
        out = img
    elif transform == "noise":
        out = img + rng.normal(0.0, 0.02, img.shape)
    elif transform == "intensity":
        out = np.clip(img * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05), 0, 1) ** rng.uniform(0.8, 1.25)
    elif transform == "blur":
        k = np.array([0.25, 0.5, 0.25])
        out = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 1, mode="edge"), k, "valid"), 1, img)
        out = np.apply_along_axis(lambda r: np.convolve(np.pad(r, 1, mode="edge"), k, "valid"), 0, out)
    elif transform == "shift":
        dy, dx = (int(v) for v in rng.choice([-1, 1], size=2))
        out = np.roll(np.pad(img, 1, mode="edge"), (dy, dx), axis=(0, 1))[1:-1, 1:-1]
    else:
        raise ValueError(f"unknown copy transform {transform!r}; expected one of {COPY_TRANSFORMS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _patients(rng: np.random.Generator, prefix: str, n: int, *, start: int = 0, positive_rate: float = 0.4) -> list[tuple[str, Anatomy, int]]:
    out = []
    for i in range(n):
        label = int(rng.random() < positive_rate)
        out.append((f"{prefix}{start + i:04d}", make_anatomy(rng, label=label), label))
    return out


def _scans(rng: np.random.Generator, patients: list[tuple[str, Anatomy, int]], scans: int, size: int, id_prefix: str) -> ImageSet:
    images, ids, pids, labels = [], [], [], []
    for pid, anatomy, label in patients:
        for k in range(scans):
            images.append(scan(anatomy, rng, size=size))
            ids.append(f"{id_prefix}{pid}_{k}.png")
            pids.append(pid)
            labels.append(str(label))
    return ImageSet(images=tuple(images), ids=tuple(ids), patient_ids=tuple(pids), labels=tuple(labels), source="phantoms", kind="memory")


def make_study(
    *,
    n_train_patients: int = 60,
    n_holdout_patients: int = 40,
    scans_per_patient: int = 4,
    n_synthetic: int = 200,
    copy_fraction: float = 0.2,
    size: int = 64,
    seed: int = 0,
) -> PhantomStudy:
    """Build a seeded phantom study (see the module docstring).

    Args:
        n_train_patients: patients in training.
        n_holdout_patients: other patients, in the real holdout.
        scans_per_patient: scans per real patient.
        n_synthetic: images in each synthetic set.
        copy_fraction: share of the leaky set that copies training scans (distinct scans,
            transforms cycled through :data:`COPY_TRANSFORMS`).
        size: image side in pixels.
        seed: the seed; everything else is derived from it.
    """
    if not 0.0 <= copy_fraction <= 1.0:
        raise ValueError(f"copy_fraction must lie in [0, 1]; got {copy_fraction}")
    root = np.random.SeedSequence(seed)
    rng_train, rng_hold, rng_leaky, rng_clean, rng_copy = (np.random.default_rng(s) for s in root.spawn(5))
    train = _scans(rng_train, _patients(rng_train, "P", n_train_patients), scans_per_patient, size, "train/")
    holdout = _scans(rng_hold, _patients(rng_hold, "H", n_holdout_patients), scans_per_patient, size, "holdout/")
    n_copies = min(int(round(copy_fraction * n_synthetic)), len(train))
    n_new = n_synthetic - n_copies

    def new_patient_images(rng: np.random.Generator, prefix: str, n: int) -> tuple[list[np.ndarray], list[str]]:
        # One scan per new patient: a generator samples new anatomy every time.
        pats = _patients(rng, prefix, n)
        return [scan(a, rng, size=size) for _, a, _ in pats], [str(lbl) for _, _, lbl in pats]

    new_images, new_labels = new_patient_images(rng_leaky, "L", n_new)
    picked = rng_copy.choice(len(train), size=n_copies, replace=False)
    copy_images, copy_labels, sources = [], [], []
    for j, ti in enumerate(picked):
        transform = COPY_TRANSFORMS[j % len(COPY_TRANSFORMS)]
        copy_images.append(transform_copy(train.images[ti], transform, rng_copy))
        copy_labels.append(train.labels[ti] if train.labels else "0")
        sources.append((int(ti), transform))
    order = rng_copy.permutation(n_synthetic)  # copies scattered among new images, ids give nothing away
    all_images = new_images + copy_images
    all_labels = new_labels + copy_labels
    leaky_ids = [f"synthetic/img_{k:05d}.png" for k in range(n_synthetic)]
    leaky_images = [all_images[i] for i in order]
    leaky_labels = [all_labels[i] for i in order]
    copies = []
    for pos, i in enumerate(order):
        if i >= n_new:
            ti, transform = sources[i - n_new]
            copies.append(PlantedCopy(leaky_ids[pos], train.ids[ti], train.patient_ids[ti] if train.patient_ids else "", transform))
    leaky = ImageSet(images=tuple(leaky_images), ids=tuple(leaky_ids), labels=tuple(leaky_labels), source="phantoms:leaky", kind="memory")
    clean_images, clean_labels = new_patient_images(rng_clean, "C", n_synthetic)
    clean = ImageSet(
        images=tuple(clean_images),
        ids=tuple(f"synthetic/img_{k:05d}.png" for k in range(n_synthetic)),
        labels=tuple(clean_labels),
        source="phantoms:clean",
        kind="memory",
    )
    return PhantomStudy(
        train=_with_source(train, "phantoms:train"),
        holdout=_with_source(holdout, "phantoms:holdout"),
        leaky=leaky,
        clean=clean,
        copies=tuple(sorted(copies, key=lambda c: c.synthetic_id)),
    )


def _with_source(images: ImageSet, source: str) -> ImageSet:
    return ImageSet(images=images.images, ids=images.ids, patient_ids=images.patient_ids, labels=images.labels, source=source, kind="memory")


def write_study(study: PhantomStudy, folder: str | Path) -> dict[str, Path]:
    """Write the study as 8-bit PNG files with manifest CSVs, as a user's data would look.

    Layout: ``folder/{train,holdout,leaky,clean}/...png``, one manifest ``folder/<set>.csv`` per
    set (``path, patient_id, label``; synthetic sets have no patient ids) and
    ``folder/leaky_truth.csv`` with the planted copies.

    Returns:
        The manifest path of each set, keyed ``train``, ``holdout``, ``leaky``, ``clean``.
    """
    from PIL import Image

    folder = Path(folder)
    manifests: dict[str, Path] = {}
    for name, images in (("train", study.train), ("holdout", study.holdout), ("leaky", study.leaky), ("clean", study.clean)):
        rows = []
        for k, (image_id, img) in enumerate(zip(images.ids, images.images)):
            rel = f"{name}/{Path(image_id).name}"
            out = folder / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="L").save(out)
            row = {"path": rel, "label": images.labels[k] if images.labels else ""}
            if images.patient_ids is not None:
                row["patient_id"] = images.patient_ids[k]
            rows.append(row)
        columns = ["path", "patient_id", "label"] if images.patient_ids is not None else ["path", "label"]
        manifests[name] = folder / f"{name}.csv"
        atomic_write_text(manifests[name], _csv_text(columns, rows))
    truth_rows = [
        {
            "synthetic_path": f"leaky/{Path(c.synthetic_id).name}",
            "train_path": f"train/{Path(c.train_id).name}",
            "train_patient_id": c.train_patient_id,
            "transform": c.transform,
        }
        for c in study.copies
    ]
    atomic_write_text(folder / "leaky_truth.csv", _csv_text(["synthetic_path", "train_path", "train_patient_id", "transform"], truth_rows))
    return manifests


def _csv_text(columns: list[str], rows: list[dict[str, str]]) -> str:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
