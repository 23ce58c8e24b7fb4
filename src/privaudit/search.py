"""Nearest-neighbour search: FAISS inner-product kNN in bounded memory, exact or approximate,
and a numpy reference.

Embeddings are unit vectors, so the inner product is the cosine similarity. Queries are processed
in chunks of ``chunk_size`` rows: memory holds one ``chunk_size x k`` result block and FAISS's own
``chunk_size x N`` similarity block, whatever the number of queries.

**Exact** search (``IndexFlatIP``) is a float32 matrix product and already runs at the speed of
one (``benchmarks/copy_search.py``). It costs ``n_queries x n_base x d``: at 100k x 100k x 512
about 40 s on 2 cores, growing with the square of the set size.

**Approximate** search (``index="ivf"``) is an inverted file (``IndexIVFFlat``): k-means splits
the base into ``nlist = 2 sqrt(n_base)`` lists, and each query scans only the ``nprobe = 8``
lists whose centroids are most similar to it (1.3 % of the base at 100k). Near-copies sit next
to their source, so they share its list or a neighbouring one: the high-similarity tail, which
is what the copies check calls on, is found even where the nearest neighbour of an unrelated
image is sometimes missed. The candidates are re-ranked exactly: their inner products with the
query are recomputed in float32 from the stored vectors, so every similarity returned is a true
similarity (a found pair has the same value as exact search gives it; a missed one can only make
the returned neighbour *less* similar). k-means is trained on a seeded sample of the base with a
fixed seed, so the same inputs and seed give the same index and the same neighbours.

``index="auto"`` uses exact search below :data:`APPROXIMATE_FROM` base vectors and IVF from
there on, where it starts to pay (measured in ``benchmarks/copy_search.py``; see the README).
Approximate search never measures its own agreement: callers that rely on it (the copies check)
check a sample against exact search and report the result.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from privaudit.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: `import privaudit.search` stays light
    import torch

#: Query rows per FAISS call. 4096 x 100k float32 similarities are 1.6 GB at most inside FAISS;
#: smaller chunks cost little (FAISS blocks the product itself), larger ones save nothing.
DEFAULT_CHUNK_SIZE = 4096

#: Base size from which ``index="auto"`` uses approximate (IVF) search instead of exact search.
#: Below it exact search takes seconds and IVF's k-means training eats most of its gain
#: (measured in benchmarks/copy_search.py; the README has the figures).
APPROXIMATE_FROM = 50_000

#: IVF lists per square root of the base size (``nlist = IVF_LISTS_PER_SQRT * sqrt(n)``).
IVF_LISTS_PER_SQRT = 2.0
#: Lists scanned per query.
IVF_NPROBE = 8
#: k-means training sample per list (FAISS asks for 39; fewer trains faster, and the
#: lists only need to keep near-copies together, not to be optimal).
IVF_TRAIN_POINTS_PER_LIST = 32
#: k-means iterations.
IVF_KMEANS_ITERATIONS = 10

IndexKind = Literal["auto", "exact", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("auto", "exact", "ivf")

#: The cluster that :func:`knn` hands its searches to while one is active
#: (:meth:`privaudit.cluster.ClusterBackend.activate`); ``None``: search in this process.
_remote = None


@dataclass(frozen=True)
class SearchTiming:
    """One search (or index build) and its wall time, as :func:`timed_searches` records it.

    Attributes:
        kind: ``"exact"`` (FAISS ``IndexFlatIP``), ``"ivf"`` (an IVF index searched, with its
            exact re-ranking), ``"ivf build"`` (its k-means training and filling; queries 0),
            ``"self"`` (a set in itself: :func:`self_knn`, or the quality check's k-NN radii,
            :func:`privaudit.metrics.knn_radii_sq`; half a product; below
            :data:`SELF_TRIANGLE_FROM_DIM` dimensions these run as FAISS's full search and are
            recorded as ``"exact"``) or ``"cluster"`` (exact search sharded on a Ray cluster).
        n_queries, n_base, dim: the shape of the search: an exact search costs at least an
            ``n_queries x n_base x dim`` matrix product, a ``"self"`` search half of one.
        k: neighbours per query.
        seconds: wall time.
        stage: the audit stage it ran in (``"check copies"``), where the pipeline set it.
    """

    kind: str
    n_queries: int
    n_base: int
    dim: int
    k: int
    seconds: float
    stage: str | None = None


_timings: contextvars.ContextVar[list[SearchTiming] | None] = contextvars.ContextVar("privaudit_search_timings", default=None)


@contextlib.contextmanager
def timed_searches() -> Iterator[list[SearchTiming]]:
    """Record every search run inside the ``with`` block, in order (the pipeline uses it per
    check, for ``results.json``'s ``run.searches``: what each search cost beside the matrix
    product it needs).

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> with timed_searches() as found:
        ...     _ = knn(x, x, k=1)
        >>> [(t.kind, t.n_queries, t.n_base, t.dim) for t in found]
        [('exact', 3, 3, 3)]
    """
    found: list[SearchTiming] = []
    token = _timings.set(found)
    try:
        yield found
    finally:
        _timings.reset(token)


def record_search(kind: str, n_queries: int, n_base: int, dim: int, k: int, started: float) -> None:
    """Add a search that began at ``started`` (:func:`time.perf_counter`) to the searches
    :func:`timed_searches` is recording, if any (other modules' own searches call it too:
    :func:`privaudit.metrics.knn_radii_sq`)."""
    found = _timings.get()
    if found is not None:
        found.append(SearchTiming(kind, int(n_queries), int(n_base), int(dim), int(k), time.perf_counter() - started))


@dataclass(frozen=True)
class Neighbors:
    """The ``k`` nearest base vectors of each query, most similar first.

    Attributes:
        similarities: ``(n_queries, k)`` float32 inner products (cosine for unit vectors).
        indices: ``(n_queries, k)`` int64 row numbers into the base set.
    """

    similarities: np.ndarray
    indices: np.ndarray

    @property
    def k(self) -> int:
        """Neighbours per query."""
        return int(self.indices.shape[1])

    def first(self, k: int) -> Neighbors:
        """The first ``k`` neighbours of each query."""
        return Neighbors(self.similarities[:, :k], self.indices[:, :k])


def _validate(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    _validate_base(base)
    if not isinstance(queries, np.ndarray) or queries.ndim != 2:
        raise InputError(f"got {getattr(queries, 'shape', None)} for queries; expected a 2D array (n, d)")
    if queries.shape[1] != base.shape[1]:
        raise InputError(
            f"queries have dimension {queries.shape[1]} but base has {base.shape[1]}"
        )
    if not 1 <= k <= base.shape[0]:
        raise InputError(f"k must lie in [1, {base.shape[0]}] (the base size); got {k}")
    return (
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(base, dtype=np.float32),
    )


def _validate_base(base: np.ndarray) -> None:
    if not isinstance(base, np.ndarray) or base.ndim != 2:
        raise InputError(f"got {getattr(base, 'shape', None)} for base; expected a 2D array (n, d)")
    if base.shape[0] == 0:
        raise InputError("the base set is empty")


def resolve_index(index: str, n_base: int, *, approximate_from: int = APPROXIMATE_FROM) -> str:
    """The index ``index`` stands for on a base of ``n_base`` vectors: ``"exact"`` or ``"ivf"``.

    ``"auto"`` is exact below ``approximate_from`` base vectors and IVF from there on.
    """
    if index not in INDEX_KINDS:
        raise ValueError(f"index must be one of {', '.join(INDEX_KINDS)}; got {index!r}")
    if approximate_from < 1:
        raise ValueError(f"approximate_from must be at least 1; got {approximate_from}")
    if index == "auto":
        return "ivf" if n_base >= approximate_from else "exact"
    return index


@dataclass(frozen=True)
class SearchInfo:
    """Which index a search used, with its parameters (for the record).

    Attributes:
        index: ``"exact"`` or ``"ivf"``.
        requested: what was asked for (``"auto"``, ``"exact"`` or ``"ivf"``).
        n_base: base vectors indexed.
        approximate_from: the base size from which ``"auto"`` goes approximate.
        nlist: IVF lists (``None`` for exact search).
        nprobe: IVF lists scanned per query.
        train_points: base vectors k-means was trained on.
        kmeans_iterations: k-means iterations.
        seed: the k-means seed (and the training sample's).
    """

    index: str
    requested: str
    n_base: int
    approximate_from: int
    nlist: int | None = None
    nprobe: int | None = None
    train_points: int | None = None
    kmeans_iterations: int | None = None
    seed: int | None = None

    @property
    def approximate(self) -> bool:
        """True for an approximate index."""
        return self.index != "exact"


class SearchIndex:
    """An index over one base set, built once and searched by several query sets.

    Args:
        base: ``(m, d)`` float32 vectors to search in (unit rows for cosine similarity).
        index: ``"exact"`` (``IndexFlatIP``), ``"ivf"`` (``IndexIVFFlat`` with exact
            re-ranking) or ``"auto"`` (exact below ``approximate_from`` base vectors).
        approximate_from: the switch size of ``"auto"``.
        nlist: IVF lists; default ``IVF_LISTS_PER_SQRT * sqrt(m)`` (at most ``m``).
        nprobe: IVF lists scanned per query; default :data:`IVF_NPROBE` (at most ``nlist``).
        seed: seeds the k-means training sample and initialisation.

    Example:
        >>> import numpy as np
        >>> x = np.eye(4, dtype=np.float32)
        >>> ix = SearchIndex(x, index="ivf", nlist=2, seed=0)
        >>> ix.search(x, k=1).indices.ravel().tolist()
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        base: np.ndarray,
        *,
        index: str = "auto",
        approximate_from: int = APPROXIMATE_FROM,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        import faiss

        started = time.perf_counter()
        _validate_base(base)
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        n, d = self.base.shape
        kind = resolve_index(index, n, approximate_from=approximate_from)
        if kind == "exact":
            self._index = faiss.IndexFlatIP(d)
            self._index.add(self.base)
            self.info = SearchInfo("exact", index, n, approximate_from)
            return
        nlist = nlist if nlist is not None else max(1, round(IVF_LISTS_PER_SQRT * math.sqrt(n)))
        if nlist < 1:
            raise ValueError(f"nlist must be at least 1; got {nlist}")
        nlist = min(nlist, n)
        nprobe = min(nprobe if nprobe is not None else IVF_NPROBE, nlist)
        if nprobe < 1:
            raise ValueError(f"nprobe must be at least 1; got {nprobe}")
        # k-means on a seeded sample: ours, so that FAISS does not subsample again with its own
        # stream (max_points_per_centroid is raised to keep every sampled point).
        rng = np.random.default_rng(seed)
        n_train = min(n, max(nlist, IVF_TRAIN_POINTS_PER_LIST * nlist))
        sample = self.base[np.sort(rng.choice(n, size=n_train, replace=False))] if n_train < n else self.base
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = IVF_KMEANS_ITERATIONS
        ivf.cp.seed = int(seed) % (2**31)
        ivf.cp.max_points_per_centroid = max(1, -(-n_train // nlist))
        ivf.cp.min_points_per_centroid = 1  # small bases: no warning, training still works
        ivf.train(sample)
        ivf.add(self.base)
        ivf.nprobe = nprobe
        self._index = ivf
        self._quantizer = quantizer  # the IVF index does not own it: keep it alive
        self.info = SearchInfo("ivf", index, n, approximate_from, nlist, nprobe, int(n_train), IVF_KMEANS_ITERATIONS, int(seed))
        record_search("ivf build", 0, n, d, 0, started)

    @property
    def kind(self) -> str:
        """``"exact"`` or ``"ivf"``."""
        return self.info.index

    def search(self, queries: np.ndarray, *, k: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Neighbors:
        """The ``k`` most similar base vectors of each query, most similar first.

        With IVF, queries whose lists hold fewer than ``k`` vectors get ``-inf`` with index
        ``-1`` in the missing places (never with ``k = 1`` unless a list is empty).
        """
        started = time.perf_counter()
        q, _ = _validate(queries, self.base, k)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")
        sims = np.empty((q.shape[0], k), dtype=np.float32)
        idx = np.empty((q.shape[0], k), dtype=np.int64)
        for start in range(0, q.shape[0], chunk_size):
            stop = min(start + chunk_size, q.shape[0])
            s, i = self._index.search(q[start:stop], k)
            if self.kind != "exact":
                s, i = _rerank(q[start:stop], self.base, i)
            sims[start:stop], idx[start:stop] = s, i
        record_search(self.kind, q.shape[0], self.base.shape[0], self.base.shape[1], k, started)
        return Neighbors(sims, idx)

    def exact(self, queries: np.ndarray, *, k: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Neighbors:
        """Exact search of ``queries`` in the same base (to measure an approximate index)."""
        return knn(queries, self.base, k=k, chunk_size=chunk_size, index="exact")


def _rerank(queries: np.ndarray, base: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recompute the candidates' similarities exactly (float32 inner products with the stored
    vectors) and sort them, most similar first. Missing candidates (``-1``) stay last as ``-inf``."""
    valid = candidates >= 0
    vectors = base[np.where(valid, candidates, 0)]  # (n, k, d): chunk_size x k x d floats at most
    sims = np.einsum("nkd,nd->nk", vectors, queries, dtype=np.float32)
    sims[~valid] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")
    idx = np.take_along_axis(np.where(valid, candidates, -1), order, axis=1)
    return np.take_along_axis(sims, order, axis=1), idx


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    k: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    index: str = "exact",
    approximate_from: int = APPROXIMATE_FROM,
    seed: int = 0,
) -> Neighbors:
    """k-nearest neighbours by inner product, with FAISS.

    Args:
        queries: ``(n, d)`` float32 vectors.
        base: ``(m, d)`` float32 vectors to search in.
        k: neighbours per query (at most ``m``).
        chunk_size: query rows per FAISS call; bounds memory, not results.
        index: ``"exact"`` (default: ``IndexFlatIP``), ``"ivf"`` (approximate, re-ranked
            exactly) or ``"auto"`` (exact below ``approximate_from`` base vectors). Exact is
            the default here because callers other than the copies check do not measure an
            approximate index's agreement; see :class:`SearchIndex`.
        approximate_from: the switch size of ``"auto"``.
        seed: the IVF k-means seed.

    Returns:
        :class:`Neighbors`, most similar first. Ties may be ordered differently from
        :func:`knn_reference`; the similarities agree to float32 rounding.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> knn(x, x, k=1).indices.ravel().tolist()
        [0, 1, 2]
    """
    q, b = _validate(queries, base, k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")
    if _remote is not None and (index == "exact" or (index == "auto" and b.shape[0] < approximate_from)):
        started = time.perf_counter()
        found = _remote.knn(q, b, k=k, chunk_size=chunk_size)  # exact search, sharded on the cluster
        record_search("cluster", q.shape[0], b.shape[0], b.shape[1], k, started)
        return found
    return SearchIndex(b, index=index, approximate_from=approximate_from, seed=seed).search(q, k=k, chunk_size=chunk_size)


def knn_reference(queries: np.ndarray, base: np.ndarray, *, k: int = 1) -> Neighbors:
    """The same search by brute force in numpy: slow, obviously correct, used in tests.

    Ties are broken by the lower base index.
    """
    q, b = _validate(queries, base, k)
    sims = q.astype(np.float64) @ b.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return Neighbors(np.take_along_axis(sims, order, axis=1).astype(np.float32), order.astype(np.int64))


class NeighborMemo:
    """Exact k-NN searches remembered by the arrays searched, so that the parts of a check that
    need the same search (several attacks of the membership check; an attack and its control,
    which share the reference set) run it once.

    The arrays are kept with their results, so an id is never reused for another array while
    the memo lives; a later request for fewer neighbours is served from a larger search.

    Example:
        >>> import numpy as np
        >>> memo, x = NeighborMemo(), np.eye(3, dtype=np.float32)
        >>> memo.knn(x, x, k=2) is not None, memo.knn(x, x, k=1).indices.ravel().tolist(), memo.searches
        (True, [0, 1, 2], 1)
    """

    def __init__(self) -> None:
        self._found: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, Neighbors]] = {}
        #: Searches actually run.
        self.searches = 0

    def knn(self, queries: np.ndarray, base: np.ndarray, *, k: int = 1) -> Neighbors:
        """:func:`knn` (exact) of ``queries`` in ``base``, or its remembered result."""
        key = (id(queries), id(base))
        hit = self._found.get(key)
        if hit is not None and hit[0] is queries and hit[1] is base and hit[2].k >= k:
            return hit[2].first(k)
        found = knn(queries, base, k=k)
        self.searches += 1
        self._found[key] = (queries, base, found)
        return found


#: Rows and columns of one tile of :func:`self_knn`'s product: 4096 x 4096 float32 is 64 MB.
SELF_TILE = 4096

#: Dimension from which :func:`self_knn` multiplies the upper triangle of tiles itself. Below
#: it the product is cheap and the tiles' top-k passes cost more than the half product saves,
#: and FAISS's full search is faster. ``benchmarks/self_search.py --sizes 20000 --dim D``
#: (top-2, 2 threads, idle, 2026-12-07), times the half product: FAISS 1.43x at d = 64, 2.35x
#: at 256, 2.09x at 1,024; the triangle 4.60x, 3.75x and 1.74x.
SELF_TRIANGLE_FROM_DIM = 512


SELF_METHODS: tuple[str, ...] = ("auto", "triangle", "faiss")


def self_search_kind(dim: int, method: str = "auto") -> str:
    """How :func:`self_knn` searches a set of ``dim``-dimensional vectors in itself, as
    :class:`SearchTiming` names it: ``"self"`` (the upper triangle, half a product) or
    ``"exact"`` (FAISS, the whole product)."""
    if method not in SELF_METHODS:
        raise ValueError(f"method must be one of {', '.join(SELF_METHODS)}; got {method!r}")
    if method == "auto":
        return "self" if dim >= SELF_TRIANGLE_FROM_DIM else "exact"
    return "self" if method == "triangle" else "exact"


def _triangle_tiles(x: np.ndarray, tile: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """The upper triangle of tiles of ``x x^T``: ``(i0, j0, g)`` with ``g`` the float32 block of
    rows ``i0...`` and columns ``j0 >= i0...`` (one buffer, overwritten by the next tile).

    A tile on the diagonal (``j0 == i0``) is square and holds each pair twice: the ``tile`` rows
    along it are split once in two halves (three tiles: two on the diagonal, one off it), which
    computes 3/4 of its product. At 20,000 vectors and 4,096-tiles that trims the computed
    product from 1.20x to 1.10x the half product; at 100,000 from 1.04x to 1.02x.
    """
    n = x.shape[0]
    side = min(tile, n)
    prod = np.empty(side * side, dtype=np.float32)

    def block(i0: int, i1: int, j0: int, j1: int) -> tuple[int, int, np.ndarray]:
        # numpy's BLAS: 0.21 s per 4,096 x 4,096 x 1,024 tile here, torch.mm 0.28 s.
        g = prod[: (i1 - i0) * (j1 - j0)].reshape(i1 - i0, j1 - j0)
        np.matmul(x[i0:i1], x[j0:j1].T, out=g)
        return i0, j0, g

    for i0 in range(0, n, tile):
        i1 = min(i0 + tile, n)
        # The halves' sides stay multiples of 8 (the sparse merge groups by 8) where they can.
        half = ((i1 - i0) // 2 + 7) // 8 * 8
        if 64 <= half < i1 - i0:
            yield block(i0, i0 + half, i0, i0 + half)
            yield block(i0, i0 + half, i0 + half, i1)
            yield block(i0 + half, i1, i0 + half, i1)
        else:
            yield block(i0, i1, i0, i1)
        for j0 in range(i1, n, tile):
            yield block(i0, i1, j0, min(j0 + tile, n))


#: Values of a tile that :func:`_beating_candidates` groups under one maximum (interleaved:
#: group ``q`` of a row of width ``w`` holds its columns ``q, q + w/8, q + 2w/8, ...``).
_GROUP = 8


def _beating_candidates(
    g: torch.Tensor, threshold: torch.Tensor, *, columns: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The values of a tile that may enter its rows' (or columns') best lists, gathered sparsely.

    After the first tiles of a self-search few values beat a row's k-th best so far (about
    ``k`` a tile, falling as the search goes on), and a top-k of the whole tile (22 ms a
    4,096 x 4,096 tile here, 44 ms down its columns with the transposed copy that needs) spends
    its time on values that cannot enter. Here the tile's values are grouped (``_GROUP`` a
    group, interleaved so that the maxima are one contiguous reduction, 2-3 ms), and only the
    groups whose maximum beats the threshold are gathered: each row's candidates are every
    value of its beating groups, padded with ``-inf`` to the widest row's. A value that beats
    the threshold lies in a beating group, so nothing that could enter is left out.

    Args:
        g: ``(h, w)`` tile (torch, float32).
        threshold: one value per row of ``g`` (per column with ``columns``): the k-th best so far.
        columns: serve the columns of ``g`` (the set rows along its second axis).

    Returns:
        ``(local, values, others)``: the served rows that have candidates (positions along the
        served axis, ascending), their candidates ``(len(local), c)`` and the candidates'
        positions along the other axis; or ``None`` where sparse gathering does not pay (a
        quarter or more of some row's groups beat its threshold, as in a row's first tile) or
        the tile's other side is not a multiple of the group size (the dense top-k serves then).
    """
    import torch

    served, other = (g.shape[1], g.shape[0]) if columns else (g.shape[0], g.shape[1])
    # A row seen for the first time (no k-th yet) needs all of this tile.
    if other % _GROUP or other < 4 * _GROUP or bool(torch.isneginf(threshold).any()):
        return None
    m = other // _GROUP
    # Group q of a served row: the other-axis positions q + s m, s < _GROUP.
    maxima = g.view(_GROUP, m, served).amax(0).T if columns else g.view(served, _GROUP, m).amax(1)
    row, group = torch.nonzero(maxima > threshold[:, None], as_tuple=True)  # ascending rows, then groups
    if row.numel() == 0:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, 0), torch.empty(0, 0, dtype=torch.int64)
    counts = torch.bincount(row, minlength=served)
    widest = int(counts.max())
    if widest * 4 > m:
        return None
    positions = group[:, None] + torch.arange(_GROUP) * m  # (beating groups, _GROUP)
    # One gather from the flat tile (2-D advanced indexing took twice as long).
    flat = positions * served + row[:, None] if columns else row[:, None] * other + positions
    values = torch.take(g, flat)
    local = torch.nonzero(counts).ravel()
    slot = torch.cumsum(counts > 0, 0) - 1  # the served row's line in the output
    first = torch.cumsum(counts, 0) - counts  # its first beating group in `row`
    line = slot[row] * widest + torch.arange(row.numel()) - first[row]
    out_v = torch.full((local.numel() * widest, _GROUP), -math.inf)
    out_i = torch.zeros((local.numel() * widest, _GROUP), dtype=torch.int64)
    out_v.index_copy_(0, line, values)
    out_i.index_copy_(0, line, positions)
    return local, out_v.view(local.numel(), -1), out_i.view(local.numel(), -1)


def self_knn(
    vectors: np.ndarray, *, k: int = 1, tile: int = SELF_TILE, offsets: np.ndarray | None = None, method: str = "auto"
) -> Neighbors:
    """The ``k`` most similar vectors of each vector of one set, itself included, exact.

    Why not FAISS: searching a set in itself through ``IndexFlatIP`` computes every inner
    product twice (``x_i . x_j`` for row i, and again for row j). This pass computes only the
    upper triangle of tiles of ``X X^T`` and takes each tile's best values along both axes, so
    it costs about half a product (``benchmarks/self_search.py``, two runs at 100,000 x 1,024:
    1.26x and 1.31x the half product, 1.81x and 1.67x faster than FAISS). A row's first tile is
    sorted whole (a top-k); in the later ones only the values that may beat its k-th best so
    far are gathered (:func:`_beating_candidates`). Below
    :data:`SELF_TRIANGLE_FROM_DIM` dimensions FAISS's full search is faster, and is used. The similarities are float32 inner
    products, as FAISS's are (they may differ from FAISS's in the last bit: the sums run in
    another order).

    Args:
        vectors: ``(n, d)`` vectors (unit rows for cosine similarity).
        k: neighbours per vector, the vector itself among them (at most ``n``).
        tile: rows (and columns) of one tile; bounds memory, not results.
        offsets: optional ``(n,)`` values subtracted from each *neighbour's* similarity: the
            score of ``j`` for row ``i`` is ``x_i . x_j - offsets[j]``. With ``|x_j|^2 / 2``
            the order is that of Euclidean distance (``|x_i - x_j|^2 = |x_i|^2 - 2 score``),
            which :func:`privaudit.metrics.knn_radii_sq` uses for vectors of any norm.
        method: ``"triangle"`` (the tiled upper triangle), ``"faiss"`` (FAISS's full search)
            or ``"auto"`` (the triangle from :data:`SELF_TRIANGLE_FROM_DIM` dimensions on).

    Returns:
        :class:`Neighbors`, most similar first (ties in any order); with ``offsets``, its
        similarities are the scores.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> self_knn(x, k=1).indices.ravel().tolist()
        [0, 1, 2]
    """
    import torch

    started = time.perf_counter()
    _, x = _validate(vectors, vectors, k)
    if tile < 1:
        raise ValueError(f"tile must be at least 1; got {tile}")
    n = x.shape[0]
    h = None
    if offsets is not None:
        h = np.ascontiguousarray(offsets, dtype=np.float32).ravel()
        if h.shape != (n,):
            raise ValueError(f"offsets must hold one value per vector ({n}); got shape {np.shape(offsets)}")
    if self_search_kind(x.shape[1], method) == "exact":
        if h is None:
            return knn(x, x, k=k)
        # x_i . x_j - h_j as one inner product: [x_i, 1] . [x_j, -h_j].
        ones = np.ones((n, 1), dtype=np.float32)
        return knn(np.hstack([x, ones]), np.hstack([x, -h[:, None]]), k=k)
    best_v = torch.full((n, k), -math.inf)
    best_i = torch.full((n, k), -1, dtype=torch.int64)
    side = min(tile, n)
    flipped = torch.empty(side * side)
    ht = None if h is None else torch.from_numpy(h)

    def fold(at: torch.Tensor, top_v: torch.Tensor, top_i: torch.Tensor) -> None:
        """Merge candidate lists (one row per set row ``at``; ``-inf`` pads) into the best lists."""
        both_v = torch.cat([best_v[at], top_v], dim=1)
        both_i = torch.cat([best_i[at], top_i], dim=1)
        keep = torch.topk(both_v, k, dim=1)
        best_v[at] = keep.values
        best_i[at] = torch.gather(both_i, 1, keep.indices)

    def merge(lo: int, g: torch.Tensor, offset: int, *, columns: bool = False) -> None:
        """Fold the rows of ``g`` (or its columns: rows ``lo...`` of the set, the other axis
        starting at ``offset``) into the best lists: through :func:`_beating_candidates` where
        few values beat the rows' k-th best so far, else by a top-k of every row that needs it."""
        count = g.shape[1] if columns else g.shape[0]
        rows = slice(lo, lo + count)
        sparse = _beating_candidates(g, best_v[rows, -1], columns=columns)
        if sparse is not None:
            local, values, others = sparse
            if local.numel():
                fold(local + lo, values, others + offset)
            return
        need = torch.nonzero(g.amax(dim=0 if columns else 1) > best_v[rows, -1]).ravel()
        if need.numel() == 0:
            return
        # Where most rows need it, the whole tile is sorted: gathering the rows first would
        # copy nearly all of it for nothing.
        whole = need.numel() * 4 > count * 3
        if columns:
            # Gathered contiguous first: a top-k down the columns of a 4,096 x 4,096 tile took
            # 0.080 s, a copy and a top-k along rows 0.039 s.
            sub = flipped[: (count if whole else need.numel()) * g.shape[0]].view(-1, g.shape[0])
            sub.copy_(g.T if whole else g[:, need].T)
        else:
            sub = g if whole else g[need]
        top = torch.topk(sub, min(k, sub.shape[1]), dim=1)
        top_v, top_i = (top.values[need], top.indices[need]) if whole and need.numel() < count else (top.values, top.indices)
        fold(need + lo, top_v, top_i + offset)

    with torch.inference_mode():
        for i0, j0, g_np in _triangle_tiles(x, tile):
            g = torch.from_numpy(g_np)
            i1, j1 = i0 + g.shape[0], j0 + g.shape[1]
            if ht is not None:
                g.sub_(ht[None, j0:j1])  # rows i0:i1 score their neighbours j0:j1
            merge(i0, g, j0)
            if j0 != i0:  # the same tile, transposed, serves the rows j0:j1
                if ht is not None:
                    g.add_(ht[None, j0:j1]).sub_(ht[i0:i1, None])
                merge(j0, g, i0, columns=True)
    order = torch.argsort(best_v, dim=1, descending=True, stable=True)
    sims = torch.gather(best_v, 1, order).numpy().astype(np.float32)
    record_search("self", n, n, x.shape[1], k, started)
    return Neighbors(sims, torch.gather(best_i, 1, order).numpy())


def nearest_other(vectors: np.ndarray, *, groups: np.ndarray | None = None, tile: int = SELF_TILE) -> Neighbors:
    """Each vector's most similar *other* vector (another group's, with ``groups``), exact,
    over the upper triangle of tiles of ``X X^T``: half a product.

    :func:`self_knn` serves any ``k`` and keeps sorted best lists (a top-k per tile and axis);
    with one neighbour wanted, a running maximum along each axis of a tile is all it takes,
    which is what the within-set duplicates and the leave-one-patient-out nulls ask. The
    vector itself (and, with ``groups``, every vector of its group) is masked out of its tile
    before the maxima are taken, so an exact duplicate is found as the other vector, never
    as itself. Similarities are float32 inner products, as FAISS's are.

    Returns:
        :class:`Neighbors` of one column; ``-inf`` and index ``-1`` where no admissible
        neighbour exists (one vector, or one group).
    """
    import torch

    started = time.perf_counter()
    _, x = _validate(vectors, vectors, 1)
    if tile < 1:
        raise ValueError(f"tile must be at least 1; got {tile}")
    n = x.shape[0]
    g_ids = None
    if groups is not None:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        if inverse.shape != (n,):
            raise ValueError(f"groups must hold one label per vector ({n}); got shape {np.shape(groups)}")
        g_ids = torch.from_numpy(inverse.astype(np.int64))
    best_v = torch.full((n,), -math.inf)
    best_i = torch.full((n,), -1, dtype=torch.int64)
    side = min(tile, n)
    is_top, row_of = torch.empty(side * side, dtype=torch.bool), torch.empty(side * side, dtype=torch.int32)
    row_ids, no_row = torch.arange(side, dtype=torch.int32), torch.tensor(-1, dtype=torch.int32)

    def fold(lo: int, values: torch.Tensor, indices: torch.Tensor, offset: int) -> None:
        rows = slice(lo, lo + values.shape[0])
        better = values > best_v[rows]
        best_v[rows] = torch.where(better, values, best_v[rows])
        best_i[rows] = torch.where(better, indices + offset, best_i[rows])

    def fold_columns(lo: int, g: torch.Tensor, offset: int) -> None:
        """The columns' maxima (rows ``lo...`` of the set). Down the columns of a 4,096 x 4,096
        tile a max took 4 ms here, with its indices 69 ms (a transposed copy and an argmax
        along its rows, 36 ms): the row of each column's maximum is instead the largest row
        index where the tile equals it, itself a max down the columns (26 ms in all), or,
        where few columns beat their best so far, an argmax of those columns gathered."""
        count, height = g.shape[1], g.shape[0]
        top = g.amax(dim=0)
        need = torch.nonzero(top > best_v[lo : lo + count]).ravel()
        if need.numel() == 0:
            return
        if need.numel() * 8 < count:  # few columns (later tiles): gathered, 5 ms for 400
            where = g[:, need].argmax(dim=0)
        else:
            equal = is_top[: height * count].view(height, count)
            torch.eq(g, top[None, :], out=equal)
            marked = row_of[: height * count].view(height, count)
            torch.where(equal, row_ids[:height, None], no_row, out=marked)
            where = marked.amax(dim=0)[need].to(torch.int64)
        at = need + lo
        best_v[at] = top[need]
        best_i[at] = where + offset

    with torch.inference_mode():
        for i0, j0, g_np in _triangle_tiles(x, tile):
            g = torch.from_numpy(g_np)
            if j0 == i0:
                g.fill_diagonal_(-math.inf)
            if g_ids is not None:
                a, b = g_ids[i0 : i0 + g.shape[0]], g_ids[j0 : j0 + g.shape[1]]
                # Most tiles share no group (a patient's scans are usually listed together).
                if torch.isin(a, b).any():
                    g.masked_fill_(a[:, None] == b[None, :], -math.inf)
            # Along rows (contiguous) numpy's argmax is as fast as a max: 2 ms a tile.
            where = torch.from_numpy(g_np.argmax(axis=1))
            fold(i0, torch.gather(g, 1, where[:, None]).ravel(), where, j0)
            if j0 != i0:  # the same tile serves the rows j0:j1 down its columns
                fold_columns(j0, g, i0)
    sims = best_v.numpy().astype(np.float32)[:, None]
    idx = best_i.numpy()[:, None]
    idx[~np.isfinite(sims)] = -1
    record_search("self", n, n, x.shape[1], 1, started)
    return Neighbors(sims, idx)


def knn_excluding_self(
    vectors: np.ndarray,
    *,
    k: int = 1,
    groups: np.ndarray | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Neighbors:
    """k nearest *other* vectors of each vector of one set.

    Args:
        vectors: ``(n, d)`` unit vectors.
        k: neighbours wanted per vector.
        groups: optional ``(n,)`` group labels (patient ids); neighbours in the query's own
            group are excluded too (leave-one-patient-out).
        chunk_size: as for :func:`knn`.

    Returns:
        :class:`Neighbors` with exactly ``k`` columns; where fewer than ``k`` admissible
        neighbours exist, the rest are ``-inf`` with index ``-1``.
    """
    n = vectors.shape[0]
    # (Anything but a non-empty 2-D set goes on to self_knn, whose validation names the problem.)
    if k == 1 and _remote is None and n and np.ndim(vectors) == 2 and self_search_kind(np.shape(vectors)[1]) == "self":
        return nearest_other(vectors, groups=groups)
    if groups is None:
        group_ids = np.arange(n)
        largest = 1
    else:
        _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
        largest = int(np.bincount(group_ids).max())
    # The query's own group occupies at most `largest` slots of its neighbour list.
    want = min(n, k + largest)
    if _remote is not None:
        found = knn(vectors, vectors, k=want, chunk_size=chunk_size)  # sharded on the cluster
    else:
        found = self_knn(vectors, k=want)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        keep = group_ids[found.indices[i]] != group_ids[i]
        s, j = found.similarities[i][keep][:k], found.indices[i][keep][:k]
        sims[i, : len(s)], idx[i, : len(j)] = s, j
    return Neighbors(sims, idx)
