"""The cluster path (privaudit.cluster) against the in-process one, in Ray's local mode.

Ray is the optional [cluster] extra: the tests that need it skip cleanly without it (CI installs
it through [all]). One local Ray instance (2 CPUs, no dashboard, its session folder under the
test's temporary folder) serves the whole module and is shut down at its end; it listens on
localhost only.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from privaudit import search
from privaudit.cluster import merge_topk, parse_address, redact_address, shard_bounds
from privaudit.config import AuditConfig
from privaudit.errors import ConfigError, MissingDependencyError
from privaudit.phantoms import make_study
from privaudit.search import knn, knn_reference

# A few hundred images at 32 px: enough for several embedding batches per actor.
CLUSTER_PROFILE = dict(n_train_patients=40, n_holdout_patients=30, scans_per_patient=4, n_synthetic=60, size=32)


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------ without Ray


@pytest.mark.parametrize(
    "text, address, host",
    [
        ("local", ("local", None), "local"),
        ("local:2", ("local", 2), "local"),
        ("auto", ("auto", None), "auto"),
        ("10.0.0.5:6379", ("10.0.0.5:6379", None), "10.0.0.5"),
        ("ray://alice:s3cret@head.example.org:10001", ("ray://alice:s3cret@head.example.org:10001", None), "head.example.org"),
    ],
)
def test_addresses_parse_and_redact_to_the_host(text, address, host):
    assert parse_address(text) == address
    assert redact_address(text) == host


@pytest.mark.parametrize("bad", ["", "  ", "local:0", "local:x", "local:-1"])
def test_malformed_addresses_are_refused(bad):
    with pytest.raises(ConfigError):
        parse_address(bad)


def test_the_config_key_is_validated_and_kept_out_of_the_recorded_config():
    cfg = AuditConfig.from_dict({"cluster": "local:2"})
    assert cfg.cluster == "local:2"
    assert "cluster" not in cfg.to_dict()  # recorded, redacted, under run.cluster instead
    with pytest.raises(ConfigError, match="local:N"):
        AuditConfig(cluster="local:0")
    with pytest.raises(ConfigError, match="expected str"):
        AuditConfig.from_dict({"cluster": 2})


def test_without_ray_the_backend_names_the_extra(monkeypatch):
    import sys

    from privaudit.cluster import ClusterBackend

    monkeypatch.setitem(sys.modules, "ray", None)  # the core install: ray is absent
    with pytest.raises(MissingDependencyError, match=r"pip install 'privaudit\[cluster\]'"):
        ClusterBackend("local:1").start()


def test_an_address_nothing_answers_on_is_refused_in_one_line_not_a_hang():
    import socket
    import time

    from privaudit.cluster import check_reachable

    with socket.socket() as probe:  # a localhost port that was free a moment ago: refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    t0 = time.perf_counter()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ConfigError, match=f"--cluster 127.0.0.1: nothing answers at port {port}"):
            check_reachable(address)
    assert time.perf_counter() - t0 < 5
    check_reachable("local:2")  # left to Ray
    check_reachable("auto")
    with socket.socket() as server:  # something listening: accepted
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"127.0.0.1:{server.getsockname()[1]}")


@pytest.mark.parametrize("n, shards", [(10, 3), (7, 7), (3, 5), (1000, 6)])
def test_shards_cover_every_row_once_and_differ_by_at_most_one(n, shards):
    bounds = shard_bounds(n, shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and len(bounds) == min(n, shards)


def assert_same_neighbours(found, expected, queries, base, *, atol=1e-6):
    """Similarities agree to float32 rounding (shards compute the same products in other BLAS
    blocks); indices agree wherever the similarity is not tied within that rounding; and every
    index found, tied or not, is a distinct row that really has the similarity reported."""
    np.testing.assert_allclose(found.similarities, expected.similarities, rtol=0, atol=atol)
    sims = expected.similarities
    tied = np.zeros_like(sims, dtype=bool)
    gaps = np.abs(np.diff(sims, axis=1)) <= atol
    tied[:, 1:] |= gaps
    tied[:, :-1] |= gaps
    np.testing.assert_array_equal(found.indices[~tied], expected.indices[~tied])
    true = np.einsum("qd,qkd->qk", queries.astype(np.float64), base[found.indices].astype(np.float64))
    np.testing.assert_allclose(found.similarities, true, rtol=0, atol=atol)
    assert all(len(set(row)) == len(row) for row in found.indices.tolist())
    return (~tied).mean()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_merging_shards_equals_one_faiss_index_up_to_exact_ties(k):
    """Each base row three times: exact ties, some straddling the shards' and the list's cut.
    The shards are searched with FAISS itself, so only the merge is tested."""
    rng = np.random.default_rng(1)
    rows = unit(rng, 40, 16)
    base = np.concatenate([rows, rows, rows])  # row i == row i + 40 == row i + 80
    queries = np.concatenate([rows[:25], unit(rng, 25, 16)])
    whole = knn(queries, base, k=k)
    for n_shards in (1, 2, 3, 7):
        parts = []
        for lo, hi in shard_bounds(len(base), n_shards):
            part = knn(queries, base[lo:hi], k=min(k, hi - lo))
            parts.append((part.similarities, part.indices + lo))
        sims, idx = merge_topk(parts, k)
        assert_same_neighbours(search.Neighbors(sims, idx), whole, queries, base)
        # Within a list, tied rows come lower index first.
        same = np.abs(np.diff(sims, axis=1)) <= 1e-6
        assert (np.diff(idx, axis=1)[same] > 0).all()


# ------------------------------------------------------------------ with Ray (local mode)


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    pytest.importorskip("ray", reason="the [cluster] extra (ray[data]) is not installed")
    pytest.importorskip("ray.data", reason="the [cluster] extra (ray[data]) is not installed")
    from privaudit.cluster import ClusterBackend

    # Ray's session folder holds Unix sockets, whose paths must stay under 107 bytes: a deep
    # temporary folder falls back to a short one of our own (removed at the end).
    temp = tmp_path_factory.mktemp("ray")
    own = None
    if len(str(temp)) > 40:
        own = temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    with ClusterBackend("local:2", temp_dir=temp) as started:
        assert started.workers == 2
        yield started
    assert not __import__("ray").is_initialized()
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture(scope="module")
def small_study():
    return make_study(seed=3, **CLUSTER_PROFILE)


@pytest.mark.parametrize("n_shards, chunk_size", [(2, 4096), (3, 50), (7, 128)])
def test_sharded_knn_equals_the_in_process_search(backend, n_shards, chunk_size):
    from privaudit.cluster import knn_on_cluster

    rng = np.random.default_rng(0)
    base, queries = unit(rng, 1001, 64), unit(rng, 333, 64)  # 1001 rows: uneven shards
    found = knn_on_cluster(queries, base, k=6, n_shards=n_shards, chunk_size=chunk_size)
    assert assert_same_neighbours(found, knn(queries, base, k=6), queries, base) > 0.99  # not vacuous
    assert_same_neighbours(found, knn_reference(queries, base, k=6), queries, base)
    assert found.indices.dtype == np.int64 and found.similarities.dtype == np.float32


def test_k_larger_than_a_shard_and_ties_across_shards(backend):
    from privaudit.cluster import knn_on_cluster

    rng = np.random.default_rng(2)
    rows = unit(rng, 5, 8)
    base = np.concatenate([rows, rows])  # 10 rows, each twice: ties that straddle shards
    queries = np.concatenate([rows, unit(rng, 6, 8)])
    for k in (4, 10):  # 4 shards of 2-3 rows: every shard is smaller than k
        found = knn_on_cluster(queries, base, k=k, n_shards=4, chunk_size=3)
        assert_same_neighbours(found, knn(queries, base, k=k), queries, base)
        if k == 10:  # every row listed: the whole order is fixed, ties lower index first
            np.testing.assert_array_equal(found.indices, knn_reference(queries, base, k=k).indices)
    with pytest.raises(Exception, match="k must lie in"):
        knn_on_cluster(queries, base, k=11)


def test_the_search_hook_sends_every_knn_to_the_cluster_while_active(backend):
    rng = np.random.default_rng(4)
    base, queries = unit(rng, 300, 32), unit(rng, 40, 32)
    before = backend.searches
    with backend.activate():
        assert search._remote is backend
        found = search.knn_excluding_self(base, k=3)  # goes through knn(), so to the cluster
        direct = knn(queries, base, k=2)
    assert search._remote is None and backend.searches == before + 2
    assert_same_neighbours(direct, knn(queries, base, k=2), queries, base)
    np.testing.assert_array_equal(found.indices, search.knn_excluding_self(base, k=3).indices)


@pytest.mark.parametrize("name", ["pixels", "imagenet"])
def test_cluster_embeddings_equal_the_in_process_ones(backend, small_study, name):
    from privaudit.embed import get_embedder

    embedder = get_embedder(name)
    images = small_study.train.images[:96]  # 96 images at 32 px: three batches, two actors
    on_cluster = backend.embed(embedder, images, batch_size=32)
    in_process = embedder.embed(images)
    assert on_cluster.shape == in_process.shape == (len(images), embedder.dim)
    # Unit vectors; only the batch composition differs (32 vs 256 per batch), which can change
    # the order of float32 reductions inside the convolutions: 1e-5 is far below any threshold.
    np.testing.assert_allclose(on_cluster, in_process, rtol=0, atol=1e-5)


def test_mixed_sizes_and_a_torchscript_model_go_through(backend, tmp_path):
    import torch

    from privaudit.embed import get_embedder

    rng = np.random.default_rng(5)
    images = [rng.random((s, s), dtype=np.float32) for s in (20, 32, 24, 32, 40) * 4]
    pixels = get_embedder("pixels")
    np.testing.assert_allclose(backend.embed(pixels, images, batch_size=8), pixels.embed(images), atol=1e-6)

    class Tiny(torch.nn.Module):  # TorchScript modules cannot be pickled: they travel as bytes
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 4).flatten(1)

    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(Tiny()), str(path))
    (tmp_path / "tiny.pt.json").write_text(json.dumps({"input_size": [16, 16], "channels": 1}))
    scripted = get_embedder(f"torchscript:{path}")
    np.testing.assert_allclose(backend.embed(scripted, images, batch_size=8), scripted.embed(images), atol=1e-6)


def _figures(data, path=()):
    """Every number of a results.json outside the run facts, with its path."""
    if isinstance(data, dict):
        for key, value in data.items():
            if path == () and key in ("created_at", "run", "environment"):
                continue
            yield from _figures(value, path + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _figures(value, path + (i,))
    else:
        yield path, data


@pytest.mark.slow
def test_a_whole_audit_on_the_cluster_gives_the_in_process_results(backend, small_study, tmp_path):
    """`privaudit audit --cluster local:2` (Ray already running here: the audit uses it) against
    the same audit in this process: every figure equal up to float32 rounding."""
    from privaudit.cli import main
    from privaudit.phantoms import write_study

    study_files = write_study(small_study, tmp_path / "data")
    config = tmp_path / "cfg.toml"
    # A short copydetect fit (the same seeded fit in both runs): the fitted embedder is what
    # must travel to the workers.
    config.write_text("[embedder_options.copydetect]\nmin_steps = 20\nmax_steps = 20\nmax_images = 200\n")
    common = ["audit", "--train", str(study_files["train"]), "--synthetic", str(study_files["leaky"]),
              "--holdout", str(study_files["holdout"]), "--embedder", "pixels,copydetect",
              "--checks", "copies", "--config", str(config)]
    codes = {
        "cluster": main(common + ["--out", str(tmp_path / "cluster"), "--cluster", "local:2", "--cache-dir", str(tmp_path / "c1")]),
        "local": main(common + ["--out", str(tmp_path / "local"), "--cache-dir", str(tmp_path / "c2")]),
    }
    assert codes["cluster"] == codes["local"] == 1  # the leaky set fails either way
    assert __import__("ray").is_initialized()  # a connection the audit found is left open
    got = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in codes}
    run = got["cluster"]["run"]["cluster"]
    embedded = got["cluster"]["run"]["embedded"]  # per space: from the cache / embedded afresh
    assert run["address"] == "local" and run["workers"] == 2
    # Every copydetect image not found in the (fresh) cache was embedded on the cluster (the
    # exact copies in the leaky set are the cache hits); pixels embeds here (offload = False).
    assert set(embedded) == {"pixels", "copydetect"} and all(e["embedded"] > 300 for e in embedded.values())
    assert run["images_embedded"] == embedded["copydetect"]["embedded"]
    assert run["searches"] >= 4 and got["local"]["run"]["cluster"] is None
    assert got["cluster"]["config"] == got["local"]["config"]
    html = (tmp_path / "cluster" / "report.html").read_text()
    assert f"{run['images_embedded']} images embedded and {run['searches']} exact kNN searches ran there" in html
    assert "exact kNN searches ran there" not in (tmp_path / "local" / "report.html").read_text()
    cluster_figures, local_figures = dict(_figures(got["cluster"])), dict(_figures(got["local"]))
    assert cluster_figures.keys() == local_figures.keys()
    differing = []
    for key, value in local_figures.items():
        other = cluster_figures[key]
        if isinstance(value, float) and isinstance(other, float):
            if not math.isclose(value, other, rel_tol=1e-5, abs_tol=1e-6):
                differing.append((key, value, other))
        elif value != other:
            differing.append((key, value, other))
    assert not differing, differing[:5]
