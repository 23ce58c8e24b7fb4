"""Aligned correlation: is one image a flipped, rotated, cropped or shifted copy of another?

An embedding space compares images as they are: a copy that was mirrored, cropped and rescaled,
rotated by a few degrees or shifted by a few pixels lands away from its source (measured on the
COVID-19 collection: 5 to 60 % of such copies found by ``pixels`` at 1 % FPR). This module undoes
those transforms explicitly, as image copy-detection pipelines verify their candidates
(retrieve, then align; Douze et al., "The 2021 Image Similarity Dataset and Challenge"):

1. **Candidates.** Every image is reduced to ``retrieval_side`` px (16: a shift of a few percent
   moves it by less than a pixel). The base images are also cut to 92 % and 84 % of their side,
   at the centre and in each corner, the 84 % also at the middle of each edge (what a crop
   keeps, rescaled: 15 views),
   and each query is searched unflipped and mirrored, each rotated by -6, 0 and 6 degrees, so a
   base image is a candidate when any of its views is among a query's ``candidates`` most
   similar to any of the query's views (exact FAISS search).
2. **Alignment.** The query, at ``size`` px (32), is mirrored or not, rotated back by each angle of
   ``angles``; its central ``core`` share is one template (a shift or rotation filled the
   border in), and the whole of it (``crop_core``) is shrunk by each pair of factors of
   ``crops`` below 1, vertically and horizontally, that differ by at most ``aspect`` (a crop of
   80 % of the height and 90 % of the width enlarged the content by 1/0.8 and 1/0.9, and
   keeps no filled border; the pairs that differ are tried unrotated). Each of these templates is slid
   over every candidate at every integer offset, and the normalised cross-correlation (NCC,
   the Pearson correlation of the template with the window it covers) is computed for all
   offsets at once (window norms from integral images, as in Lewis, "Fast normalized
   cross-correlation", 1995): a shift is found exactly, the core keeps the filled-in corners
   of a rotation or shift out of the comparison, and the NCC ignores brightness and contrast changes.

The **aligned similarity** of a query with a base set is the highest NCC over its candidates,
and which candidate gave it. It is a similarity like a cosine, so the copies check scores and
calibrates it the same way as an embedding space (against real non-members), under the name
``aligned``.

Why written here: no installed library does template matching over a grid of transforms
(OpenCV's ``matchTemplate`` and scikit-image's ``match_template`` do the sliding NCC, are not
dependencies, and would still need the grid and the batching); a grouped torch convolution
does the work.

Cost: one query against one candidate is ``AlignOptions.n_templates`` templates (78 by default:
the five square factors at five angles and 14 rectangular pairs, each mirrored or not) slid over
a ``size``-px image (32), all in one grouped convolution per batch of queries. Measured
in the copies check of a 10,000 x 10,000 x 2,000 phantom study (``benchmarks/audit_scale.py``,
2 cores, idle): about 2 ms per image and base set searched, plus the candidate search
(62 s of the check's 119 s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from privaudit.embed.base import resized
from privaudit.search import knn

__all__ = ["AlignOptions", "AlignedImages", "Aligned", "prepare", "as_role", "match", "aligned_similarity", "candidates"]


@dataclass(frozen=True)
class AlignOptions:
    """How images are aligned (see the module docstring).

    Attributes:
        size: side in px at which templates are matched.
        retrieval_side: side in px of the candidate search.
        candidates: base images retrieved per query and base set.
        angles: rotations undone, in degrees.
        crops: shrink factors of the template (1 / the zoom a crop applied). Steps of 0.05
            (five factors): against steps of 0.07 (four), combined transforms on
            PneumoniaMNIST 69 against 66 % (aligned alone, 1 % FPR, with ``smooth`` 0.7 and
            ``core`` 0.8), COVID-19 99 against 93 %.
        retrieval_crops: shares of the side of each base image searched as extra views.
        retrieval_corners: cut those shares in each corner as well as at the centre (a crop
            lies anywhere in the image: measured on the COVID-19 collection, the source of a
            cropped copy was a candidate for 94 % of them with central cuts alone, 100 % with
            the corners).
        core: central share of the query used as the template where no crop is undone (keeps a
            rotation's or shift's filled-in border out). Without the blur, 0.7 was the best of 0.6, 0.7 and 0.8 on the
            COVID-19 collection (recall at 1 % FPR of combined transforms 88, 99 and 93 %); with
            it and the five crop factors, 0.8 found 99 % there and 69 % of PneumoniaMNIST's
            (0.7 with the blur and four factors: 99 and 63 %), and 98 % of its shifts (94 %).
        smooth: standard deviation in px (at ``size``) of a Gaussian blur applied to every image
            before matching; 0 for none. Pixel noise lowers a copy's NCC, and the blur averages
            it away while the low frequencies that carry an image's anatomy stay. 0.7 on
            PneumoniaMNIST (28 px; aligned alone, 1 % FPR): noisy copies 62 -> 92 %, combined
            transforms 50 -> 63 %, geometric families unchanged (1.0 and 1.5: no better for
            noise, worse for crops and shifts); on COVID-19 (256 px) every family 98-100 %
            with or without it (``benchmarks/copy_recall.py --align smooth=...``, 2026-12-07).
        aspect: the largest difference between a template's vertical and horizontal crop
            factors (0: the same factor both ways). A crop need not keep the image's aspect
            ratio (the benchmark's crops draw height and width apart, each 80-95 %), and a
            square template misses a crop of 80 x 95 % by up to 2 px at its edges. 0.1 (19
            pairs of the five factors, against 5, each at every angle): PneumoniaMNIST crops
            88 -> 92 %, combined transforms 69 -> 78 % (aligned alone, 1 % FPR; 0.15, all 25
            pairs: 92 and 80 %). The rectangular pairs are tried unrotated only (a rotated copy
            in the benchmark is not cropped): 78 templates instead of 190, and with the other settings below
            crops 96 -> 97 %, combined 80 -> 83 % (fewer templates leave the null fewer
            chances).
        retrieval_angles: rotations, in degrees, of each query's views in the candidate search.
            Rotated copies' sources were candidates for 88 % of them on PneumoniaMNIST with
            the unrotated query alone, 99 % with -6, 0 and 6 (rotations found 89 -> 100 %).
        retrieval_edges: cut the retrieval shares that leave at least 2 px of room at
            ``retrieval_side`` at the middle of each edge as well (a crop of 84 % taken at the
            middle of the top edge is 1.3 px from both the centre's and the corners' cuts at
            16 px; a crop of 92 %, 0.6 px). With it and the shares 0.92 and 0.84 (were 0.9 and
            0.8), cropped copies' sources were candidates for 98 % of them on PneumoniaMNIST
            (93 % before), combined transforms' 94 % (90 % with the rotated query views alone).
        crop_core: share of the query used as the template where a crop is undone (a crop
            keeps no filled border, so the whole query can be compared: more pixels, and fewer
            offsets for the null to try). 1.0 against 0.8 (PneumoniaMNIST, aligned alone, 1 %
            FPR): combined transforms 83 -> 94 %, crops 97 -> 98, noise 98 -> 100, shifts 96 ->
            97 %; with pixels (min-p) combined 70 -> 90 %; 0.9: 83 %. One share for every
            template instead, at 0.9, 0.95 and 1.0: combined 84, 91 and 94 %, but shifts 96, 93
            and 69 % (their filled border enters the factor-1 template).
    """

    size: int = 32
    retrieval_side: int = 16
    candidates: int = 10
    angles: tuple[float, ...] = (-8.0, -4.0, 0.0, 4.0, 8.0)
    crops: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8)
    retrieval_crops: tuple[float, ...] = (1.0, 0.92, 0.84)
    retrieval_corners: bool = True
    retrieval_edges: bool = True
    retrieval_angles: tuple[float, ...] = (-6.0, 0.0, 6.0)
    core: float = 0.8
    smooth: float = 0.7
    aspect: float = 0.1
    crop_core: float = 1.0

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 256:
            raise ValueError(f"size must lie in [16, 256]; got {self.size}")
        if not 4 <= self.retrieval_side <= self.size:
            raise ValueError(f"retrieval_side must lie in [4, size]; got {self.retrieval_side}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be at least 1; got {self.candidates}")
        if not 0.2 <= self.core <= 1.0:
            raise ValueError(f"core must lie in [0.2, 1]; got {self.core}")
        if not 0.2 <= self.crop_core <= 1.0:
            raise ValueError(f"crop_core must lie in [0.2, 1]; got {self.crop_core}")
        if not self.angles or not self.crops or not self.retrieval_crops or not self.retrieval_angles:
            raise ValueError("angles, crops, retrieval_crops and retrieval_angles must not be empty")
        if any(not -45.0 <= a <= 45.0 for a in self.angles + self.retrieval_angles):
            raise ValueError("angles and retrieval_angles must lie in [-45, 45] degrees")
        if not 0.0 <= self.aspect <= 0.7:
            raise ValueError(f"aspect must lie in [0, 0.7]; got {self.aspect}")
        if any(not 0.3 <= c <= 1.0 for c in self.crops + self.retrieval_crops):
            raise ValueError("crop factors must lie in [0.3, 1]")
        if not 0.0 <= self.smooth <= self.size / 8:
            raise ValueError(f"smooth must lie in [0, size / 8]; got {self.smooth}")

    @property
    def crop_pairs(self) -> tuple[tuple[float, float], ...]:
        """The (vertical, horizontal) crop factors of the templates: every pair of ``crops``
        that differ by at most ``aspect``, the square ones first. The square ones are matched
        at every angle of ``angles``, the others unrotated (see ``n_templates``)."""
        square = tuple((c, c) for c in self.crops)
        return square + tuple((a, b) for a in self.crops for b in self.crops if a != b and abs(a - b) <= self.aspect + 1e-9)

    @property
    def n_templates(self) -> int:
        """Templates matched per query and candidate: mirrored or not, each square crop factor
        at every angle, each rectangular pair unrotated (a copy both rotated and cropped to
        another aspect ratio meets the nearest square template: rotating the rectangular ones
        as well would cost 2.4x as much for a combination no family of the benchmark holds)."""
        n_square = len(self.crops)
        return 2 * (len(self.angles) * n_square + (len(self.crop_pairs) - n_square))


@dataclass(frozen=True)
class AlignedImages:
    """Images reduced for alignment: ``small`` at ``options.size``, ``views`` the unit vectors
    of the candidate search (base views: ``(V, n, d)``, the whole image and each crop share at
    the centre and, with ``retrieval_corners`` and ``retrieval_edges``, in each corner and at
    the middle of each edge: 15 by default; query views: the image and its mirror, each rotated
    by every angle of ``retrieval_angles``, ``(2 x angles, n, d)``: 6 by default)."""

    small: np.ndarray
    views: np.ndarray


@dataclass(frozen=True)
class Aligned:
    """Per query: the highest NCC over its candidates, and the base index that gave it
    (``-1`` and ``-inf`` where a query had no admissible candidate)."""

    similarity: np.ndarray
    nearest: np.ndarray


#: Room (px at ``retrieval_side``) a retrieval share must leave for its edge cuts: below it the
#: centre and corner cuts are within a pixel of any crop's place (the 92 % share leaves 1.3 px
#: at 16 px, the 84 % share 2.6 px).
_EDGE_ROOM = 2.0


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(x.shape[0], -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norm > 0, norm, 1.0))


def _central(batch: np.ndarray, share: float, side: int, *, at: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    """The ``share`` of each image of ``(n, s, s)`` placed at ``at`` (fractions of the room
    left: ``(0.5, 0.5)`` is the centre, ``(0, 0)`` the top-left corner), resized to ``side``."""
    import torch
    import torch.nn.functional as F

    s = batch.shape[-1]
    h = max(2, int(round(s * share)))
    top, left = (int(round((s - h) * f)) for f in at)
    x = torch.from_numpy(np.ascontiguousarray(batch[:, top : top + h, left : left + h]))[:, None]
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)[:, 0].numpy()


def _rotated(x: "torch.Tensor", degrees: Sequence[float]) -> "torch.Tensor":
    """Each image of ``x`` (``(n, 1, s, s)``) rotated about its centre by each angle, borders
    replicated: ``(n x len(degrees), 1, s, s)``, an image's rotations consecutive."""
    import torch
    import torch.nn.functional as F

    n, s = x.shape[0], x.shape[-1]
    angles = torch.tensor([math.radians(a) for a in degrees], dtype=torch.float32)
    cos, sin = torch.cos(angles), torch.sin(angles)
    theta = torch.zeros(len(angles), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, (len(angles), 1, s, s), align_corners=False)  # (A, s, s, 2)
    src = x.repeat_interleave(len(angles), dim=0)
    return F.grid_sample(src, grid.repeat(n, 1, 1, 1), mode="bilinear", padding_mode="border", align_corners=False)


def prepare(images: Sequence[np.ndarray], options: AlignOptions = AlignOptions(), *, role: str = "base") -> AlignedImages:
    """Reduce ``images`` (working format, any sizes) for :func:`aligned_similarity`.

    ``role="base"``: the images searched in (their crops are extra views);
    ``role="query"``: the images searched for (mirrored as an extra view)."""
    small = resized(images, options.size)
    if options.smooth > 0:
        from scipy.ndimage import gaussian_filter

        small = gaussian_filter(small, sigma=(0.0, options.smooth, options.smooth), mode="nearest").astype(np.float32)
    return as_role(small, options, role=role)


def as_role(small: np.ndarray | AlignedImages, options: AlignOptions = AlignOptions(), *, role: str = "base") -> AlignedImages:
    """The candidate-search views of images already reduced to ``options.size`` (``small``, or
    the ``small`` of a :class:`AlignedImages` prepared for the other role), so that a set used
    both as queries and as a base set is read and resized once."""
    if isinstance(small, AlignedImages):
        small = small.small
    if role == "base":
        places = [(0.5, 0.5)]
        places += [(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)] if options.retrieval_corners else []
        edges = [(0.0, 0.5), (0.5, 0.0), (1.0, 0.5), (0.5, 1.0)] if options.retrieval_edges else []
        views = np.stack([
            _unit(_central(small, c, options.retrieval_side, at=at))
            for c in options.retrieval_crops
            for at in ([(0.5, 0.5)] if c >= 1.0 else places + (edges if (1.0 - c) * options.retrieval_side >= _EDGE_ROOM else []))
        ])
    elif role == "query":
        import torch

        n, s = small.shape[0], small.shape[-1]
        turned = _rotated(torch.from_numpy(np.ascontiguousarray(small))[:, None], options.retrieval_angles)
        turned = turned.reshape(n, len(options.retrieval_angles), s, s).permute(1, 0, 2, 3).numpy()
        views = []
        for each in turned:  # (n, s, s) at one angle
            low = _central(np.ascontiguousarray(each), 1.0, options.retrieval_side)
            views += [_unit(low), _unit(np.ascontiguousarray(low[:, :, ::-1]))]
        views = np.stack(views)
    else:
        raise ValueError(f"role must be 'base' or 'query'; got {role!r}")
    return AlignedImages(small, views)


def match(query: AlignedImages, base: AlignedImages, options: AlignOptions = AlignOptions(), *, groups: tuple[np.ndarray, np.ndarray] | None = None) -> Aligned:
    """:func:`candidates` then :func:`aligned_similarity`: each query's best NCC with a base
    image, and which. A query without an admissible candidate gets similarity -1 (no evidence,
    the lowest NCC), never ``-inf``, so that scores formed from it stay finite."""
    found = aligned_similarity(query, base, candidates(query, base, options.candidates, groups=groups), options)
    return Aligned(np.maximum(found.similarity, -1.0), found.nearest)


def candidates(query: AlignedImages, base: AlignedImages, k: int, *, groups: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``(n_query, k)`` base indices: the base images whose best view is most similar to any
    of the query's views (as it is and mirrored, at each retrieval angle), most similar first (``-1`` where fewer than ``k`` are admissible).

    ``groups``: optional ``(query_groups, base_groups)`` labels (patient ids); base images of
    the query's own group are not candidates (a non-member's other scans are not its
    reference)."""
    n_query, n_base = query.small.shape[0], base.small.shape[0]
    n_views = base.views.shape[0]
    flat = base.views.reshape(-1, base.views.shape[-1])
    largest = 0
    if groups is not None:
        qg, bg = (np.asarray(g) for g in groups)
        largest = int(np.unique(bg, return_counts=True)[1].max()) if len(bg) else 0
    # Each base image appears up to n_views times, and a query's own group fills up to
    # `largest` of them: asking for (k + largest) x n_views always leaves k distinct others.
    want = min(flat.shape[0], (k + largest) * n_views)
    sims, owners = [], []
    for view in query.views:
        found = knn(view, flat, k=want)
        sims.append(found.similarities)
        owners.append(found.indices % n_base)
    sim = np.concatenate(sims, axis=1)
    own = np.concatenate(owners, axis=1)
    order = np.argsort(-sim, axis=1, kind="stable")
    own = np.take_along_axis(own, order, axis=1)
    out = np.full((n_query, k), -1, dtype=np.int64)
    for i in range(n_query):
        row = own[i]
        if groups is not None:
            row = row[bg[row] != qg[i]]
        _, first = np.unique(row, return_index=True)  # each base image once, at its best view
        picked = row[np.sort(first)][:k]
        out[i, : len(picked)] = picked
    return out


def _templates(small: np.ndarray, options: AlignOptions) -> list[tuple[tuple[int, int], "object"]]:
    """Per template shape: ``((rows, columns), tensor (n, T, rows, columns))`` zero-mean,
    unit-norm templates of each query: for a square shape every mirror x angle, for a
    rectangular one each mirror unrotated."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(small))[:, None]  # (n, 1, s, s)
    s = small.shape[-1]
    both = torch.cat([x, torch.flip(x, dims=[-1])], dim=1)  # (n, 2, s, s)
    n = both.shape[0]
    # Rotate back by each angle about the centre.
    rotated = _rotated(both.reshape(n * 2, 1, s, s), options.angles)  # (n*2*A, 1, s, s)
    n_angles = len(options.angles)

    def central(images: "torch.Tensor", share: float) -> tuple[int, "torch.Tensor"]:
        h = max(4, int(round(s * share)))
        lo = (s - h) // 2
        return h, images[:, :, lo : lo + h, lo : lo + h]

    h, core = central(rotated, options.core)  # factor 1: the central share (a shift's or rotation's filled border left out)
    h_crop, whole = central(rotated, options.crop_core)  # factors below 1: a crop keeps no filled border
    # The rectangular pairs are matched unrotated: the query (and its mirror) as it is.
    _, upright = central(both.reshape(n * 2, 1, s, s), options.crop_core)
    out = []
    for cy, cx in options.crop_pairs:
        side, source, per_query = (h, core, 2 * n_angles) if cy == cx == 1.0 else (h_crop, whole, 2 * n_angles) if cy == cx else (h_crop, upright, 2)
        shape = (max(4, int(round(side * cy))), max(4, int(round(side * cx))))
        t = source if shape == (side, side) else F.interpolate(source, size=shape, mode="bilinear", antialias=True, align_corners=False)
        t = t.reshape(n, per_query, *shape)
        t = t - t.mean(dim=(2, 3), keepdim=True)
        t = t / t.flatten(2).norm(dim=2).clamp_min(1e-12)[:, :, None, None]
        out.append((shape, t))
    return out


def box(integral: "torch.Tensor", rows: int, columns: int) -> "torch.Tensor":
    """Sums of every ``rows x columns`` window, from an integral image padded with a zero row
    and column in front (``(..., s + 1, s + 1)`` -> ``(..., s - rows + 1, s - columns + 1)``)."""
    r, c = rows, columns
    return integral[..., r:, c:] - integral[..., :-r, c:] - integral[..., r:, :-c] + integral[..., :-r, :-c]


def aligned_similarity(
    query: AlignedImages,
    base: AlignedImages,
    cands: np.ndarray,
    options: AlignOptions = AlignOptions(),
    *,
    batch: int = 32,
) -> Aligned:
    """The highest NCC of each query with its candidates (``cands``: ``(n_query, k)`` base
    indices, ``-1`` for none), over every template and offset (see the module docstring).

    The templates are zero-mean and unit-norm, so a template's inner product with a window
    equals its inner product with the centred window: the numerators of every offset are one
    grouped convolution (each query's templates over its own candidates), and the windows'
    norms come from integral images. At these sizes (templates of 21 to 26 px over a 32 px
    image: 49 to 144 offsets) that is far cheaper than correlating through FFTs. Templates of
    every shape go into one convolution: each is placed in the top-left corner of a frame of the
    largest shape, zeros elsewhere, and the candidates are padded with zeros at the bottom and
    right, so that every offset of the smallest template exists; a template's numerator at an
    offset it fits at is then exactly its inner product with that window (the zeros add
    nothing), and the offsets it does not fit at are dropped. One call instead of one per shape
    (19 by default) took a third of the time (2 cores, 2026-12-07)."""
    import torch
    import torch.nn.functional as F

    n, k = cands.shape
    sim = np.full(n, -np.inf)
    nearest = np.full(n, -1, dtype=np.int64)
    base_small = torch.from_numpy(base.small)
    with torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(start + batch, n)
            b = stop - start
            c = torch.from_numpy(cands[start:stop])
            valid = c >= 0
            imgs = base_small[c.clamp_min(0)]  # (b, k, s, s)
            # Candidates as the batch, queries as the channels: groups = b.
            stacked = imgs.permute(1, 0, 2, 3).contiguous()  # (k, b, s, s)
            # Window sums from integral images (an average pool of a 21 px window costs
            # 441 additions per offset; this, four).
            sums = F.pad(stacked, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
            sums_sq = F.pad(stacked * stacked, (1, 0, 1, 0)).cumsum(-1).cumsum(-2)
            best = torch.full((b, k), -math.inf)
            shaped = _templates(query.small[start:stop], options)
            top = tuple(max(shape[i] for shape, _ in shaped) for i in (0, 1))
            low = tuple(min(shape[i] for shape, _ in shaped) for i in (0, 1))
            frame = torch.cat([F.pad(t, (0, top[1] - shape[1], 0, top[0] - shape[0])) for shape, t in shaped], dim=1)  # (b, T, R, C)
            n_all = frame.shape[1]
            padded = F.pad(stacked, (0, top[1] - low[1], 0, top[0] - low[0]))
            side = stacked.shape[-1]
            every = F.conv2d(padded, frame.reshape(b * n_all, 1, *top), groups=b).reshape(k, b, n_all, side - low[0] + 1, side - low[1] + 1)
            first = 0
            for (rows, columns), t in shaped:
                n_t = t.shape[1]
                my, mx = side - rows + 1, side - columns + 1
                num = every[:, :, first : first + n_t, :my, :mx]  # (k, b, T, my, mx)
                first += n_t
                total, squares = box(sums, rows, columns), box(sums_sq, rows, columns)  # window sums (k, b, my, mx)
                norm = (squares - total * total / (rows * columns)).clamp_min(0.0).sqrt()
                # A flat window (a constant border) matches nothing.
                ncc = num / norm.clamp_min(1e-4)[:, :, None]
                ncc = torch.where((norm > 1e-4)[:, :, None], ncc, torch.tensor(-1.0))
                best = torch.maximum(best, ncc.amax(dim=(2, 3, 4)).T)
            best = torch.where(valid, best.clamp(-1.0, 1.0), torch.tensor(-math.inf))
            value, arg = best.max(dim=1)
            sim[start:stop] = value.double().numpy()
            picked = torch.gather(c, 1, arg[:, None])[:, 0].numpy()
            nearest[start:stop] = np.where(np.isfinite(sim[start:stop]), picked, -1)
    return Aligned(sim, nearest)
