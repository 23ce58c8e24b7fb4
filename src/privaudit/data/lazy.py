"""Image sequences that read their pixels from disk on access instead of holding them.

A large input (by default above :data:`DEFAULT_PIXEL_BUDGET_MB` of working-format pixels per
set) is not kept in memory: the loader decodes every image once (to skip and list corrupt files,
and to record each image's shape and pixel digest), drops the pixels, and the
:class:`~privaudit.data.imageset.ImageSet` gets a :class:`LazyImages` instead of a tuple. It
behaves like the tuple (``len``, an int index, a slice, iteration), but each access decodes the
image again (a folder or manifest) or reads its row from the ``.npy`` file, converts it to the
working format, and checks it against the digest recorded at load time. An image that changed,
disappeared or can no longer be decoded since then stops the audit with an :class:`InputError`
naming it, never with silently different pixels.

Why ``.npy`` rows are read with ordinary positional reads and not through a memory map: pages of
a mapped file that the process has touched count towards its resident set (``RssFile``) until
the mapping is closed, so reading every image of a 1.6 GB array through one ``np.memmap``
raises the peak RSS by 1.6 GB although the kernel could drop those pages. A read into a fresh
buffer costs one small copy and keeps the pixels out of the process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from privaudit.errors import InputError

#: Working-format pixels (float32 bytes, in MiB) of one input set below which the loader keeps
#: the decoded images in memory, so that a small audit decodes each file once. Above it the set
#: is read lazily. ``PRIVAUDIT_PIXEL_BUDGET_MB`` overrides it (``0``: always lazy, ``inf``:
#: never). 256 MiB is 16,000 images of 64 x 64 or 64 of 2048 x 2048; the README's Scale section
#: gives the measurements behind it.
DEFAULT_PIXEL_BUDGET_MB = 256.0
ENV_PIXEL_BUDGET = "PRIVAUDIT_PIXEL_BUDGET_MB"
#: Images read per step when a lazy sequence is iterated or scanned at load time, at most...
READ_CHUNK = 256
#: ...and at most this many bytes of them (64 MiB: 256 images of 64 x 64, but 4 of 2048 x 2048,
#: where 256 would be 4 GiB).
READ_BYTES = 64 * 2**20


def rows_per_read(image_bytes: int) -> int:
    """Images per read step for images of ``image_bytes`` each (see :data:`READ_BYTES`)."""
    return max(1, min(READ_CHUNK, READ_BYTES // max(1, int(image_bytes))))


def pixel_budget_bytes(budget_mb: float | None = None) -> float:
    """The pixel budget in bytes: ``budget_mb``, else ``$PRIVAUDIT_PIXEL_BUDGET_MB``, else the default."""
    if budget_mb is None:
        text = os.environ.get(ENV_PIXEL_BUDGET, "").strip()
        if text:
            try:
                budget_mb = float(text)
            except ValueError:
                raise InputError(f"{ENV_PIXEL_BUDGET}={text!r} is not a number of MiB (use e.g. 256, 0 or inf)") from None
        else:
            budget_mb = DEFAULT_PIXEL_BUDGET_MB
    if not budget_mb >= 0:  # also refuses NaN
        raise InputError(f"the pixel budget must be a number of MiB >= 0; got {budget_mb}")
    return float(budget_mb) * 2**20


def pixel_digest(image: np.ndarray) -> bytes:
    """SHA-256 of a working-format image's shape and float32 pixels (the cache's key)."""
    h = hashlib.sha256(f"{image.shape[0]}x{image.shape[1]}".encode())
    h.update(np.ascontiguousarray(image, dtype="<f4").tobytes())
    return h.digest()


class LazyImages(Sequence[np.ndarray]):
    """A read-only sequence of working-format images read from disk on access.

    ``seq[i]`` reads one image; ``seq[a:b]`` reads those images and returns them as a tuple (so
    a slice of 10,000 holds 10,000 decoded images: take slices of a batch's size); iteration
    reads :data:`READ_CHUNK` images (at most :data:`READ_BYTES`) at a time. Every image is checked against the digest
    recorded when the set was loaded. Subclasses implement :meth:`_read`.

    Attributes:
        shapes: ``(N, 2)`` int array, each image's ``(H, W)`` as loaded.
        digests: each image's :func:`pixel_digest` as loaded.
        label: the input's name in messages (``--train``).
    """

    def __init__(self, *, shapes: np.ndarray, digests: Sequence[bytes], label: str) -> None:
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
        self.digests = tuple(digests)
        self.label = label
        if len(self.digests) != len(self.shapes):
            raise ValueError(f"{len(self.digests)} digests for {len(self.shapes)} shapes")

    def __len__(self) -> int:
        return len(self.digests)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[np.ndarray, ...]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | tuple[np.ndarray, ...]:
        if isinstance(index, slice):
            return self.read(range(*index.indices(len(self))))
        try:
            i = int(index)  # numpy integers too; a float or an array is refused here
        except TypeError:
            raise TypeError(f"lazy image sequences take an int or a slice; got {type(index).__name__}") from None
        if i != index:
            raise TypeError(f"lazy image sequences take an int or a slice; got {index!r}")
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"image index {index} out of range for {n} images")
        return self.read([i])[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        step = rows_per_read(4 * int(self.shapes.prod(axis=1).max())) if len(self) else 1  # float32 pixels
        for start in range(0, len(self), step):
            yield from self.read(range(start, min(start + step, len(self))))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {len(self)} images from {self.label}, read on access>"

    def read(self, rows: Sequence[int]) -> tuple[np.ndarray, ...]:
        """The images at ``rows`` (in range), read, converted and checked against their digests."""
        images = self._read(rows)
        for i, image in zip(rows, images):
            if image.shape != tuple(self.shapes[i]) or pixel_digest(image) != self.digests[i]:
                raise InputError(
                    f"{self.label}: {self.name_of(i)} changed on disk since it was loaded at the start "
                    "of this run (its pixels differ); leave the inputs unchanged while an audit runs, and run it again"
                )
            image.flags.writeable = False
        return tuple(images)

    def take(self, indices: Sequence[int] | np.ndarray) -> LazyImages:
        """A lazy sequence of the images at ``indices`` (nothing is read)."""
        raise NotImplementedError

    def name_of(self, i: int) -> str:
        """How image ``i`` is named in messages."""
        raise NotImplementedError

    def _read(self, rows: Sequence[int]) -> list[np.ndarray]:
        raise NotImplementedError


class FileImages(LazyImages):
    """Images of a folder or manifest: each one decoded from its own file on access."""

    def __init__(self, files: Sequence[str], *, shapes: np.ndarray, digests: Sequence[bytes], label: str) -> None:
        super().__init__(shapes=shapes, digests=digests, label=label)
        self.files = tuple(files)
        if len(self.files) != len(self.digests):
            raise ValueError(f"{len(self.files)} files for {len(self.digests)} digests")

    def take(self, indices: Sequence[int] | np.ndarray) -> FileImages:
        idx = [int(i) for i in indices]
        return FileImages(
            [self.files[i] for i in idx], shapes=self.shapes[idx] if idx else np.zeros((0, 2), np.int64),
            digests=[self.digests[i] for i in idx], label=self.label,
        )

    def name_of(self, i: int) -> str:
        return self.files[i]

    def _read(self, rows: Sequence[int]) -> list[np.ndarray]:
        from privaudit.data.readers import UnreadableImage, read_image

        out = []
        for i in rows:
            try:
                out.append(read_image(self.files[i]))
            except UnreadableImage as exc:
                raise InputError(
                    f"{self.label}: {self.files[i]} can no longer be read ({exc}); it was read when this run "
                    "started, so it was changed or removed since; leave the inputs unchanged while an audit runs"
                ) from None
        return out


class NpyImages(LazyImages):
    """Images of an ``.npy`` array file, each row read from the file on access (see the module
    docstring for why not through a memory map) and converted to the working format.

    Args:
        path: the ``.npy`` file.
        offset: where the array's data starts (after the header).
        dtype: the stored dtype.
        item_shape: the shape of one image as stored, ``(H, W)`` or ``(H, W, C)``.
        rows: the file's row of each image (all rows, or a :meth:`take`\\ n subset).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        offset: int,
        dtype: np.dtype,
        item_shape: tuple[int, ...],
        rows: np.ndarray,
        shapes: np.ndarray,
        digests: Sequence[bytes],
        label: str,
    ) -> None:
        super().__init__(shapes=shapes, digests=digests, label=label)
        self.path = str(path)
        self.offset = int(offset)
        self.dtype = np.dtype(dtype)
        self.item_shape = tuple(int(d) for d in item_shape)
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) != len(self.digests):
            raise ValueError(f"{len(self.rows)} rows for {len(self.digests)} digests")

    def take(self, indices: Sequence[int] | np.ndarray) -> NpyImages:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        return NpyImages(
            self.path, offset=self.offset, dtype=self.dtype, item_shape=self.item_shape, rows=self.rows[idx],
            shapes=self.shapes[idx], digests=[self.digests[i] for i in idx], label=self.label,
        )

    def name_of(self, i: int) -> str:
        return f"{self.path}[{int(self.rows[i])}]"

    def _read(self, rows: Sequence[int]) -> list[np.ndarray]:
        from privaudit.data.convert import to_working

        file_rows = self.rows[np.asarray(rows, dtype=np.int64)] if len(rows) else np.zeros(0, np.int64)
        out: list[np.ndarray] = []
        try:
            with open(self.path, "rb") as handle:
                for start, stop in _runs(file_rows):
                    raw = read_rows(handle, self, start, stop)
                    out.extend(to_working(raw[k], where=f"{self.path}[{start + k}]") for k in range(stop - start))
        except OSError as exc:
            raise InputError(
                f"{self.label}: {self.path} can no longer be read ({exc.strerror or exc}); it was read when this "
                "run started, so it was changed or removed since; leave the inputs unchanged while an audit runs"
            ) from None
        except InputError as exc:  # a row that no longer converts: the file was rewritten
            raise InputError(f"{self.label}: {exc} (the file changed on disk since it was loaded at the start of this run)") from None
        return out


class ArrayImages(LazyImages):
    """Images of an array already in memory (an ``.npz``, which is a zip and cannot be read in
    place, or a Fortran-ordered ``.npy`` through its memory map), kept as stored and converted
    to the working format on access: a ``uint8`` array takes a quarter of its float32 copies."""

    def __init__(self, array: np.ndarray, *, source: str, rows: np.ndarray, shapes: np.ndarray, digests: Sequence[bytes], label: str) -> None:
        super().__init__(shapes=shapes, digests=digests, label=label)
        self.array = array
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) != len(self.digests):
            raise ValueError(f"{len(self.rows)} rows for {len(self.digests)} digests")

    def take(self, indices: Sequence[int] | np.ndarray) -> ArrayImages:
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        return ArrayImages(
            self.array, source=self.source, rows=self.rows[idx], shapes=self.shapes[idx],
            digests=[self.digests[i] for i in idx], label=self.label,
        )

    def name_of(self, i: int) -> str:
        return f"{self.source}[{int(self.rows[i])}]"

    def _read(self, rows: Sequence[int]) -> list[np.ndarray]:
        from privaudit.data.convert import to_working

        return [to_working(self.array[int(self.rows[i])], where=self.name_of(i)) for i in rows]


def read_rows(handle: object, spec: NpyImages | NpyLayout, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an ``.npy`` file as a fresh ``(stop - start, *item_shape)`` array."""
    per = int(np.prod(spec.item_shape))
    count = (stop - start) * per
    handle.seek(spec.offset + start * per * spec.dtype.itemsize)  # type: ignore[attr-defined]
    buf = handle.read(count * spec.dtype.itemsize)  # type: ignore[attr-defined]
    if len(buf) != count * spec.dtype.itemsize:
        raise OSError(f"file is shorter than its header says (rows {start}-{stop - 1})")
    return np.frombuffer(buf, dtype=spec.dtype).reshape((stop - start, *spec.item_shape))


class NpyLayout:
    """Where an ``.npy`` file's rows are, for :func:`read_rows` at load time."""

    def __init__(self, offset: int, dtype: np.dtype, item_shape: tuple[int, ...]) -> None:
        self.offset, self.dtype, self.item_shape = offset, np.dtype(dtype), item_shape


def npy_layout(path: Path, array: np.memmap) -> NpyLayout | None:
    """The row layout of a memory-mapped ``.npy``, or ``None`` when rows are not contiguous in
    the file (Fortran order), which the lazy reader does not handle."""
    if not array.flags.c_contiguous or array.dtype.hasobject:
        return None
    return NpyLayout(int(array.offset), array.dtype, tuple(array.shape[1:]))


def _runs(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``[start, stop)`` of file rows, in the order given (one read per run)."""
    if rows.size == 0:
        return
    start = prev = int(rows[0])
    for r in rows[1:]:
        r = int(r)
        if r != prev + 1:
            yield start, prev + 1
            start = r
        prev = r
    yield start, prev + 1
