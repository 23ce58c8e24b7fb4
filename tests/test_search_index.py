"""The approximate (IVF) index against exact search: the high-similarity tail, re-ranking,
the automatic switch, determinism. Correctness only, never timing (benchmarks/copy_search.py)."""

from __future__ import annotations

import numpy as np
import pytest

from privaudit.search import SearchIndex, knn, knn_reference, resolve_index

THRESHOLD = 0.9


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(seed: int = 0, n: int = 3000, d: int = 64, n_copies: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered unit vectors (base), and queries: near-copies of base vectors at similarities
    spread over 0.80..0.995 (about half above THRESHOLD), then unrelated vectors of the same
    clusters. Returns base, queries, the copies' sources and their planted similarities."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(30, d)))
    base = _unit(centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d)) / np.sqrt(d))
    others = _unit(centres[rng.integers(0, 30, 800)] + rng.normal(size=(800, d)) / np.sqrt(d))
    src = rng.choice(n, n_copies, replace=False)
    target = np.linspace(0.80, 0.995, n_copies)
    eps = np.sqrt(1 / target**2 - 1)  # |x + eps z| with z ~ N(0, I/d): cos ~ 1 / sqrt(1 + eps^2)
    copies = _unit(base[src] + eps[:, None] * rng.normal(size=(n_copies, d)) / np.sqrt(d))
    return base, np.concatenate([copies, others]), src, target


def test_every_pair_above_the_threshold_that_exact_finds_is_found():
    base, queries, src, _ = planted()
    exact = knn_reference(queries, base, k=1)
    approx = SearchIndex(base, index="ivf", seed=0).search(queries, k=1)
    tail = exact.similarities[:, 0] >= THRESHOLD
    # The planted copies make the tail (unrelated vectors of a cluster stay near 0.5), so the
    # test is about them, not about a vacuous empty tail.
    assert 80 <= tail.sum() <= 120 and tail[200:].sum() == 0
    np.testing.assert_array_equal(approx.indices[tail, 0], exact.indices[tail, 0])
    np.testing.assert_array_equal(approx.indices[:200][tail[:200], 0], src[tail[:200]])
    # And nothing enters the tail that exact search does not put there.
    assert not (approx.similarities[~tail, 0] >= THRESHOLD).any()


def test_reranked_similarities_are_true_inner_products():
    base, queries, _, _ = planted(seed=1)
    exact = knn_reference(queries, base, k=5)
    approx = SearchIndex(base, index="ivf", nprobe=1, seed=0).search(queries, k=5)  # nprobe 1: some misses
    # Every returned similarity is the float32 inner product of the query with that base vector...
    # (a query whose scanned list holds fewer than k vectors gets -inf and index -1 for the rest).
    found = approx.indices >= 0
    assert found[:, 0].all() and found.mean() > 0.9
    true = np.einsum("nkd,nd->nk", base[np.where(found, approx.indices, 0)].astype(np.float64), queries.astype(np.float64))
    np.testing.assert_allclose(approx.similarities[found], true[found], atol=1e-5)
    assert np.isneginf(approx.similarities[~found]).all()
    # ... sorted, most similar first, and never above what exact search finds at that rank.
    assert (approx.similarities[:, :-1] >= approx.similarities[:, 1:]).all()
    assert (approx.similarities <= exact.similarities + 1e-5).all()
    # Where the same pair is found, the similarity equals the exact one (float32 rounding).
    same = approx.indices[:, 0] == exact.indices[:, 0]
    assert 0.5 < same.mean() < 1.0  # nprobe 1 misses some nearest neighbours: the test sees both cases
    np.testing.assert_allclose(approx.similarities[same, 0], exact.similarities[same, 0], atol=1e-5)


def test_ivf_with_every_list_scanned_is_exact():
    base, queries, _, _ = planted(seed=2, n=500)
    ix = SearchIndex(base, index="ivf", nlist=8, nprobe=8, seed=0)
    exact = knn(queries, base, k=3)
    np.testing.assert_array_equal(ix.search(queries, k=3).indices, exact.indices)


def test_auto_switches_at_the_documented_size():
    base, queries, _, _ = planted(seed=3, n=400)
    assert SearchIndex(base, index="auto", approximate_from=400).kind == "ivf"
    assert SearchIndex(base, index="auto", approximate_from=401).kind == "exact"
    assert resolve_index("auto", 49_999) == "exact" and resolve_index("auto", 50_000) == "ivf"
    assert resolve_index("exact", 10**9) == "exact" and resolve_index("ivf", 1) == "ivf"
    info = SearchIndex(base, index="auto", approximate_from=400, seed=7).info
    assert (info.index, info.requested, info.n_base, info.nlist, info.nprobe, info.seed) == ("ivf", "auto", 400, 40, 8, 7)
    # knn stays exact unless asked: other checks do not measure an approximate index.
    np.testing.assert_array_equal(knn(queries, base, k=1, approximate_from=1).indices, knn_reference(queries, base, k=1).indices)


def test_same_seed_same_neighbours_and_chunking_does_not_matter():
    base, queries, _, _ = planted(seed=4)
    a = SearchIndex(base, index="ivf", nprobe=1, seed=3).search(queries, k=2)
    b = SearchIndex(base, index="ivf", nprobe=1, seed=3)
    for chunk in (7, 1000):
        again = b.search(queries, k=2, chunk_size=chunk)
        np.testing.assert_array_equal(again.indices, a.indices)
        np.testing.assert_array_equal(again.similarities, a.similarities)


def test_tiny_bases_and_bad_options():
    x = _unit(np.random.default_rng(5).normal(size=(3, 4)))
    nb = SearchIndex(x, index="ivf", seed=0).search(x, k=1)  # nlist capped at the base size
    np.testing.assert_allclose(nb.similarities[:, 0], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="index must be one of"):
        SearchIndex(x, index="hnsw")
    with pytest.raises(ValueError, match="approximate_from"):
        resolve_index("auto", 3, approximate_from=0)
