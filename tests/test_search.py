"""FAISS search against the numpy brute-force reference."""

from __future__ import annotations

import numpy as np
import pytest

from privaudit.errors import InputError
from privaudit.search import knn, knn_excluding_self, knn_reference, nearest_other, self_knn


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("n_queries, n_base, d, k", [(1, 5, 3, 1), (50, 200, 16, 5), (300, 1000, 64, 10)])
def test_faiss_matches_numpy(n_queries, n_base, d, k):
    rng = np.random.default_rng(n_base)
    q, b = _unit(rng, n_queries, d), _unit(rng, n_base, d)
    fast, slow = knn(q, b, k=k), knn_reference(q, b, k=k)
    # float32 dot products vs float64: agree to a few float32 ulps.
    np.testing.assert_allclose(fast.similarities, slow.similarities, atol=1e-5)
    # Random continuous data has no ties, so the neighbours themselves must agree.
    np.testing.assert_array_equal(fast.indices, slow.indices)
    assert fast.indices.dtype == np.int64 and fast.similarities.dtype == np.float32


def test_results_do_not_depend_on_chunking():
    rng = np.random.default_rng(3)
    q, b = _unit(rng, 103, 8), _unit(rng, 400, 8)
    whole = knn(q, b, k=4)
    for chunk in (1, 7, 50, 1000):
        part = knn(q, b, k=4, chunk_size=chunk)
        np.testing.assert_array_equal(part.indices, whole.indices)
        np.testing.assert_allclose(part.similarities, whole.similarities, atol=1e-6)


def test_exact_duplicates_are_found_with_similarity_one():
    rng = np.random.default_rng(4)
    b = _unit(rng, 100, 32)
    nb = knn(b[[7, 42]], b, k=1)
    assert nb.indices.ravel().tolist() == [7, 42]
    np.testing.assert_allclose(nb.similarities, 1.0, atol=1e-6)


def _slow_excluding(x: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    out = np.full((len(x), k), -np.inf)
    for i in range(len(x)):
        allowed = sorted((s for j, s in enumerate(sims[i]) if groups[j] != groups[i]), reverse=True)[:k]
        out[i, : len(allowed)] = allowed
    return out


def test_leave_one_group_out_matches_brute_force():
    rng = np.random.default_rng(5)
    x = _unit(rng, 60, 8)
    groups = rng.integers(0, 12, size=60)
    nb = knn_excluding_self(x, k=3, groups=groups)
    np.testing.assert_allclose(nb.similarities, _slow_excluding(x, groups, 3), atol=1e-5)
    for i, row in enumerate(nb.indices):
        assert all(groups[j] != groups[i] for j in row if j >= 0)
    solo = knn_excluding_self(x, k=2)
    np.testing.assert_allclose(solo.similarities, _slow_excluding(x, np.arange(60), 2), atol=1e-5)


@pytest.mark.parametrize(
    "tile, method", [(1, "triangle"), (7, "triangle"), (32, "triangle"), (4096, "triangle"), (32, "faiss"), (32, "auto")],
    ids=["tile1", "tile7", "tile32", "one-tile", "faiss", "auto"],
)
def test_self_knn_computes_half_the_product_and_equals_brute_force(tile, method):
    """The upper-triangle tiled self-search (each tile serves its rows and, transposed, its
    columns) against the numpy brute force, across tile sizes that split the set unevenly;
    and FAISS's full search, which ``auto`` picks at this small dimension."""
    rng = np.random.default_rng(8)
    x = _unit(rng, 130, 16)
    x[5] = x[77]  # an exact duplicate across tiles
    nb, ref = self_knn(x, k=4, tile=tile, method=method), knn_reference(x, x, k=4)
    np.testing.assert_allclose(nb.similarities, ref.similarities, atol=1e-6)
    assert (np.diff(nb.similarities, axis=1) <= 0).all()
    # The same neighbours, the duplicates 5 and 77 being interchangeable (no other ties here).
    same = lambda idx: np.where(idx == 77, 5, idx)  # noqa: E731
    distinct = np.setdiff1d(np.arange(130), [5, 77])
    np.testing.assert_array_equal(same(nb.indices[distinct]), same(ref.indices[distinct]))
    assert set(nb.indices[5, :2]) == set(nb.indices[77, :2]) == {5, 77}
    with pytest.raises(InputError, match="k must lie in"):
        self_knn(x, k=131)


@pytest.mark.parametrize("method", ["triangle", "faiss"])
def test_self_knn_offsets_rank_by_euclidean_distance(method):
    """With offsets |x_j|^2 / 2 the scores order neighbours by Euclidean distance, for vectors
    of any norm: |x_i - x_j|^2 = |x_i|^2 - 2 score, against the brute-force distances."""
    rng = np.random.default_rng(9)
    x = (rng.normal(size=(90, 12)) * rng.uniform(0.2, 3.0, size=(90, 1))).astype(np.float32)
    norms = (x.astype(np.float64) ** 2).sum(1)
    nb = self_knn(x, k=5, tile=16, offsets=norms / 2, method=method)
    dist = ((x[:, None, :].astype(np.float64) - x[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(nb.indices, np.argsort(dist, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(norms[:, None] - 2 * nb.similarities, np.sort(dist, axis=1)[:, :5], atol=1e-4)
    with pytest.raises(ValueError, match="one value per vector"):
        self_knn(x, k=2, offsets=norms[:5])
    with pytest.raises(ValueError, match="method must be one of"):
        self_knn(x, k=2, method="fast")


def test_self_knn_sparse_merge_equals_brute_force(monkeypatch):
    """After a row's first tiles, few values beat its k-th best so far, and self_knn gathers
    only the groups of 8 whose maximum does (search._beating_candidates). A set large enough
    for that path to serve most tiles (counted, rows and columns both), with offsets, ragged
    tiles (3,000 = 5 x 512 + 440; 3,003 leaves 443, no multiple of 8, which the dense top-k
    serves) and an exact duplicate: neighbours and scores as the float64 brute force has them."""
    from scipy.spatial.distance import cdist

    from privaudit import search

    served = {"rows": 0, "columns": 0, "dense": 0}
    real = search._beating_candidates

    def counting(g, threshold, *, columns=False):
        out = real(g, threshold, columns=columns)
        served["dense" if out is None else "columns" if columns else "rows"] += 1
        return out

    monkeypatch.setattr(search, "_beating_candidates", counting)
    rng = np.random.default_rng(12)
    for n in (3000, 3003):
        x = (rng.normal(size=(n, 24)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
        x[3] = x[n - 2]
        norms = (x.astype(np.float64) ** 2).sum(1)
        nb = self_knn(x, k=7, tile=512, offsets=(norms / 2).astype(np.float32), method="triangle")
        dist = cdist(x.astype(np.float64), x.astype(np.float64), "sqeuclidean")
        ref = np.argsort(dist, axis=1, kind="stable")[:, :7]
        same = lambda idx: np.where(idx == n - 2, 3, idx)  # noqa: E731 (the duplicates interchange)
        np.testing.assert_array_equal(same(nb.indices), same(ref))
        np.testing.assert_allclose(norms[:, None] - 2 * nb.similarities, np.sort(dist, axis=1)[:, :7], rtol=1e-5, atol=1e-4)
    assert served["rows"] > served["dense"] and served["columns"] > 0, served


@pytest.mark.parametrize("tile", [1, 7, 32, 4096], ids=["tile1", "tile7", "tile32", "one-tile"])
def test_nearest_other_equals_brute_force(tile):
    """The one-neighbour triangle pass (running maxima down both axes of each tile) against
    the float64 brute force: without groups, with groups spread across tiles and with an exact
    duplicate, which must be found as the other vector, never as the vector itself."""
    rng = np.random.default_rng(10)
    x = _unit(rng, 130, 16)
    x[5] = x[77]  # an exact duplicate across tiles
    solo = nearest_other(x, tile=tile)
    np.testing.assert_allclose(solo.similarities, _slow_excluding(x, np.arange(130), 1), atol=1e-6)
    assert (solo.indices.ravel() != np.arange(130)).all()
    assert solo.indices[5, 0] == 77 and solo.indices[77, 0] == 5
    groups = rng.integers(0, 20, size=130)
    grouped = nearest_other(x, groups=groups, tile=tile)
    np.testing.assert_allclose(grouped.similarities, _slow_excluding(x, groups, 1), atol=1e-6)
    assert all(groups[j] != groups[i] for i, j in enumerate(grouped.indices.ravel()))
    lone = nearest_other(x[:3], groups=np.zeros(3), tile=tile)
    assert np.isneginf(lone.similarities).all() and (lone.indices == -1).all()


def test_knn_excluding_self_takes_the_one_neighbour_pass_from_512_dimensions():
    from privaudit.search import timed_searches

    rng = np.random.default_rng(11)
    x = _unit(rng, 300, 512)
    groups = rng.integers(0, 60, size=300)
    with timed_searches() as found:
        nb = knn_excluding_self(x, k=1, groups=groups)
    assert [t.kind for t in found] == ["self"]
    np.testing.assert_allclose(nb.similarities, _slow_excluding(x, groups, 1), atol=1e-5)
    with pytest.raises(InputError, match="got \\(300,\\) for base"):  # a 1-D set: the same one-line error as before
        knn_excluding_self(x[:, 0], k=1)
    two = knn_excluding_self(x, k=2, groups=groups)  # k > 1: the sorted lists of self_knn
    np.testing.assert_allclose(two.similarities, _slow_excluding(x, groups, 2), atol=1e-5)
    np.testing.assert_allclose(two.similarities[:, :1], nb.similarities, atol=1e-6)


def test_one_group_has_no_admissible_neighbour():
    x = _unit(np.random.default_rng(6), 4, 3)
    nb = knn_excluding_self(x, k=1, groups=np.zeros(4))
    assert np.isneginf(nb.similarities).all() and (nb.indices == -1).all()


@pytest.mark.parametrize(
    "q_shape, b_shape, k, message",
    [((3,), (4, 3), 1, "got \\(3,\\) for queries"), ((2, 3), (4, 5), 1, "dimension 3 but base has 5"), ((2, 3), (4, 3), 5, "k must lie in \\[1, 4\\]"), ((2, 3), (0, 3), 1, "base set is empty")],
    ids=["rank", "dim", "k", "empty"],
)
def test_bad_arguments(q_shape, b_shape, k, message):
    with pytest.raises(InputError, match=message):
        knn(np.zeros(q_shape, np.float32), np.zeros(b_shape, np.float32), k=k)


def test_timed_searches_records_each_search_with_its_shape_only_inside_the_block():
    from privaudit.search import SearchIndex, self_knn, timed_searches

    rng = np.random.default_rng(0)
    base, queries = _unit(rng, 300, 8), _unit(rng, 50, 8)
    knn(queries, base, k=1)  # outside: not recorded anywhere
    with timed_searches() as found:
        knn(queries, base, k=3)
        SearchIndex(base, index="ivf", nlist=4, seed=0).search(queries, k=2)
        self_knn(base, k=2, method="triangle")
        with timed_searches() as inner:  # a nested block records its own searches only
            self_knn(queries, k=1, method="triangle")
        self_knn(base, k=1)  # at 8 dimensions FAISS's full search: recorded as exact
    assert [(t.kind, t.n_queries, t.n_base, t.dim, t.k) for t in found] == [
        ("exact", 50, 300, 8, 3), ("ivf build", 0, 300, 8, 0), ("ivf", 50, 300, 8, 2), ("self", 300, 300, 8, 2),
        ("exact", 300, 300, 8, 1)]
    assert [(t.kind, t.n_queries) for t in inner] == [("self", 50)]
    assert all(t.seconds >= 0 and t.stage is None for t in found + inner)
