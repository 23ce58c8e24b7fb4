"""Embedding and exact kNN on a Ray cluster: the optional ``[cluster]`` extra, ``--cluster ADDRESS``.

Past a few hundred thousand images an audit outgrows one machine: embedding grows with N and
every exact kNN pass with N². This module runs both on an existing engine, `Ray
<https://docs.ray.io>`_, instead of a home-made one:

* **Embedding** goes through Ray Data: the images become a dataset of blocks, and
  :meth:`ray.data.Dataset.map_batches` runs them through a callable class on a fixed pool of
  actors (one CPU each). The embedder is built once on the driver (a fitted embedder such as
  ``copydetect`` or ``identity`` is *fitted* there, on the training images, as without a
  cluster), then shipped to every actor as its state; each actor checks that its copy has the
  driver's fingerprint before it embeds anything. The vectors come back in input order.
* **Exact kNN** splits the base set (the training embeddings, usually) into contiguous shards.
  One Ray actor per shard holds it in a FAISS ``IndexFlatIP`` (the shard is put into the object
  store once) and answers every query chunk with its own top-k; the driver merges the shards'
  lists into the global top-k. Indices are global row numbers. The similarities equal
  :func:`privaudit.search.knn`'s up to float32 rounding, and so do the indices wherever the
  similarities are not tied. Exact ties are listed lower index first; which of several tied
  rows fills the last places of a list is left to FAISS, as it is within one index (measured:
  with three equal rows FAISS keeps the higher indices at one k and the lower ones at another),
  so it can differ from the in-process search there; the similarities never do.

What stays on the driver: reading and decoding images, fitting learned embedders, embedders
that cost less than shipping their input (``pixels``: ``Embedder.offload``), the embedding
cache, the checks' statistics, the quality check's PRDC radii
(:func:`privaudit.metrics.knn_radii_sq`), the policy and the report.

:class:`ClusterBackend` connects (``ray.init(address=...)``) or starts a local instance
(``"local"`` or ``"local:N"`` for N worker CPUs); :meth:`ClusterBackend.activate` makes every
:func:`privaudit.search.knn` call of the audit go to the cluster. Ray is imported only here and
only when a cluster is asked for, so the core install stays light for air-gapped sites.

Example:
    >>> from privaudit.cluster import ClusterBackend      # doctest: +SKIP
    >>> with ClusterBackend("local:2") as backend:         # doctest: +SKIP
    ...     nb = backend.knn(queries, base, k=5)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from privaudit import search
from privaudit.errors import ConfigError, MissingDependencyError
from privaudit.search import DEFAULT_CHUNK_SIZE, Neighbors

if TYPE_CHECKING:
    from privaudit.data.imageset import ImageSet
    from privaudit.embed.base import Embedder

log = logging.getLogger(__name__)

LOCAL = "local"
#: Query chunks whose searches may be in flight at once: bounds the driver's memory to a few
#: chunks of queries and results, and keeps every shard actor busy while the driver merges.
CHUNKS_IN_FLIGHT = 4


@dataclass(frozen=True)
class ClusterInfo:
    """What ``results.json`` records about the cluster an audit ran on (``run.cluster``).

    Attributes:
        address: ``"local"`` for a local instance, else the host name only (no port, user or
            token), so that a shared results file does not publish how to reach the cluster.
        workers: CPUs the cluster offered (one embedding actor or one kNN shard each).
        ray_version: the Ray version of the driver.
        searches: exact kNN searches that ran on the cluster.
        images_embedded: images embedded on the cluster (images found in the embedding cache
            are not embedded again).
    """

    address: str
    workers: int
    ray_version: str
    searches: int
    images_embedded: int


def parse_address(text: str) -> tuple[str, int | None]:
    """Split a ``--cluster`` value into the address and, for ``local:N``, the worker count.

    ``"local"`` starts a local Ray instance on all CPUs of this machine, ``"local:N"`` on N of
    them; anything else (``"auto"``, ``"HOST:PORT"``, ``"ray://HOST:PORT"``) is handed to
    ``ray.init(address=...)``.

    Raises:
        ConfigError: an empty value or a malformed ``local:N``.
    """
    value = text.strip() if isinstance(text, str) else text
    if not isinstance(value, str) or not value:
        raise ConfigError(f"--cluster: expected 'local', 'local:N' or a Ray address; got {text!r}")
    name, sep, count = value.partition(":")
    if name != LOCAL:
        return value, None
    if not sep:
        return LOCAL, None
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"--cluster {text}: expected 'local:N' with N a positive number of worker CPUs")
    return LOCAL, int(count)


def redact_address(text: str) -> str:
    """The host of a Ray address, without port, user or token; ``"local"`` for a local instance.

    Example:
        >>> redact_address("ray://alice:secret@head.example.org:10001")
        'head.example.org'
        >>> redact_address("local:2"), redact_address("10.0.0.5:6379")
        ('local', '10.0.0.5')
    """
    address, _ = parse_address(text)
    if address == LOCAL or address == "auto":
        return address
    parts = urlsplit(address if "://" in address else f"//{address}")
    return parts.hostname or "unknown"


#: Seconds to wait for a TCP connection to a cluster's address before ``ray.init``.
CONNECT_TIMEOUT_S = 10.0


def check_reachable(text: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line, a cluster address nothing answers on.

    ``ray.init`` waits minutes for a head node that is not there (measured: still waiting after
    150 s for ``127.0.0.1:1``), so a mistyped ``--cluster`` would look like a hang. A plain
    TCP connection to the address's host and port settles it within ``timeout`` seconds.
    ``local`` and ``auto`` (and an address without a port) are left to Ray.

    Raises:
        ConfigError: nothing accepts a connection at the address.
    """
    import socket

    address, _ = parse_address(text)
    if address in (LOCAL, "auto"):
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise ConfigError(f"--cluster {redact_address(text)}: the port is not a number") from None
    if not host or port is None:
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"--cluster {redact_address(text)}: nothing answers at port {port} ({reason}); check the address "
            "of the Ray head node (ray://HOST:10001 for Ray Client, HOST:6379 from a node of the cluster)"
        ) from None


def import_ray() -> Any:
    """``ray`` with Ray Data, or a :class:`MissingDependencyError` naming the ``[cluster]`` extra."""
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow and pandas come with ray[data])
    except ImportError:
        raise MissingDependencyError("ray", extra="cluster", needed_for="--cluster") from None
    return ray


class ClusterBackend:
    """A connection to a Ray cluster (or a local instance) that embeds and searches.

    Args:
        address: ``"local"``, ``"local:N"``, or a Ray address (see :func:`parse_address`).
        temp_dir: Ray's session folder for a local instance (default: Ray's own, ``/tmp/ray``).
        shards: kNN shards per search (default: one per worker CPU).

    If Ray is already initialised in this process (by the caller, or a notebook), that
    connection is used as it is and left open on :meth:`close`; otherwise :meth:`start`
    connects, or starts a local instance, and :meth:`close` shuts it down.

    Example:
        >>> with ClusterBackend("local:2") as backend:   # doctest: +SKIP
        ...     vectors = backend.embed(get_embedder("pixels"), images)
    """

    def __init__(self, address: str = LOCAL, *, temp_dir: str | os.PathLike[str] | None = None, shards: int | None = None) -> None:
        self.address, self.local_cpus = parse_address(address)
        self.temp_dir = None if temp_dir is None else str(temp_dir)
        if shards is not None and shards < 1:
            raise ConfigError(f"shards must be at least 1; got {shards}")
        self.shards = shards
        self._spec = address
        self._owns = False
        self._ray: Any = None
        self.workers = 0
        self.searches = 0
        self.images_embedded = 0
        #: query x base pairs compared on the cluster (for the scale benchmark's estimates)
        self.pairs = 0

    # ------------------------------------------------------------------ connection

    def start(self) -> ClusterBackend:
        """Connect to the cluster, or start the local instance; returns ``self``."""
        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            # Ray's own warnings (a generated auth token, deprecations) only with --verbose.
            level = logging.WARNING if log.isEnabledFor(logging.INFO) else logging.ERROR
            options: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level=level)
            if self.address == LOCAL:
                options["num_cpus"] = self.local_cpus or os.cpu_count() or 1
                if self.temp_dir is not None:
                    options["_temp_dir"] = self.temp_dir
            else:
                check_reachable(self._spec)
                options["address"] = self.address
            # ray.init installs a SIGTERM handler that exits at once; privaudit's own handler
            # turns SIGTERM into a clean interruption (nothing half-written), so it is put back.
            main = threading.current_thread() is threading.main_thread()
            previous = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(**options)
            except Exception as exc:
                detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
                raise ConfigError(f"--cluster {redact_address(self._spec)}: cannot start or reach Ray ({detail})") from None
            finally:
                if main and previous is not None:
                    signal.signal(signal.SIGTERM, previous)
            self._owns = True
        _quiet_ray_data()
        self.workers = int(ray.cluster_resources().get("CPU", 0))
        if self.workers < 1:
            self.close()
            raise ConfigError(f"--cluster {redact_address(self._spec)}: the cluster offers no CPU")
        log.info("Ray cluster %s: %d worker CPUs", redact_address(self._spec), self.workers)
        return self

    def close(self) -> None:
        """Shut down the Ray instance this backend started (a connection it found is kept)."""
        if self._owns and self._ray is not None:
            self._ray.shutdown()
        self._owns = False

    def __enter__(self) -> ClusterBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def activate(self) -> Iterator[ClusterBackend]:
        """Within the block, every :func:`privaudit.search.knn` call runs on this cluster."""
        previous = search._remote
        search._remote = self
        try:
            yield self
        finally:
            search._remote = previous

    def info(self) -> ClusterInfo:
        """The facts ``results.json`` records (address redacted to the host)."""
        return ClusterInfo(
            address=redact_address(self._spec),
            workers=self.workers,
            ray_version=str(getattr(self._ray, "__version__", "")),
            searches=self.searches,
            images_embedded=self.images_embedded,
        )

    # ------------------------------------------------------------------ work

    def embed(self, embedder: Embedder, images: ImageSet | Sequence[np.ndarray], *, batch_size: int = 256) -> np.ndarray:
        """:func:`embed_on_cluster` with this cluster's workers."""
        vectors = embed_on_cluster(embedder, images, batch_size=batch_size, workers=self.workers)
        self.images_embedded += int(vectors.shape[0])
        return vectors

    @property
    def embed_shard_size(self) -> int:
        """Images per embedding-cache shard on this cluster.

        Each shard is one Ray Data job, which costs a few seconds to start its actors (measured:
        about 5 s for two actors here), so shards grow with the cluster: 8,192 images per worker.
        An interrupted audit loses at most one shard's work.
        """
        from privaudit.embed.cache import SHARD_SIZE

        return max(SHARD_SIZE, 8192 * self.workers)

    def knn(self, queries: np.ndarray, base: np.ndarray, *, k: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Neighbors:
        """:func:`knn_on_cluster` with one shard per worker (or ``shards``)."""
        found = knn_on_cluster(queries, base, k=k, n_shards=self.shards or self.workers, chunk_size=chunk_size, workers=self.workers)
        self.searches += 1
        self.pairs += int(queries.shape[0]) * int(base.shape[0])
        return found


def active() -> ClusterBackend | None:
    """The backend activated by :meth:`ClusterBackend.activate`, or ``None``."""
    return search._remote


F = TypeVar("F", bound=Callable[..., Any])


def runs_on_cluster(func: F) -> F:
    """Decorate :func:`privaudit.pipeline.audit`: with ``config.cluster`` set, the call runs
    inside a :class:`ClusterBackend` session (connected, activated, then closed).

    A transparent wrapper (the arguments go through unchanged), so the audit's own code needs
    no branch for the cluster beyond the embedding step, and a caller that activated a backend
    itself (``with backend.activate(): audit(...)``) keeps it.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("config")
        address = getattr(config, "cluster", None)
        if address is None:
            return func(*args, **kwargs)
        with ClusterBackend(address) as backend, backend.activate():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _quiet_ray_data() -> None:
    """No progress bars or per-dataset INFO lines: CI logs and terminals stay quiet."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING if log.isEnabledFor(logging.INFO) else logging.ERROR)


def _cluster_cpus(ray: Any) -> int:
    if not ray.is_initialized():
        raise ConfigError("Ray is not initialised: start a ClusterBackend (or call ray.init) first")
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# ---------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class _PackedEmbedder:
    """An embedder's state as shipped to the workers.

    TorchScript modules cannot be pickled, so they travel as ``torch.jit.save`` bytes; the
    class itself travels by reference (privaudit must be installed on every worker, at the
    driver's version: the fingerprint check below refuses anything else).
    """

    cls: type
    state: dict
    scripted: dict
    fingerprint: str


def _pack(embedder: Embedder) -> _PackedEmbedder:
    import torch

    state, scripted = dict(embedder.__dict__), {}
    for key, value in embedder.__dict__.items():
        if isinstance(value, torch.jit.ScriptModule):
            buf = io.BytesIO()
            torch.jit.save(value, buf)
            scripted[key] = buf.getvalue()
            state[key] = None
    return _PackedEmbedder(type(embedder), state, scripted, embedder.fingerprint())


def _unpack(packed: _PackedEmbedder) -> Embedder:
    import warnings

    import torch

    embedder = packed.cls.__new__(packed.cls)
    embedder.__dict__.update(packed.state)
    for key, blob in packed.scripted.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            embedder.__dict__[key] = torch.jit.load(io.BytesIO(blob), map_location=embedder.device).eval()
    found = embedder.fingerprint()
    if found != packed.fingerprint:
        raise RuntimeError(
            f"embedder {embedder.name!r} has fingerprint {found} on a Ray worker but {packed.fingerprint} on the "
            "driver; install the same privaudit version on every node"
        )
    return embedder


class _EmbedActor:
    """The Ray Data callable class: builds the embedder once per actor, then embeds batches."""

    def __init__(self, packed: _PackedEmbedder, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.embedder = _unpack(packed)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [np.asarray(img, dtype=np.float32) for img in batch["data"]]
        return {"vector": self.embedder.embed(images, batch_size=max(1, len(images))), "digest": _digests(images)}


def embed_on_cluster(
    embedder: Embedder,
    images: ImageSet | Sequence[np.ndarray],
    *,
    batch_size: int = 256,
    workers: int | None = None,
) -> np.ndarray:
    """Embed images on the Ray cluster with Ray Data ``map_batches`` (see the module docstring).

    Args:
        embedder: a ready embedder (fitted already, for one that learns from the audit's images).
        images: an :class:`~privaudit.data.imageset.ImageSet` or a sequence of 2D float32 images.
        batch_size: images per ``map_batches`` batch.
        workers: embedding actors (one CPU each); default: every CPU of the cluster.

    Returns:
        ``(N, dim)`` float32 unit vectors in input order, equal to ``embedder.embed(images)``
        up to float32 rounding.
    """
    from privaudit.data.imageset import ImageSet

    ray = import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if embedder.requires_fit and embedder.fit_key() is None:
        raise RuntimeError(f"embedder {embedder.name!r} must be fitted before it is shipped to the cluster")
    seq = images.images if isinstance(images, ImageSet) else list(images)
    n = len(seq)
    if n == 0:
        return np.empty((0, embedder.dim), dtype=np.float32)
    actors = max(1, min(workers or _cluster_cpus(ray), math.ceil(n / batch_size)))
    # Enough blocks for every actor to have several, none smaller than one batch.
    blocks = max(1, min(math.ceil(n / batch_size), 4 * actors))
    arrays = [np.ascontiguousarray(img, dtype=np.float32) for img in seq]
    ctx = DataContext.get_current()
    previous = ctx.execution_options.preserve_order
    # A dataset copies the context when it is created: rows must come back in input order.
    ctx.execution_options.preserve_order = True
    try:
        if len({a.shape for a in arrays}) == 1:
            ds = ray.data.from_numpy(np.array_split(np.stack(arrays), blocks))
        else:  # mixed sizes: one row per image (Ray Data stores them as variable-shaped tensors)
            ds = ray.data.from_items([{"data": a} for a in arrays], override_num_blocks=blocks)
        mapped = ds.map_batches(
            _EmbedActor,
            fn_constructor_args=(_pack(embedder), 1),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=actors),
            num_cpus=1,
        )
        parts = list(mapped.iter_batches(batch_size=None, batch_format="numpy"))
    finally:
        ctx.execution_options.preserve_order = previous
    vectors = np.concatenate([p["vector"] for p in parts]).astype(np.float32, copy=False) if parts else np.empty((0, embedder.dim), np.float32)
    if vectors.shape != (n, embedder.dim):
        raise RuntimeError(f"the cluster returned {vectors.shape} embeddings for {n} images; expected ({n}, {embedder.dim})")
    # Every vector must sit on its image's row: the workers return a digest of each image they
    # embedded, checked here (a reordering would silently pair images with other vectors).
    if not np.array_equal(np.concatenate([p["digest"] for p in parts]), _digests(arrays)):
        raise RuntimeError("the cluster returned the embeddings in another order than the images")
    return vectors


def _digests(images: Sequence[np.ndarray]) -> np.ndarray:
    """An 8-byte BLAKE2b digest of each image's float32 pixels and shape."""
    return np.array(
        [int.from_bytes(hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes() + str(a.shape).encode(), digest_size=8).digest(), "little") for a in images],
        dtype=np.uint64,
    )


# ---------------------------------------------------------------------------- kNN


class _ShardSearcher:
    """A Ray actor's state: one contiguous shard of the base vectors in a FAISS flat index."""

    def __init__(self, shard: np.ndarray, offset: int, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.offset = int(offset)
        self.size = int(shard.shape[0])
        self.index = faiss.IndexFlatIP(int(shard.shape[1]))
        self.index.add(np.ascontiguousarray(shard, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sims, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.size))
        return sims, idx + self.offset


def shard_bounds(n: int, n_shards: int) -> list[tuple[int, int]]:
    """``n_shards`` contiguous ``(start, stop)`` row ranges covering ``n`` rows, sizes differing
    by at most one (fewer shards when ``n < n_shards``)."""
    n_shards = max(1, min(n_shards, n))
    edges = np.linspace(0, n, n_shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists (global indices) into the global top-k of each query:
    most similar first, exact ties lower index first (see the module docstring).

    A shard's list holds its best ``min(k, shard size)`` rows, so every similarity of the
    global top-k is in some shard's list; only where a tie straddles a shard's cut may another
    row of the same similarity stand in for the one a single index would have kept.
    """
    sims = np.concatenate([p[0] for p in parts], axis=1)
    idx = np.concatenate([p[1] for p in parts], axis=1)
    keep = np.lexsort((idx, -sims), axis=1)[:, :k]
    return np.take_along_axis(sims, keep, axis=1), np.take_along_axis(idx, keep, axis=1)


def knn_on_cluster(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    k: int = 1,
    n_shards: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int | None = None,
) -> Neighbors:
    """Exact kNN by inner product, sharded over Ray actors (see the module docstring).

    Args:
        queries: ``(n, d)`` float32 vectors.
        base: ``(m, d)`` float32 vectors, split into ``n_shards`` contiguous shards.
        k: neighbours per query (at most ``m``; a shard smaller than ``k`` gives all its rows).
        n_shards: shards, one actor each (default: one per worker CPU).
        chunk_size: query rows per actor call.
        workers: the cluster's CPUs (default: asked from Ray); shards share them evenly.

    Returns:
        :class:`~privaudit.search.Neighbors` with global row numbers, equal to
        :func:`privaudit.search.knn` up to float32 rounding.
    """
    q, b = search._validate(queries, base, k)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1; got {chunk_size}")
    ray = import_ray()
    cpus = workers or _cluster_cpus(ray)
    bounds = shard_bounds(b.shape[0], n_shards or cpus)
    # Shards share the CPUs: a whole CPU each when there are enough, a fraction otherwise (so
    # that more shards than CPUs queue instead of deadlocking); FAISS threads follow.
    # (Ray takes fractions to 4 decimals.)
    per_shard = math.floor(1e4 * cpus / len(bounds)) / 1e4 if len(bounds) >= cpus else float(cpus // len(bounds))
    threads = max(1, int(per_shard))
    searcher = ray.remote(num_cpus=per_shard)(_ShardSearcher)
    actors = [searcher.remote(ray.put(b[lo:hi]), lo, threads) for lo, hi in bounds]
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    pending: deque[tuple[int, int, list[Any]]] = deque()

    def collect() -> None:
        start, stop, futures = pending.popleft()
        sims[start:stop], idx[start:stop] = merge_topk(ray.get(futures), k)

    try:
        for start in range(0, q.shape[0], chunk_size):
            stop = min(start + chunk_size, q.shape[0])
            chunk = ray.put(q[start:stop])
            pending.append((start, stop, [a.search.remote(chunk, k) for a in actors]))
            if len(pending) >= CHUNKS_IN_FLIGHT:
                collect()
        while pending:
            collect()
    finally:
        for actor in actors:
            ray.kill(actor)
    return Neighbors(sims, idx)
