"""The on-disk cache of embeddings and fitted embedder weights.

Embeddings are stored per embedder fingerprint, keyed by each image's content hash (SHA-256 of
its working-format pixels), in shards: ``<root>/embeddings/<fingerprint>/<shard>.npz`` holding
``digests`` (n x 32 bytes) and ``vectors`` (n x dim float32). A second audit of the same images
embeds nothing; an audit that shares some images with an earlier one embeds only the rest; an
audit interrupted mid-way keeps the shards it finished. Fitted weights of embedders that learn
from the audit's images live in ``<root>/models/<name>-<key>.pt``.

The cache holds patient-derived data (a ``pixels`` embedding is a small copy of the image, and
fitted models learned from patients), and per-image hashes. It therefore lives where the user
says (``--cache-dir``), defaults to the user's private cache folder (``privaudit`` under the
platform's user cache directory; ``PRIVAUDIT_CACHE_DIR`` overrides it), and is created with
folders 0700 and files 0600. ``privaudit cache purge`` empties it. A shard that cannot be read
or fails validation is ignored, deleted and rewritten: the cache is never trusted over a
recomputation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privaudit._util import atomic_write_bytes
from privaudit.errors import OutputError

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "PRIVAUDIT_CACHE_DIR"
DIGEST_BYTES = 32
#: Images embedded, and written to the cache, per shard: an interrupted audit loses at most one.
SHARD_SIZE = 2048


def default_cache_dir() -> Path:
    """``$PRIVAUDIT_CACHE_DIR``, or ``privaudit`` in the platform's per-user cache folder."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("privaudit", appauthor=False))


@dataclass
class CacheStats:
    """How many images of one embedder came from the cache and how many were embedded."""

    from_cache: int = 0
    embedded: int = 0


class EmbeddingCache:
    """A private on-disk cache (see the module docstring).

    Example:
        >>> cache = EmbeddingCache("/tmp/privaudit-cache")  # doctest: +SKIP
        >>> vectors = cache.embed(embedder, images)          # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.stats: dict[str, CacheStats] = {}

    # ------------------------------------------------------------------ folders

    def _private_dir(self, path: Path) -> Path:
        """Create ``path`` (and missing parents below the root) with mode 0700."""
        try:
            missing = []
            p = path
            while not p.exists():
                missing.append(p)
                p = p.parent
            for d in reversed(missing):
                d.mkdir(mode=0o700)
                os.chmod(d, 0o700)  # the umask may have removed bits; make sure no one else reads
        except OSError as exc:
            raise OutputError(f"cache folder {path} cannot be created ({exc.strerror}); use --cache-dir or --no-cache") from None
        return path

    def _embedding_dir(self, fingerprint: str) -> Path:
        return self.root / "embeddings" / fingerprint

    # ------------------------------------------------------------------ embeddings

    def lookup(self, fingerprint: str, digests: Sequence[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Cached vectors for ``digests``.

        Returns:
            ``(vectors, found)``: an ``(n, dim)`` float32 array (rows not found are zero) and a
            boolean mask of the rows found.
        """
        want = {d: i for i, d in enumerate(digests)}
        vectors = np.zeros((len(digests), dim), dtype=np.float32)
        found = np.zeros(len(digests), dtype=bool)
        folder = self._embedding_dir(fingerprint)
        if not folder.is_dir():
            return vectors, found
        for shard in sorted(folder.glob("*.npz")):
            loaded = self._read_shard(shard, dim)
            if loaded is None:
                continue
            shard_digests, shard_vectors = loaded
            for row, d in enumerate(shard_digests):
                i = want.get(bytes(d))
                if i is not None and not found[i]:
                    vectors[i] = shard_vectors[row]
                    found[i] = True
            if found.all():
                break
        return vectors, found

    def store(self, fingerprint: str, digests: Sequence[bytes], vectors: np.ndarray) -> None:
        """Write one shard of ``vectors`` keyed by ``digests`` (atomically; 0600)."""
        if len(digests) == 0:
            return
        packed = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)
        name = hashlib.sha256(packed.tobytes()).hexdigest()[:32] + ".npz"
        folder = self._private_dir(self._embedding_dir(fingerprint))
        target = folder / name
        if target.exists():
            return
        buf = io.BytesIO()
        np.savez(buf, digests=packed, vectors=np.ascontiguousarray(vectors, dtype=np.float32))
        try:
            atomic_write_bytes(target, buf.getvalue())
        except OSError as exc:  # a full disk must not stop the audit: the cache is an optimisation
            log.warning("could not write to the embedding cache %s (%s); continuing without it", folder, exc.strerror or exc)

    def _read_shard(self, shard: Path, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(shard, allow_pickle=False) as data:
                digests, vectors = data["digests"], data["vectors"]
            ok = (
                digests.dtype == np.uint8
                and digests.ndim == 2
                and digests.shape[1] == DIGEST_BYTES
                and vectors.dtype == np.float32
                and vectors.shape == (digests.shape[0], dim)
                and bool(np.isfinite(vectors).all())
            )
        except Exception:  # truncated zip, bad header, missing key: all mean "not usable"
            ok = False
        if not ok:
            log.warning("ignoring a corrupt embedding cache file %s; it will be rewritten", shard)
            shard.unlink(missing_ok=True)
            return None
        return digests, vectors

    def embed(
        self,
        fingerprint: str,
        digests: Sequence[bytes],
        images: Sequence[np.ndarray],
        dim: int,
        compute: Callable[[Sequence[np.ndarray]], np.ndarray],
        *,
        label: str = "",
        shard_size: int = SHARD_SIZE,
    ) -> np.ndarray:
        """Vectors for ``images``: from the cache where present, else ``compute``\\ d and stored.

        Missing images are computed ``shard_size`` at a time, and each shard is written as soon
        as it is done; ``images`` is read one shard at a time (it may be a lazy sequence that
        reads from disk).
        """
        vectors, found = self.lookup(fingerprint, digests, dim)
        missing = np.flatnonzero(~found)
        stats = self.stats.setdefault(label or fingerprint, CacheStats())
        stats.from_cache += int(found.sum())
        stats.embedded += int(missing.size)
        for start in range(0, missing.size, shard_size):
            rows = missing[start : start + shard_size]
            chunk = compute(gather(images, rows))
            vectors[rows] = chunk
            self.store(fingerprint, [digests[i] for i in rows], chunk)
        return vectors

    # ------------------------------------------------------------------ fitted models

    def model_path(self, name: str, key: str) -> Path:
        """Where the fitted weights of embedder ``name`` under ``key`` are kept."""
        return self.root / "models" / f"{name}-{key}.pt"

    def load_model(self, name: str, key: str) -> dict | None:
        """A cached state dict, or ``None`` (missing or corrupt: corrupt files are deleted)."""
        import torch

        path = self.model_path(name, key)
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a state dict")
            return state
        except Exception:
            log.warning("ignoring a corrupt cached model %s; it will be refitted", path)
            path.unlink(missing_ok=True)
            return None

    def save_model(self, name: str, key: str, state: dict) -> None:
        """Store a fitted state dict (atomically; 0600)."""
        import torch

        folder = self._private_dir(self.root / "models")
        buf = io.BytesIO()
        torch.save(state, buf)
        try:
            atomic_write_bytes(folder / f"{name}-{key}.pt", buf.getvalue())
        except OSError as exc:
            log.warning("could not write the fitted model to the cache %s (%s)", folder, exc.strerror or exc)

    # ------------------------------------------------------------------ maintenance

    def purge(self) -> tuple[int, int]:
        """Delete everything privaudit stored under the root; return (files, bytes) removed.

        Only the ``embeddings`` and ``models`` folders are removed, so a ``--cache-dir`` that
        points at a folder holding other things loses nothing else.
        """
        files = size = 0
        for sub in ("embeddings", "models"):
            folder = self.root / sub
            if not folder.exists():
                continue
            for p in folder.rglob("*"):
                if p.is_file():
                    files += 1
                    size += p.stat().st_size
            shutil.rmtree(folder)
        return files, size


def gather(images: Sequence[np.ndarray], rows: np.ndarray) -> Sequence[np.ndarray]:
    """``images`` at ``rows``. A lazy sequence gives a lazy view, which the embedder reads one
    batch at a time (a shard of 2,048 images of 2048 x 2048 held at once would be 32 GiB);
    held images are sliced when the rows are consecutive (the usual case: nothing cached yet)."""
    from privaudit.data.lazy import LazyImages
    from privaudit.embed.base import select

    if not isinstance(images, LazyImages) and rows.size and int(rows[-1]) - int(rows[0]) == rows.size - 1:
        return images[int(rows[0]) : int(rows[-1]) + 1]
    return select(images, rows)
