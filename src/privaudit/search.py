"""Nearest-neighbour search: exact FAISS inner-product kNN in bounded memory, and a numpy reference.

Embeddings are unit vectors, so the inner product is the cosine similarity. Queries are processed
in chunks of ``chunk_size`` rows: memory holds one ``chunk_size x k`` result block and FAISS's own
``chunk_size x N`` similarity block, whatever the number of queries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from privaudit.errors import InputError

#: Query rows per FAISS call. 4096 x 100k float32 similarities are 1.6 GB at most inside FAISS;
#: smaller chunks cost little (FAISS blocks the product itself), larger ones save nothing.
DEFAULT_CHUNK_SIZE = 4096

#: The cluster that :func:`knn` hands its searches to while one is active
#: (:meth:`privaudit.cluster.ClusterBackend.activate`); ``None``: search in this process.
_remote = None


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
    for name, arr in (("queries", queries), ("base", base)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            shape = getattr(arr, "shape", None)
            raise InputError(f"got {shape} for {name}; expected a 2D array (n, d)")
    if queries.shape[1] != base.shape[1]:
        raise InputError(
            f"queries have dimension {queries.shape[1]} but base has {base.shape[1]}"
        )
    if base.shape[0] == 0:
        raise InputError("the base set is empty")
    if not 1 <= k <= base.shape[0]:
        raise InputError(f"k must lie in [1, {base.shape[0]}] (the base size); got {k}")
    return (
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(base, dtype=np.float32),
    )


def knn(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    k: int = 1,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Neighbors:
    """Exact k-nearest neighbours by inner product, with FAISS (``IndexFlatIP``).

    Args:
        queries: ``(n, d)`` float32 vectors.
        base: ``(m, d)`` float32 vectors to search in.
        k: neighbours per query (at most ``m``).
        chunk_size: query rows per FAISS call; bounds memory, not results.

    Returns:
        :class:`Neighbors`, most similar first. Ties may be ordered differently from
        :func:`knn_reference`; the similarities agree to float32 rounding.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> knn(x, x, k=1).indices.ravel().tolist()
        [0, 1, 2]
    """
    import faiss

    q, b = _validate(queries, base, k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")
    if _remote is not None:
        return _remote.knn(q, b, k=k, chunk_size=chunk_size)
    index = faiss.IndexFlatIP(b.shape[1])
    index.add(b)
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk_size):
        stop = min(start + chunk_size, q.shape[0])
        sims[start:stop], idx[start:stop] = index.search(q[start:stop], k)
    return Neighbors(sims, idx)


def knn_reference(queries: np.ndarray, base: np.ndarray, *, k: int = 1) -> Neighbors:
    """The same search by brute force in numpy: slow, obviously correct, used in tests.

    Ties are broken by the lower base index.
    """
    q, b = _validate(queries, base, k)
    sims = q.astype(np.float64) @ b.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return Neighbors(np.take_along_axis(sims, order, axis=1).astype(np.float32), order.astype(np.int64))


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
    if groups is None:
        group_ids = np.arange(n)
        largest = 1
    else:
        _, group_ids = np.unique(np.asarray(groups), return_inverse=True)
        largest = int(np.bincount(group_ids).max())
    # The query's own group occupies at most `largest` slots of its neighbour list.
    want = min(n, k + largest)
    found = knn(vectors, vectors, k=want, chunk_size=chunk_size)
    sims = np.full((n, k), -np.inf, dtype=np.float32)
    idx = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        keep = group_ids[found.indices[i]] != group_ids[i]
        s, j = found.similarities[i][keep][:k], found.indices[i][keep][:k]
        sims[i, : len(s)], idx[i, : len(j)] = s, j
    return Neighbors(sims, idx)
