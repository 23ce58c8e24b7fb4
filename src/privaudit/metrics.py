"""Quality metrics on feature arrays: FID, KID, precision/recall/density/coverage, and CAS.

These are the functions behind the ``quality`` check, public for users who bring their own
features (rows are samples, columns are features; any float dtype)::

    from privaudit.metrics import fid, kid, prdc
    fid(real, fake)                 # Fréchet distance of Gaussian fits (lower is better)
    kid(real, fake).mean            # unbiased MMD² with the cubic polynomial kernel (lower is better)
    r = prdc(real, fake, k=5)       # r.precision, r.recall, r.density, r.coverage (higher is better)

Every value here is specific to the feature space it was computed in: an FID in ImageNet
EfficientNet features, in raw pixels or in Inception features are three different numbers that
cannot be compared with each other. Sources (see the README): Heusel et al. 2017 (FID), Bińkowski
et al. 2018 (KID), Kynkäänniemi et al. 2019 (precision/recall), Naeem et al. 2020
(density/coverage), Ravuri & Vinyals 2019 (classification accuracy score).

Design notes:

* **FID** never calls ``scipy.linalg.sqrtm``. ``tr((S1 S2)^(1/2))`` is the sum of the square
  roots of the eigenvalues of a symmetric PSD matrix similar to ``S1 S2``: ``L^T S2 L`` with
  ``S1 = L L^T`` (Cholesky), or ``S1^(1/2) S2 S1^(1/2)`` when ``S1`` is singular. The same trace
  is also the nuclear norm of ``A B^T`` (``A``, ``B`` the centred data scaled by
  ``1/sqrt(n - 1)``), which costs ``O(n1 n2 (d + min(n1, n2)))`` instead of ``O(d^3)``:
  :func:`fid` takes whichever route is cheaper (small sets in many dimensions: the data route).
* **PRDC** gives the same four numbers as the ``prdc`` package (Naeem et al.'s reference code)
  without its three full ``N x N`` distance matrices (12 bytes x N² at its peak): the k-NN radii
  come from a tiled k-NN self-search (half the products of a FAISS search; FAISS for the rows
  it cannot settle) and one tiled pass over the real x fake product gives the rest, in memory
  that does not grow with N². Every decision ``distance < radius`` is made on the same numbers as
  the reference: each distance computed accurately (float64, from the difference vectors, so
  identical vectors are at distance exactly 0) and rounded to float32 as ``prdc``'s scikit-learn
  distances are. A pair closer to the radius than float32 resolves is therefore a tie, as in
  ``prdc``. The fast float32 products decide everything else: pairs whose float32 margin lies
  within a proven rounding bound of the threshold are recomputed that way. Like ``prdc``, the
  test is a strict ``<`` and the radius counts the point itself, so a real point with ``k`` or
  more exact duplicates has radius 0 and contains nothing, not even its duplicates (``prdc``
  issue #7). Medical sets do hold duplicates (PneumoniaMNIST has 29), so this matters: such a
  real image counts for nothing, in the reference and here alike.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from privaudit.errors import InputError

log = logging.getLogger(__name__)

#: KID computes a kernel block (real x real, fake x fake, real x fake) whole, once, when it has
#: no more entries than the subsets would compute (``n_subsets x size²``) and the whole blocks
#: together stay within this many (256 MB of float64; each block alone could reach it before,
#: 768 MB in all); otherwise each subset computes its own part. A 2,000-image holdout
#: against 10,000 synthetic images: real x real and real x fake whole, fake x fake per subset
#: (measured 13.7 s per side before, all per subset, on a busy machine).
_KID_BLOCK_MAX = 32_000_000
#: Unit roundoff of float32.
_U32 = 2.0**-24
#: Extra candidates beyond the k + 1 needed for a radius, so that the exact float64 re-ranking
#: rarely has to widen the search.
_EXTRA_CANDIDATES = 8
#: Rows of one (fake x real) tile of the PRDC cross pass, and its columns: 4096 x 4096 float32
#: is 64 MB, however large the sets are.
PRDC_TILE = 4096


#: Below this many floating-point operations, BLAS runs on one thread: handing tiny products to
#: a thread pool costs more than it saves, and on a busy 2-core machine it cost 10-100x (a
#: 100-subset KID on 50 x 1024 features: 1.2 s on two threads, 0.06 s on one). Symmetric
#: eigenvalue problems and factorisations always run on one thread: their reductions are made
#: of many small synchronised steps, and with the cores shared they took 0.9 to 15 s on two
#: threads against 0.48 s on one (eigvalsh, 2048 x 2048; 2.4 s against 0.021 s at 524 x 524).
_SMALL_WORK = 2e8


_CONTROLLER: list[object] = []


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS/LAPACK on one thread inside the block (numpy's and scipy's OpenBLAS alike)."""
    if not _CONTROLLER:
        # Finding the loaded BLAS libraries takes ~20 ms, so it is done once per process, after
        # loading scipy.linalg: scipy brings its own OpenBLAS, which a controller made before
        # would not know (and would leave on two threads).
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _CONTROLLER.append(ThreadpoolController())
    with _CONTROLLER[0].limit(limits=1, user_api="blas"):  # type: ignore[attr-defined]
        yield


@contextlib.contextmanager
def _blas_threads(flops: float) -> Iterator[None]:
    """One BLAS thread for small work (see :data:`_SMALL_WORK`), the default otherwise."""
    if flops >= _SMALL_WORK:
        yield
        return
    with _one_blas_thread():
        yield


def _features(x: object, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Validate a feature matrix: 2D, real numbers, finite."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise InputError(f"got {arr.shape} for {name}; expected a 2D array (n_samples, n_features)")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} has dtype {arr.dtype}; expected real numbers")
    if arr.shape[1] == 0:
        raise InputError(f"got {arr.shape} for {name}; features need at least one column")
    if arr.shape[0] < min_rows:
        raise InputError(f"got {arr.shape} for {name}; need at least {min_rows} row(s)")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return arr


def _pair(real: object, fake: object) -> tuple[np.ndarray, np.ndarray]:
    r, f = _features(real, "real"), _features(fake, "fake")
    if r.shape[1] != f.shape[1]:
        raise InputError(f"real has {r.shape[1]} features per row but fake has {f.shape[1]}")
    return r, f


# --------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class GaussianStats:
    """Mean and covariance of a feature set (the Gaussian fit of FID).

    Attributes:
        mean: ``(d,)`` float64.
        cov: ``(d, d)`` float64 sample covariance (divided by ``n - 1``, as ``np.cov``).
        n: number of samples.
    """

    mean: np.ndarray
    cov: np.ndarray
    n: int


def gaussian_stats(features: np.ndarray, *, chunk_size: int = 8192) -> GaussianStats:
    """The mean and sample covariance of ``features``, in float64 and bounded extra memory.

    The mean is exact (float64). Rows are centred on it ``chunk_size`` at a time (4,096 for
    float32 features) and their
    scatter ``block^T block`` accumulated in float64 across chunks (see :func:`_scatter` for the
    precision of each chunk's product). Only one chunk exists at a time, where ``np.cov``
    converts and centres the whole array.

    Example:
        >>> s = gaussian_stats(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]))
        >>> s.mean.tolist(), s.cov.tolist()
        ([2.0, 4.0], [[4.0, 7.0], [7.0, 13.0]])
    """
    x = _features(features, "features", min_rows=2)
    n = x.shape[0]
    mean = x.mean(axis=0, dtype=np.float64)
    _, acc = _scatter(x, mean, chunk_size)
    cov = (acc + acc.T) / (2.0 * (n - 1))  # symmetric to the last bit
    return GaussianStats(mean=mean, cov=cov, n=n)


#: Rows per float32 product of :func:`_scatter`.
_SCATTER32_ROWS = 4096


def _scatter(x: np.ndarray, mean: np.ndarray, chunk_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The sum and the scatter matrix ``Σ (x - mean)(x - mean)^T`` of the rows of ``x``, in float64.

    Rows are centred in float64. Float32 features are multiplied in float32 (sgemm, twice the
    speed of dgemm: the statistics are what FID spends its time on at large n), 4,096 rows per
    product, and the products summed in float64: each entry's error is ~1e-7 of the largest
    (measured at 40,000 x 2,048), the features' own float32 resolution, and FID moved by 4e-9
    relative (measured at 20,000 and 50,000 rows). Other inputs are multiplied in float64
    (OpenBLAS's symmetric ``dsyrk`` was no faster than dgemm here).
    """
    d = x.shape[1]
    single = x.dtype == np.float32
    rows = _SCATTER32_ROWS if single else chunk_size
    total, acc = np.zeros(d), np.zeros((d, d))
    for start in range(0, x.shape[0], rows):
        block = x[start : start + rows].astype(np.float64) - mean
        total += block.sum(axis=0)
        if single:
            block = block.astype(np.float32)
        acc += block.T @ block
    return total, acc


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``tr((cov1 cov2)^(1/2))`` for symmetric PSD matrices, by a symmetric eigenvalue problem.

    ``cov1 cov2`` is similar to ``L^T cov2 L`` (``cov1 = L L^T``), which is symmetric PSD, so the
    trace is the sum of the square roots of its eigenvalues (``eigvalsh``, no eigenvectors). The
    roles swap when only ``cov2`` is positive definite; when neither is (fewer samples than
    dimensions), ``cov1^(1/2)`` from ``eigh`` takes the place of ``L``, which is several times
    slower. Eigenvalues below zero by rounding are clipped to 0.
    """
    from scipy.linalg import LinAlgError, cholesky, eigh, eigvalsh
    from scipy.linalg.blas import dtrmm

    # tr((S1 S2)^(1/2)) = tr((S2 S1)^(1/2)): factor whichever is positive definite.
    inner = None
    for a, b in ((cov1, cov2), (cov2, cov1)):
        try:
            with _one_blas_thread():
                low = cholesky(a, lower=True, check_finite=False)
        except LinAlgError:
            continue
        try:
            # Both definite: L^T S2 L = (R L)^T (R L) with S2 = R^T R, a triangular product and
            # a symmetric one (numpy's syrk) where L^T S2 L takes two full products (measured
            # 0.075 s against 0.13 s at d = 1,024: FID's jackknife computes 20 per side).
            with _one_blas_thread():
                up = cholesky(b, lower=False, check_finite=False)
            m = dtrmm(1.0, up, low)  # R L (upper x lower)
            inner = m.T @ m
        except LinAlgError:
            inner = low.T @ b @ low
        break
    if inner is None:
        with _one_blas_thread():
            w, v = eigh(cov1, check_finite=False)
        half = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = half @ cov2 @ half
    inner = (inner + inner.T) / 2.0
    with _one_blas_thread():
        ev = eigvalsh(inner, check_finite=False)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(stats1: GaussianStats, stats2: GaussianStats) -> float:
    """Fréchet distance between two Gaussian fits:
    ``|m1 - m2|² + tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Heusel et al. 2017).

    Clipped at 0 (identical sets give rounding noise of either sign).
    """
    if stats1.mean.shape != stats2.mean.shape:
        raise InputError(f"the two statistics have dimensions {stats1.mean.shape[0]} and {stats2.mean.shape[0]}")
    diff = stats1.mean - stats2.mean
    value = float(diff @ diff + np.trace(stats1.cov) + np.trace(stats2.cov) - 2.0 * trace_sqrt_product(stats1.cov, stats2.cov))
    return max(value, 0.0)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (lower is better).

    Args:
        real: ``(n1, d)`` features of real images.
        fake: ``(n2, d)`` features of synthetic images.

    Returns:
        The distance (``>= 0``), or NaN with a warning when a set has fewer than 2 rows.
        FID is biased upwards at small n, and the bias depends on n: compare values only at
        equal sample sizes, and only within one feature space.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> value = fid(rng.normal(size=(4000, 2)), rng.normal(size=(4000, 2)) + [3, 0])
        >>> abs(value - 9.0) < 0.3  # |shift|² = 9 for equal covariances
        True
    """
    r, f = _pair(real, fake)
    n1, d = r.shape
    n2 = f.shape[0]
    if min(n1, n2) < 2:
        warnings.warn(f"FID needs at least 2 samples per set; got {n1} real and {n2} fake", RuntimeWarning, stacklevel=2)
        return math.nan
    # Two exact routes; take the cheaper (flop counts of the dominant steps). The covariance
    # route needs eigenvectors when neither covariance has full rank (both n <= d).
    low_rank, covariance = _fid_costs(n1, n2, d)
    if low_rank <= covariance:
        with _blas_threads(low_rank):
            return _fid_low_rank(r, f)
    with _blas_threads(covariance):
        return frechet_distance(gaussian_stats(r), gaussian_stats(f))


def _fid_low_rank(r: np.ndarray, f: np.ndarray) -> float:
    """FID from the data when that is cheaper: ``tr((S1 S2)^(1/2)) = ||A B^T||_*``.

    With ``S1 = A^T A`` and ``S2 = B^T B``, the non-zero eigenvalues of ``S1 S2`` are those of
    ``C C^T`` with ``C = A B^T`` (``n1 x n2``): the trace is the sum of the square roots of the
    eigenvalues of the smaller of ``C C^T`` and ``C^T C`` (``eigvalsh``; the same squared
    quantities as the covariance route, and several times faster than an SVD of ``C``).
    """
    from scipy.linalg import eigvalsh

    m1, m2 = r.mean(axis=0, dtype=np.float64), f.mean(axis=0, dtype=np.float64)
    a = (r.astype(np.float64) - m1) / math.sqrt(r.shape[0] - 1)
    b = (f.astype(np.float64) - m2) / math.sqrt(f.shape[0] - 1)
    diff = m1 - m2
    c = a @ b.T
    gram = c @ c.T if c.shape[0] <= c.shape[1] else c.T @ c
    with _one_blas_thread():
        ev = eigvalsh((gram + gram.T) / 2.0, check_finite=False)
    nuclear = float(np.sqrt(np.clip(ev, 0.0, None)).sum())
    value = float(diff @ diff + np.einsum("ij,ij->", a, a) + np.einsum("ij,ij->", b, b) - 2.0 * nuclear)
    return max(value, 0.0)


# --------------------------------------------------------------------------------------------
# FID standard error: a delete-a-group jackknife
# --------------------------------------------------------------------------------------------

#: Groups of :func:`fid_jackknife`: its variance estimate rests on 19 degrees of freedom
#: (about ±32 %), like a 20-replicate bootstrap, at the cost of 20 FIDs.
FID_GROUPS = 20


@dataclass(frozen=True, eq=False)
class FIDResult:
    """FID with a jackknife standard error (:func:`fid_jackknife`).

    Attributes:
        value: the FID of the two full sets, as :func:`fid`.
        se: the delete-a-group jackknife standard error, or ``None`` (no groups asked for).
        n_groups: groups per set (0: no standard error).
        n_real, n_fake: rows of each set.
        units_real, units_fake: the units dealt into groups: patients where patient ids were
            given, else images.
        route: how each replicate was computed: ``"data"`` (:func:`fid` of the rows kept) or
            ``"statistics"`` (the full mean and covariance minus the left-out group's sums,
            computed once); both give the same numbers (the tests check it), the cheaper one is
            taken.
        replicates: the FID with each group left out.
    """

    value: float
    se: float | None
    n_groups: int
    n_real: int
    n_fake: int
    units_real: int
    units_fake: int
    route: str
    replicates: np.ndarray = field(repr=False)

    @property
    def t95(self) -> float | None:
        """The interval's multiplier: Student's t at 0.975 with ``n_groups - 1`` degrees of
        freedom (2.09 for 20 groups, 2.45 for 7), since the jackknife variance rests on that
        many; ``None`` without a standard error."""
        if self.se is None or self.n_groups < 2:
            return None
        from scipy.stats import t

        return float(t.ppf(0.975, self.n_groups - 1))

    @property
    def ci_low(self) -> float | None:
        """``value - t95 se``, not below 0 (``None`` without a standard error)."""
        t95 = self.t95
        return None if t95 is None else max(0.0, self.value - t95 * self.se)  # type: ignore[operator]

    @property
    def ci_high(self) -> float | None:
        """``value + t95 se`` (``None`` without a standard error)."""
        t95 = self.t95
        return None if t95 is None else self.value + t95 * self.se  # type: ignore[operator]


class FIDSample:
    """A feature set dealt into jackknife groups for :func:`fid_jackknife`. Pass the same
    object to several calls (e.g. the real holdout against two other sets) to compute its
    statistics once and leave out the same groups in each.

    Args:
        features: ``(n, d)`` features (at least 2 rows).
        groups: one patient id per row, or ``None``. With ids, a patient's rows always stay in
            one group (scans of one patient are not independent); without, images are the units.
        n_groups: groups to deal the units into (fewer when there are fewer units).
        rng: generator or seed of the dealing.
    """

    def __init__(
        self,
        features: object,
        groups: Sequence[object] | None = None,
        *,
        n_groups: int = FID_GROUPS,
        rng: np.random.Generator | int = 0,
        name: str = "features",
    ) -> None:
        self.x = _features(features, name, min_rows=2)
        n = self.x.shape[0]
        if groups is None:
            codes = np.arange(n)
        else:
            if len(groups) != n:
                raise InputError(f"{name}: {len(groups)} patient ids for {n} rows")
            codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1].ravel()
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 2:
            raise InputError(f"n_groups must be an integer of at least 2; got {n_groups!r}")
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.codes = codes
        self.n_units = int(codes.max()) + 1
        self.n_groups = min(n_groups, self.n_units)
        #: The group of every row.
        self.group = _deal(codes, self.n_units, self.n_groups, gen)
        self._stats: GaussianStats | None = None
        self._sums: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def regrouped(self, n_groups: int, rng: np.random.Generator) -> FIDSample:
        """The same rows and units dealt into ``n_groups`` groups."""
        other = copy.copy(self)
        other.n_groups = min(n_groups, self.n_units)
        other.group = _deal(self.codes, self.n_units, other.n_groups, rng)
        other._sums = None
        return other

    @property
    def fewest_kept(self) -> int:
        """The fewest rows any replicate keeps (the rows outside the largest group)."""
        return self.n - int(np.bincount(self.group, minlength=self.n_groups).max())

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def stats(self) -> GaussianStats:
        """Mean and covariance of all rows (computed once)."""
        if self._stats is None:
            self._stats = gaussian_stats(self.x)
        return self._stats

    def _group_sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-group row counts, sums and scatter matrices about the overall mean, and their
        total, in float64 (``8 * n_groups * d²`` bytes: 168 MB for 20 groups at d = 1,024),
        from one pass over the rows; the full covariance comes from the same pass."""
        if self._sums is None:
            x, g = self.x, self.n_groups
            d = x.shape[1]
            order = np.argsort(self.group, kind="stable")
            counts = np.bincount(self.group, minlength=g)
            mean = x.mean(axis=0, dtype=np.float64)
            sums, scatter = np.zeros((g, d)), np.zeros((g, d, d))
            start = 0
            for b, count in enumerate(counts):
                rows = order[start : start + count]
                start += count
                for lo in range(0, len(rows), 8192):
                    block_sum, block_scatter = _scatter(x[rows[lo : lo + 8192]], mean)
                    sums[b] += block_sum
                    scatter[b] += block_scatter
            total = scatter.sum(axis=0)
            self._stats = GaussianStats(mean=mean, cov=(total + total.T) / (2.0 * (self.n - 1)), n=self.n)
            self._sums = (counts, sums, scatter, total)
        return self._sums

    def without(self, group: int) -> GaussianStats:
        """Mean and covariance of the rows outside ``group``, from the group sums."""
        counts, sums, scatter, total = self._group_sums()
        n = self.n - int(counts[group])
        s = sums.sum(axis=0) - sums[group]  # the kept rows' sum, centred on the full mean
        cov = (total - scatter[group] - np.outer(s, s) / n) / (n - 1)
        return GaussianStats(mean=self.stats.mean + s / n, cov=(cov + cov.T) / 2.0, n=n)


def _deal(codes: np.ndarray, n_units: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """The jackknife group of every row: units (patients or images) dealt largest first, each
    into the group with the fewest rows so far, ties broken in a seeded random order.

    Why balanced and not simply at random: the standard error's formula assumes groups of
    equal size, and FID's upward bias grows as the rows kept shrink, so replicates that leave
    out groups of different sizes differ by their bias as well as by their data. Patients hold
    different numbers of scans: dealt at random into 20 groups, 100 patients gave 1.43x the
    true spread on independent rows (d = 32), 20 patients 2.5x; dealt largest first, 1.17x
    (measured in the review of this code, 2026-12-06; the weighted formula for unequal groups
    was worse, 3.6x).
    """
    sizes = np.bincount(codes, minlength=n_units)
    order = rng.permutation(n_units)
    order = order[np.argsort(-sizes[order], kind="stable")]
    unit_group = np.empty(n_units, dtype=np.int64)
    heap = [(0, g) for g in range(n_groups)]  # (rows so far, group): the lowest group wins ties
    for unit in order:
        rows, g = heapq.heappop(heap)
        unit_group[unit] = g
        heapq.heappush(heap, (rows + int(sizes[unit]), g))
    return unit_group[codes]


def _fid_costs(n1: int, n2: int, d: int) -> tuple[float, float]:
    """Flops of the dominant steps of :func:`fid`'s two routes: (data route, covariance route)."""
    low_rank = 2.0 * n1 * n2 * d + 2.0 * n1 * n2 * min(n1, n2) + 4.0 * min(n1, n2) ** 3
    covariance = (n1 + n2) * d * d + (6.0 if max(n1, n2) > d else 25.0) * d**3
    return low_rank, covariance


def fid_jackknife(
    real: object,
    fake: object,
    *,
    n_groups: int = FID_GROUPS,
    real_groups: Sequence[object] | None = None,
    fake_groups: Sequence[object] | None = None,
    rng: np.random.Generator | int = 0,
    route: str = "auto",
) -> FIDResult:
    """FID with a delete-a-group jackknife standard error.

    The units of each set (patients, or images) are dealt at random into ``n_groups`` groups;
    replicate ``i`` is the FID with group ``i`` of both sets left out, and the standard error
    is ``sqrt((G - 1) / G * Σ (θ_i - θ̄)²)``. Why not the bootstrap: resampling with
    replacement duplicates images, and FID's bias, which grows with ``d / n``, moves with
    every replicate's duplicates. Against the spread of FID over fresh samples
    (``benchmarks/fid_interval.py``; the README has the table), a 20-replicate bootstrap was
    right at ``d = 16`` but 6 to 8x too wide at ``d = 256, n = 500`` and 10x at
    ``d = 1024, n = 2000``; the jackknife stayed within 1.0 to 1.8x. The jackknife
    variance is biased upwards, never downwards, in expectation (Efron & Stein 1981), so the
    interval errs on the wide side.

    Args:
        real, fake: ``(n, d)`` feature arrays, or :class:`FIDSample` objects (to reuse one
            set's statistics and groups across calls).
        n_groups: jackknife groups; 0 gives the value alone.
        real_groups, fake_groups: patient ids, one per row (arrays only; a :class:`FIDSample`
            carries its own).
        rng: generator or seed of the dealing into groups (arrays only).
        route: ``"data"``, ``"statistics"`` or ``"auto"`` (the cheaper): see
            :attr:`FIDResult.route`.

    Returns:
        :class:`FIDResult`; a NaN value with a warning when a set has fewer than 2 rows.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> r = fid_jackknife(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)) + 0.5)
        >>> abs(r.value - 1.0) < 0.1, 0.0 < r.se < 0.1, r.n_groups
        (True, True, 20)
    """
    if route not in ("auto", "data", "statistics"):
        raise InputError(f"route must be 'auto', 'data' or 'statistics'; got {route!r}")
    if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 0 or n_groups == 1:
        raise InputError(f"n_groups must be 0 (no standard error) or at least 2; got {n_groups!r}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    sides = []
    for arr, ids, name in ((real, real_groups, "real"), (fake, fake_groups, "fake")):
        if isinstance(arr, FIDSample):
            sides.append(arr)
            continue
        x = _features(arr, name)
        if x.shape[0] < 2:
            other = fake if name == "real" else real
            n_other = other.n if isinstance(other, FIDSample) else np.asarray(other).shape[0]
            n1, n2 = (x.shape[0], n_other) if name == "real" else (n_other, x.shape[0])
            warnings.warn(f"FID needs at least 2 samples per set; got {n1} real and {n2} fake", RuntimeWarning, stacklevel=2)
            return FIDResult(math.nan, None, 0, n1, n2, n1, n2, "data", np.empty(0))
        sides.append(FIDSample(x, ids, n_groups=max(n_groups, 2), rng=gen, name=name))
    a, b = sides
    d = a.x.shape[1]
    if b.x.shape[1] != d:
        raise InputError(f"real has {d} features per row but fake has {b.x.shape[1]}")
    g = min(a.n_groups, b.n_groups) if n_groups else 0
    if n_groups and g >= 2 and (a.n_groups != g or b.n_groups != g):
        # One set has fewer units than groups: deal the other into as many groups as it has.
        a, b = (s.regrouped(g, gen) if s.n_groups != g else s for s in (a, b))
    if n_groups and (g < 2 or min(a.fewest_kept, b.fewest_kept) < 2):
        # One patient, or a patient holding all but one of a set's rows: leaving a group out
        # would leave too little to fit a Gaussian, so there is no jackknife.
        warnings.warn(
            f"FID has no standard error: the sets hold {a.n_units} and {b.n_units} unit(s) (patients or images), "
            "too few or too unequal to leave a group out", RuntimeWarning, stacklevel=2,
        )
        g = 0
    # Per replicate: the data route refits from the kept rows; the statistics route subtracts
    # the left-out group's sums (one pass over the data first, then a distance per replicate).
    n1, n2 = a.n - a.n // max(g, 1), b.n - b.n // max(g, 1)
    data_cost = g * min(_fid_costs(n1, n2, d))
    stats_cost = (a.n + b.n) * d * d + g * (6.0 if max(n1, n2) > d else 25.0) * d**3
    use_stats = route == "statistics" or (route == "auto" and stats_cost < data_cost)
    reps = np.empty(g)
    if use_stats:
        a._group_sums()
        b._group_sums()
        value = frechet_distance(a.stats, b.stats)
        for i in range(g):
            reps[i] = frechet_distance(a.without(i), b.without(i))
    else:
        value = fid(a.x, b.x)
        for i in range(g):
            reps[i] = fid(a.x[a.group != i], b.x[b.group != i])
    se = float(math.sqrt((g - 1) / g * float(((reps - reps.mean()) ** 2).sum()))) if g else None
    if se is not None and not math.isfinite(se):
        se = None
    return FIDResult(value, se, g, a.n, b.n, a.n_units, b.n_units, "statistics" if use_stats else "data", reps)


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class KIDResult:
    """Kernel Inception Distance, in whatever feature space it was computed (lower is better).

    Attributes:
        mean: mean of the unbiased MMD² estimates over the subsets (the KID).
        std: their standard deviation (``ddof=0``, as torch-fidelity): the spread of an
            estimate from ``subset_size`` samples per set, not a confidence interval of ``mean``.
        n_subsets: number of subsets.
        subset_size: samples drawn (without replacement) from each set per subset.
        n_real, n_fake: sizes of the two sets.
        values: the MMD² estimate of every subset.
    """

    mean: float
    std: float
    n_subsets: int
    subset_size: int
    n_real: int
    n_fake: int
    values: np.ndarray = field(repr=False)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel ``k(x, y) = (x·y / d + 1)^3`` between the rows of ``x`` and ``y`` (float64)."""
    d = x.shape[1]
    xa = np.asarray(x, dtype=np.float64)
    # ``xa @ xa.T`` of one array is a symmetric product (numpy calls syrk: half the work of
    # two equal arrays, measured 0.024 s against 0.056 s at 1,000 x 1,024).
    k = xa @ (xa if y is x else np.asarray(y, dtype=np.float64)).T
    k /= d
    k += 1.0
    np.power(k, 3, out=k)
    return k


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD² between the distributions of ``x`` and ``y`` (rows), with
    :func:`polynomial_kernel`:

    ``1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j) - 2/(mn) Σ_{i,j} k(x_i, y_j)``

    (Gretton et al. 2012, eq. 3; Bińkowski et al. 2018). It can be negative.
    """
    m, n = x.shape[0], y.shape[0]
    if min(m, n) < 2:
        raise InputError(f"the unbiased MMD² needs at least 2 samples per set; got {m} and {n}")
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.sum() / (m * n))


def kid(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    rng: np.random.Generator | int = 0,
) -> KIDResult:
    """Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel, averaged
    over random subsets (Bińkowski et al. 2018; defaults as torch-fidelity and clean-fid).

    Args:
        real: ``(n1, d)`` features of real images.
        fake: ``(n2, d)`` features of synthetic images.
        n_subsets: number of subsets.
        subset_size: samples per set in each subset; capped at the smaller set's size (as
            clean-fid does), which the result reports.
        rng: a generator or seed for drawing the subsets.

    Returns:
        :class:`KIDResult`; NaN values with a warning when a set has fewer than 2 rows. The
        estimate is unbiased at any subset size, so unlike FID it can be compared across sample
        sizes; it can be slightly negative when the two sets match.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
        >>> same, shifted = kid(x, y, n_subsets=10, subset_size=200), kid(x, y + 1, n_subsets=10, subset_size=200)
        >>> abs(same.mean) < 2 * same.std < shifted.mean
        True
    """
    r, f = _pair(real, fake)
    if n_subsets < 1:
        raise InputError(f"n_subsets must be at least 1; got {n_subsets}")
    if subset_size < 2:
        raise InputError(f"subset_size must be at least 2; got {subset_size}")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    size = min(subset_size, r.shape[0], f.shape[0])
    if size < 2:
        warnings.warn(f"KID needs at least 2 samples per set; got {r.shape[0]} real and {f.shape[0]} fake", RuntimeWarning, stacklevel=2)
        return KIDResult(math.nan, math.nan, n_subsets, size, r.shape[0], f.shape[0], np.full(n_subsets, math.nan))
    values = np.empty(n_subsets)
    n_r, n_f = r.shape[0], f.shape[0]
    # The subsets' own work bounds what is worth computing whole; _KID_BLOCK_MAX bounds the
    # whole blocks together (256 MB of float64), not each of them.
    budget = min(_KID_BLOCK_MAX, n_subsets * size * size)
    left = _KID_BLOCK_MAX
    whole = {}
    # Whole blocks: every kernel value once, then each subset sums a sub-block (the same
    # numbers as mmd2_unbiased on the subset, in a fraction of the time).
    for key, a, b in (("rr", r, r), ("ff", f, f), ("rf", r, f)):
        entries = a.shape[0] * b.shape[0]
        if entries <= min(budget, left):
            with _blas_threads(entries * r.shape[1]):
                whole[key] = polynomial_kernel(a, b)  # a is b: the symmetric product
            left -= entries

    def block(key: str, a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
        if key in whole:
            return whole[key][np.ix_(ia, ib)]
        rows = a[ia]
        return polynomial_kernel(rows, rows if b is a and ib is ia else b[ib])

    with _blas_threads(3 * size * size * r.shape[1]):
        for s in range(n_subsets):
            # Sorted, the rows and columns of a sub-block are gathered in memory order: 3x
            # faster than in draw order from a 2,000 x 10,000 block (the sums are the same).
            ri = np.sort(gen.choice(n_r, size, replace=False))
            fi = np.sort(gen.choice(n_f, size, replace=False))
            xx, yy, xy = block("rr", r, ri, r, ri), block("ff", f, fi, f, fi), block("rf", r, ri, f, fi)
            values[s] = (
                (xx.sum() - np.trace(xx)) / (size * (size - 1))
                + (yy.sum() - np.trace(yy)) / (size * (size - 1))
                - 2.0 * xy.sum() / (size * size)
            )
    return KIDResult(float(values.mean()), float(values.std()), n_subsets, size, r.shape[0], f.shape[0], values)


# --------------------------------------------------------------------------------------------
# Precision, recall, density, coverage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PRDCResult:
    """Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    All four are higher-is-better. A point's *ball* is centred on it with its distance to its
    k-th nearest neighbour in its own set as radius (the point itself counted, as in ``prdc``).

    Attributes:
        precision: share of fake samples inside at least one real ball (fidelity).
        recall: share of real samples inside at least one fake ball (diversity).
        density: mean number of real balls containing a fake sample, divided by k; about 1 when
            the two sets come from one distribution, above 1 when fakes crowd into dense regions.
        coverage: share of real samples whose ball contains at least one fake sample.
        k: neighbours per radius.
        n_real, n_fake: sizes of the two sets.
        real_radii, fake_radii: the k-NN radius of every sample (0 for a point with k or more
            exact duplicates: such a ball contains nothing under the strict ``<``).
        fake_ball_counts: number of real balls containing each fake sample (0 = outside the real
            manifold).
        real_in_fake_manifold: whether each real sample lies in some fake ball (recall).
        real_covered: whether each real sample's ball contains a fake sample (coverage).
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int
    n_real: int
    n_fake: int
    real_radii: np.ndarray = field(repr=False)
    fake_radii: np.ndarray = field(repr=False)
    fake_ball_counts: np.ndarray = field(repr=False)
    real_in_fake_manifold: np.ndarray = field(repr=False)
    real_covered: np.ndarray = field(repr=False)


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> PRDCResult:
    """Precision, recall, density and coverage of ``fake`` against ``real`` with k-NN radii.

    The same definition and numbers as ``prdc.compute_prdc(real, fake, nearest_k=k)`` (strict
    ``<``, radius counting the point itself), in memory that does not grow with N², and with
    every comparison decided exactly (see the module docstring).

    Args:
        real: ``(n1, d)`` features of real images; ``n1 > k``.
        fake: ``(n2, d)`` features of synthetic images; ``n2 > k``.
        k: neighbours per radius (5 in both papers' recommendations).

    Returns:
        :class:`PRDCResult`; NaN figures with a warning when a set has ``k`` rows or fewer.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(300, 4)).astype(np.float32)
        >>> r = prdc(x, x, k=5)
        >>> r.precision, r.recall, r.density, r.coverage
        (1.0, 1.0, 1.0, 1.0)
    """
    r, f = _pair(real, fake)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive integer; got {k!r}")
    k = int(k)
    if min(r.shape[0], f.shape[0]) <= k:
        warnings.warn(
            f"precision/recall/density/coverage need more than k = {k} samples per set; got {r.shape[0]} real and {f.shape[0]} fake",
            RuntimeWarning,
            stacklevel=2,
        )
        nan = math.nan
        return PRDCResult(nan, nan, nan, nan, k, r.shape[0], f.shape[0], *(np.empty(0),) * 5)
    r32, f32 = _as_f32(r), _as_f32(f)
    return prdc_with_radii(r32, f32, knn_radii_sq(r32, k), knn_radii_sq(f32, k), k=k)


def _as_f32(x: np.ndarray) -> np.ndarray:
    """float32, C-contiguous (FAISS and the tiled pass work in float32; exact checks in float64)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def _row_sq_norms(x: np.ndarray, *, rows: int = 2048) -> np.ndarray:
    """Each row's squared norm, in float64, converting ``rows`` rows at a time: a whole float64
    copy (164 MB at 20,000 x 1,024) took 0.95 s here, mostly the first touch of its new pages,
    against 0.03 s in chunks."""
    return np.concatenate([np.einsum("ij,ij->i", c, c) for c in (x[s : s + rows].astype(np.float64) for s in range(0, max(len(x), 1), rows))])


def _exact_sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared distances between paired rows, in float64 from the difference vectors (identical
    rows give exactly 0, which the expanded ``|x|² + |y|² - 2 x·y`` does not)."""
    diff = x.astype(np.float64) - y.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def _as_reference_distance(sq: np.ndarray | float) -> np.ndarray:
    """Accurate squared distances -> the float32 distances ``prdc`` compares: scikit-learn
    rounds each squared distance to float32 and takes a float32 square root."""
    return np.sqrt(np.asarray(sq, dtype=np.float32))


def knn_radii_sq(x: np.ndarray, k: int, *, chunk_size: int = 2048, tile: int = PRDC_TILE, method: str = "auto") -> np.ndarray:
    """Squared distance of every row of ``x`` to its k-th nearest neighbour in ``x``, the row
    itself counted at distance 0 (so: the (k+1)-th smallest distance, as ``prdc`` does), exact.

    A float32 pass proposes ``k + 1 + extra`` candidates per row: :func:`privaudit.search.self_knn`
    ranks the rows by ``x_i . x_j - |x_j|^2 / 2``, the order of Euclidean distance, over the upper
    triangle of tiles of ``X X^T`` (half a product; FAISS's full search below
    :data:`privaudit.search.SELF_TRIANGLE_FROM_DIM` dimensions). The candidates' distances are
    recomputed in float64 and the radius taken from those. The radius is provably the exact one
    when it lies below the last candidate's float32 distance minus the float32 error bound: no
    other point can then be closer. Rows that fail the test are searched again with FAISS
    (``IndexFlatL2``) and 4x the candidates, up to all points. ``tile`` and ``method`` are
    :func:`~privaudit.search.self_knn`'s.
    """
    from privaudit.search import record_search, self_knn, self_search_kind, timed_searches

    started = time.perf_counter()
    x = _as_f32(x)
    n, d = x.shape
    if not 1 <= k < n:
        raise InputError(f"k must lie in [1, {n - 1}] for {n} samples; got {k}")
    norms = _row_sq_norms(x)
    # The candidates' float32 distances |x_i|² - 2 (x_i·x_j - |x_j|²/2) err by less than about
    # 2 (d + 3) u (|x_i|² + |x_j|²) for any summation order (the product's error, Higham,
    # Accuracy and Stability, 3.1, with the offset's and the score's roundings); twice that.
    err = 4.0 * (d + 8) * _U32 * (norms + norms.max())
    want = min(n, k + 1 + _EXTRA_CANDIDATES)
    out = np.empty(n, dtype=np.float64)

    def settle(rows: np.ndarray, dist32: np.ndarray, idx: np.ndarray, want: int) -> np.ndarray:
        """Exact radii of ``rows`` from their candidates; returns the rows that fail the proof.

        Only the candidates whose float32 distance may tie with the radius are recomputed in
        float64 (usually one a row; all ``want`` took 0.65 s of 5 s at 20,000 x 1,024). Each
        candidate's exact distance lies in ``[f - e, f + e]`` (``f`` its float32 distance, ``e``
        the bound), so the radius ``v``, the k-th smallest exact distance, lies between the k-th
        smallest lower and upper bounds, ``l_k <= v <= u_k``. A candidate with ``f + e < l_k``
        is below ``v`` and is only counted; one with ``f - e > u_k`` is above it; ``v`` is the
        (k - count)-th smallest of the exact distances of the rest.
        """
        f = np.empty((len(rows), want + 1), dtype=np.float64)
        f[:, :want] = dist32
        # The row itself is at distance 0, exactly; with many duplicates it may not be a candidate.
        f[:, want] = np.where((idx == rows[:, None]).any(axis=1), np.inf, 0.0)
        bound = err[rows]
        e = np.repeat(bound[:, None], want + 1, axis=1)
        e[:, want] = 0.0
        lower, upper = f - e, f + e
        l_k = np.partition(lower, k, axis=1)[:, k, None]
        u_k = np.partition(upper, k, axis=1)[:, k, None]
        below = (upper < l_k).sum(axis=1)
        band = (upper >= l_k) & (lower <= u_k)
        exact = np.where(band, f, np.inf)  # the row itself (column `want`): exact already
        line, cand = np.nonzero(band[:, :want])
        for s in range(0, line.size, chunk_size):
            at = slice(s, s + chunk_size)
            exact[line[at], cand[at]] = _exact_sq_dist(x[rows[line[at]]], x[idx[line[at], cand[at]]])
        r2 = np.take_along_axis(np.sort(exact, axis=1), (k - below)[:, None], axis=1)[:, 0]
        ok = (want >= n) | (r2 < dist32[:, -1].astype(np.float64) - bound)
        out[rows[ok]] = r2[ok]
        return rows[~ok]

    with timed_searches():  # a block of its own: recorded once below, the float64 checks included
        found = self_knn(x, k=want, tile=tile, offsets=(norms / 2.0).astype(np.float32), method=method)
    # Ascending float32 distances; float32 scores, as an all-float32 pass has them.
    dist32 = norms[:, None] - 2.0 * found.similarities.astype(np.float64)
    idx = found.indices
    failed = [settle(np.arange(s, min(s + chunk_size, n)), dist32[s : s + chunk_size], idx[s : s + chunk_size], want) for s in range(0, n, chunk_size)]
    todo = np.concatenate(failed)
    index = None
    while todo.size:
        import faiss

        want = min(n, want * 4)
        log.debug("k-NN radii: %d row(s) searched again with %d candidates", todo.size, want)
        if index is None:
            index = faiss.IndexFlatL2(d)
            index.add(x)
        failed = []
        for start in range(0, todo.size, chunk_size):
            rows = todo[start : start + chunk_size]
            dist32, idx = index.search(x[rows], want)
            failed.append(settle(rows, dist32, idx, want))
        todo = np.concatenate(failed)
    record_search(self_search_kind(d, method), n, n, d, k + 1, started)
    return out


def prdc_with_radii(
    real: np.ndarray,
    fake: np.ndarray,
    real_r2: np.ndarray,
    fake_r2: np.ndarray,
    *,
    k: int,
    tile: int = PRDC_TILE,
) -> PRDCResult:
    """The PRDC cross pass, given squared k-NN radii (from :func:`knn_radii_sq`).

    One pass over (fake x real) tiles of the product ``F R^T``. For a fake ``f_j`` and a real
    ``r_i`` with ``a_i = |r_i|²``, ``b_j = |f_j|²``:

    * ``f_j`` is in ``r_i``'s ball iff ``M_ji = f_j·r_i - b_j/2 - (a_i - r_i²)/2 > 0``, which an
      augmented product ``[f_j, -b_j/2, 1]·[r_i, 1, -(a_i - r_i²)/2]`` gives directly;
    * ``r_i`` is in ``f_j``'s ball iff ``M_ji + s_j²/2 > r_i²/2``.

    Both are computed in float32; entries within the float32 error bound of the threshold are
    decided again in float64 from the difference vectors, so that every decision is exact.
    """
    import torch

    n_r, d = real.shape
    n_f = fake.shape[0]
    a, b = _row_sq_norms(real), _row_sq_norms(fake)
    alpha = (a - real_r2) / 2.0
    r_aug = torch.from_numpy(np.concatenate([real, np.ones((n_r, 1), np.float32), (-alpha)[:, None].astype(np.float32)], axis=1))
    f_aug = torch.from_numpy(np.concatenate([fake, (-b / 2.0)[:, None].astype(np.float32), np.ones((n_f, 1), np.float32)], axis=1))
    half_s2 = torch.from_numpy((fake_r2 / 2.0).astype(np.float32))
    half_r2 = real_r2 / 2.0
    # Error bound of the float32 margins: a dot product of length d + 2 errs by at most
    # gamma_(d+2) sum |x_k y_k| (Higham, Accuracy and Stability, 3.1), here at most
    # |f| |r| + b/2 + |alpha|, plus the rounding of the appended terms; doubled for safety.
    # A wider band is only slower (more float64 rechecks), never wrong.
    gamma = 2.0 * (d + 8) * _U32
    sqrt_a, sqrt_b, abs_alpha = np.sqrt(a), np.sqrt(b), np.abs(alpha)
    s2_max = float(fake_r2.max())

    counts = np.zeros(n_f, dtype=np.int64)
    covered = np.zeros(n_r, dtype=bool)
    recalled = np.zeros(n_r, dtype=bool)
    # Buffers are reused from tile to tile: fresh 64 MB allocations (and their page faults)
    # cost as much as the comparisons themselves.
    flat = (torch.empty(min(tile, n_f) * min(tile, n_r)), torch.empty(min(tile, n_f) * min(tile, n_r)))
    ones = torch.ones(min(tile, n_r))
    with torch.inference_mode():
        for j0 in range(0, n_f, tile):
            j1 = min(j0 + tile, n_f)
            fj = f_aug[j0:j1]
            for i0 in range(0, n_r, tile):
                i1 = min(i0 + tile, n_r)
                shape = (j1 - j0, i1 - i0)
                m, scratch = (buf[: shape[0] * shape[1]].view(shape) for buf in flat)
                # One tolerance per tile, from the tile's largest norms.
                scale = float(sqrt_b[j0:j1].max() * sqrt_a[i0:i1].max() + b[j0:j1].max() / 2.0 + abs_alpha[i0:i1].max())
                tol = gamma * scale
                tol2 = tol + 4.0 * _U32 * (scale + s2_max)
                torch.mm(fj, r_aug[i0:i1].T, out=m)  # (fakes, reals) margins of "fake in real ball"
                # Counts through a float 0/1 mask and a matrix-vector product: faster than
                # summing a bool tensor, and exact (integers below 2^24).
                torch.gt(m, tol, out=scratch)
                counts[j0:j1] += (scratch @ ones[: shape[1]]).numpy().astype(np.int64)
                covered[i0:i1] |= (m.amax(dim=0) > tol).numpy()
                # Rows holding a margin within the band (few) are decided again in float64.
                torch.abs(m, out=scratch)
                band_rows = (scratch.amin(dim=1) <= tol).numpy()
                if band_rows.any():
                    _resolve_in_real_balls(m, band_rows, tol, real, fake, real_r2, j0, i0, counts, covered)
                # Recall: "real in fake ball" margins, compared with r_i²/2.
                m += half_s2[j0:j1, None]
                colmax = m.amax(dim=0).numpy().astype(np.float64)
                target = half_r2[i0:i1]
                recalled[i0:i1] |= colmax > target + tol2
                border = np.flatnonzero(~recalled[i0:i1] & (colmax > target - tol2))
                for ci in border:
                    cand = torch.nonzero(m[:, ci] > float(target[ci] - tol2)).ravel().numpy() + j0
                    exact = _exact_sq_dist(np.broadcast_to(real[i0 + ci], (cand.size, d)), fake[cand])
                    if (_as_reference_distance(exact) < _as_reference_distance(fake_r2[cand])).any():
                        recalled[i0 + ci] = True
    return PRDCResult(
        precision=float((counts > 0).mean()),
        recall=float(recalled.mean()),
        density=float(counts.sum() / (k * n_f)),
        coverage=float(covered.mean()),
        k=k,
        n_real=n_r,
        n_fake=n_f,
        real_radii=np.sqrt(real_r2),
        fake_radii=np.sqrt(fake_r2),
        fake_ball_counts=counts,
        real_in_fake_manifold=recalled,
        real_covered=covered,
    )


def _resolve_in_real_balls(
    m: object,
    rows: np.ndarray,
    tol: float,
    real: np.ndarray,
    fake: np.ndarray,
    real_r2: np.ndarray,
    j0: int,
    i0: int,
    counts: np.ndarray,
    covered: np.ndarray,
) -> None:
    """Decide in float64 the (fake, real) pairs of a tile whose float32 margin is within ``tol``."""
    import torch

    assert isinstance(m, torch.Tensor)
    sub = m[torch.from_numpy(np.flatnonzero(rows))]
    jj, ii = torch.nonzero((sub > -tol) & (sub <= tol), as_tuple=True)
    fj = np.flatnonzero(rows)[jj.numpy()] + j0
    ri = ii.numpy() + i0
    inside = _as_reference_distance(_exact_sq_dist(fake[fj], real[ri])) < _as_reference_distance(real_r2[ri])
    np.add.at(counts, fj[inside], 1)
    covered[ri[inside]] = True


# --------------------------------------------------------------------------------------------
# Classification accuracy score (CAS)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassAccuracy:
    """Per-class figures of a CAS comparison: the share of real test images of ``label`` that each
    classifier assigns to ``label`` (that class's recall), with 95 % bootstrap intervals, and how
    many training images of the class each classifier had."""

    label: str
    n_test: int
    n_train_synthetic: int
    n_train_real: int
    cas: float
    cas_ci_low: float | None
    cas_ci_high: float | None
    trtr: float
    trtr_ci_low: float | None
    trtr_ci_high: float | None


@dataclass(frozen=True)
class CASResult:
    """Classification accuracy score (Ravuri & Vinyals 2019) next to its real-data reference.

    Attributes:
        cas: accuracy on the real test images of a classifier trained on synthetic images.
        trtr: accuracy of the same classifier trained on real training images ("train on real,
            test on real").
        ratio: ``cas / trtr``: about 1 when the synthetic images teach the task as well as the
            real ones; NaN when ``trtr`` is 0.
        *_ci_low, *_ci_high: 95 % percentile bootstrap intervals over the test images (over
            test patients when ``groups`` were given), paired: both classifiers are evaluated on
            the same resampled test set.
        n_test, n_test_groups: test images, and the independent units resampled.
        n_train_synthetic, n_train_real: training images of each classifier.
        classes: the labels, sorted.
        per_class: per-class recall of both classifiers.
        classifier: what was trained.
        n_bootstrap: bootstrap replicates (0: no intervals).
    """

    cas: float
    cas_ci_low: float | None
    cas_ci_high: float | None
    trtr: float
    trtr_ci_low: float | None
    trtr_ci_high: float | None
    ratio: float
    ratio_ci_low: float | None
    ratio_ci_high: float | None
    n_test: int
    n_test_groups: int
    n_train_synthetic: int
    n_train_real: int
    classes: tuple[str, ...]
    per_class: tuple[ClassAccuracy, ...]
    classifier: str
    n_bootstrap: int


def _labels(y: object, n: int, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"got {arr.shape} for {name}; expected one label per row ({n},)")
    return arr.astype(str)


def fit_predict_linear(train_x: np.ndarray, train_y: Sequence[object], test_x: np.ndarray) -> np.ndarray:
    """Train a linear classifier on features and predict the test rows.

    Standardised features and multinomial logistic regression (scikit-learn, L2 penalty C = 1,
    lbfgs: deterministic). A training set of a single class gives a constant prediction: a
    classifier trained only on that class can predict nothing else.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = _features(train_x, "train_x", min_rows=1)
    t = _features(test_x, "test_x")
    y = _labels(train_y, x.shape[0], "train_y")
    classes = np.unique(y)
    if classes.size == 1:
        return np.full(t.shape[0], classes[0])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(), _blas_threads(100 * x.shape[0] * x.shape[1]):
        # A nearly separable training set can stop at max_iter with a ConvergenceWarning; the
        # fit is still the classifier to score (the score, not the warning, tells its worth).
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        model.fit(x.astype(np.float64), y)
    return np.asarray(model.predict(t.astype(np.float64))).astype(str)


def fit_predict_cnn(
    train_images: np.ndarray,
    train_y: Sequence[object],
    test_images: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Train a small CNN on images and predict the test images.

    Args:
        train_images: ``(N, H, W)`` float32 in [0, 1] (privaudit's working format, one size).
        train_y: one label per training image.
        test_images: ``(M, H, W)`` of the same size.
        epochs, batch_size: the training budget (Adam, learning rate 1e-3, weight decay 1e-4).
        seed: seeds the weight initialisation and the batch order (a private ``torch.Generator``;
            global random state is not touched).

    Three 3x3 convolution blocks (16, 32, 64 channels, ReLU, 2x2 max-pooling after the first
    two), global average pooling and a linear layer. Small on purpose: it is a yardstick that
    is trained identically on synthetic and on real images, not a state-of-the-art model.
    """
    import torch
    from torch import nn

    x = np.asarray(train_images, dtype=np.float32)
    t = np.asarray(test_images, dtype=np.float32)
    if x.ndim != 3 or t.ndim != 3 or x.shape[1:] != t.shape[1:]:
        raise InputError(f"got {x.shape} and {t.shape} for the CNN's images; expected (N, H, W) of one size")
    y = _labels(train_y, x.shape[0], "train_y")
    classes = np.unique(y)
    if classes.size == 1:
        return np.full(t.shape[0], classes[0])
    target = torch.from_numpy(np.searchsorted(classes, y))
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes.size),
    )
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=gen)
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            nn.init.uniform_(module.bias, -bound, bound, generator=gen)
    inputs = torch.from_numpy(x)[:, None] - 0.5
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    # One intra-op thread: the layers are so small that handing each one to a pool costs more
    # than it saves (a 100-image fit took 1.6 s on one thread, 7 to 12 s on two, on a busy
    # 2-core machine). The caller's setting is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=gen)
            for start in range(0, len(inputs), batch_size):
                batch = order[start : start + batch_size]
                optimiser.zero_grad()
                loss_fn(model(inputs[batch]), target[batch]).backward()
                optimiser.step()
        model.eval()
        with torch.inference_mode():
            test = torch.from_numpy(t)[:, None] - 0.5
            pred = torch.cat([model(test[s : s + 512]).argmax(dim=1) for s in range(0, len(test), 512)])
    finally:
        torch.set_num_threads(threads)
    return classes[pred.numpy()]


def cas_from_predictions(
    test_y: Sequence[object],
    pred_synthetic: Sequence[object],
    pred_real: Sequence[object],
    *,
    train_synthetic_y: Sequence[object],
    train_real_y: Sequence[object],
    groups: Sequence[object] | None = None,
    n_bootstrap: int = 1000,
    rng: np.random.Generator | int = 0,
    classifier: str = "",
) -> CASResult:
    """CAS, TRTR, their ratio and per-class figures from the two classifiers' predictions on the
    same real test set, with paired percentile bootstrap intervals (over ``groups``, e.g.
    patients, when given: scans of one patient are not independent).

    Args:
        test_y: labels of the real test images.
        pred_synthetic: predictions of the classifier trained on synthetic images.
        pred_real: predictions of the classifier trained on real training images.
        train_synthetic_y, train_real_y: the two training sets' labels (for counts per class).
        groups: independent units of the test set (patient ids), or ``None`` for images.
        n_bootstrap: bootstrap replicates; 0 gives no intervals.
        rng: generator or seed of the bootstrap.
        classifier: a description of the classifier, recorded in the result.
    """
    y = np.asarray(test_y)
    y = _labels(y, y.shape[0] if y.ndim else 0, "test_y")
    n = y.shape[0]
    if n == 0:
        raise InputError("the test set is empty")
    ps = _labels(pred_synthetic, n, "pred_synthetic")
    pr = _labels(pred_real, n, "pred_real")
    hit_s, hit_r = (ps == y).astype(np.float64), (pr == y).astype(np.float64)
    classes = tuple(sorted(set(y.tolist())))
    if groups is None:
        unit = np.arange(n)
    else:
        g = _labels(groups, n, "groups")
        _, unit = np.unique(g, return_inverse=True)
    n_units = int(unit.max()) + 1
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    # Per unit sums make the cluster bootstrap a weighted sum: a replicate draws units with
    # replacement, i.e. multinomial counts per unit.
    def sums(values: np.ndarray) -> np.ndarray:
        return np.bincount(unit, weights=values, minlength=n_units)

    unit_n = sums(np.ones(n))
    unit_s, unit_r = sums(hit_s), sums(hit_r)
    per_class_units = {c: (sums((y == c).astype(float)), sums(hit_s * (y == c)), sums(hit_r * (y == c))) for c in classes}

    def ratio(s: np.ndarray | float, r: np.ndarray | float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(np.asarray(r) > 0, np.asarray(s) / np.asarray(r), np.nan)

    cas_v, trtr_v = hit_s.mean(), hit_r.mean()
    ci: dict[str, tuple[float | None, float | None]] = {}
    if n_bootstrap > 0:
        w = gen.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_bootstrap).astype(np.float64)
        tot = w @ unit_n
        bs, br = (w @ unit_s) / tot, (w @ unit_r) / tot
        ci["cas"], ci["trtr"], ci["ratio"] = _pct(bs), _pct(br), _pct(ratio(bs, br))
        for c, (cn, cs, cr) in per_class_units.items():
            tot_c = w @ cn
            with np.errstate(divide="ignore", invalid="ignore"):
                ci[f"s:{c}"], ci[f"r:{c}"] = _pct((w @ cs) / tot_c), _pct((w @ cr) / tot_c)
    none = (None, None)
    syn_y = np.asarray(train_synthetic_y).astype(str).ravel()
    real_y = np.asarray(train_real_y).astype(str).ravel()
    per_class = []
    for c in classes:
        cn, cs, cr = per_class_units[c]
        per_class.append(
            ClassAccuracy(
                label=c,
                n_test=int(cn.sum()),
                n_train_synthetic=int((syn_y == c).sum()),
                n_train_real=int((real_y == c).sum()),
                cas=float(cs.sum() / cn.sum()),
                cas_ci_low=ci.get(f"s:{c}", none)[0],
                cas_ci_high=ci.get(f"s:{c}", none)[1],
                trtr=float(cr.sum() / cn.sum()),
                trtr_ci_low=ci.get(f"r:{c}", none)[0],
                trtr_ci_high=ci.get(f"r:{c}", none)[1],
            )
        )
    return CASResult(
        cas=float(cas_v),
        cas_ci_low=ci.get("cas", none)[0],
        cas_ci_high=ci.get("cas", none)[1],
        trtr=float(trtr_v),
        trtr_ci_low=ci.get("trtr", none)[0],
        trtr_ci_high=ci.get("trtr", none)[1],
        ratio=float(ratio(cas_v, trtr_v)),
        ratio_ci_low=ci.get("ratio", none)[0],
        ratio_ci_high=ci.get("ratio", none)[1],
        n_test=n,
        n_test_groups=n_units,
        n_train_synthetic=int(syn_y.size),
        n_train_real=int(real_y.size),
        classes=classes,
        per_class=tuple(per_class),
        classifier=classifier,
        n_bootstrap=n_bootstrap,
    )


def _pct(values: np.ndarray) -> tuple[float | None, float | None]:
    """2.5 and 97.5 percentiles of the finite values (None when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (None, None)
    lo, hi = np.percentile(v, [2.5, 97.5])
    return (float(lo), float(hi))


def cas(
    synthetic_x: np.ndarray,
    synthetic_y: Sequence[object],
    real_x: np.ndarray,
    real_y: Sequence[object],
    test_x: np.ndarray,
    test_y: Sequence[object],
    *,
    groups: Sequence[object] | None = None,
    n_bootstrap: int = 1000,
    rng: np.random.Generator | int = 0,
) -> CASResult:
    """Classification accuracy score with a linear classifier on features (Ravuri & Vinyals 2019).

    Trains :func:`fit_predict_linear` on the synthetic features and, identically, on real
    training features, and tests both on the same real test features (a holdout of other
    patients). Give both training sets the same size: accuracy grows with training data.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> def draw(n):
        ...     y = rng.integers(0, 2, n)
        ...     return rng.normal(size=(n, 5)) + 2 * y[:, None], y
        >>> (sx, sy), (rx, ry), (tx, ty) = draw(200), draw(200), draw(400)
        >>> r = cas(sx, sy, rx, ry, tx, ty, n_bootstrap=0)
        >>> r.cas > 0.9 and 0.9 < r.ratio < 1.1
        True
    """
    sx, rx, tx = _features(synthetic_x, "synthetic_x"), _features(real_x, "real_x"), _features(test_x, "test_x")
    if not sx.shape[1] == rx.shape[1] == tx.shape[1]:
        raise InputError(f"feature dimensions differ: synthetic {sx.shape[1]}, real {rx.shape[1]}, test {tx.shape[1]}")
    pred_s = fit_predict_linear(sx, synthetic_y, tx)
    pred_r = fit_predict_linear(rx, real_y, tx)
    return cas_from_predictions(
        test_y, pred_s, pred_r,
        train_synthetic_y=synthetic_y, train_real_y=real_y,
        groups=groups, n_bootstrap=n_bootstrap, rng=rng, classifier="logistic regression on standardised features",
    )
