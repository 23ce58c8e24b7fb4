"""The image set every later stage works on (its pixels in memory, or read from disk on access)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from privaudit.data.convert import to_working
from privaudit.data.lazy import LazyImages, pixel_digest
from privaudit.errors import InputError


@dataclass(frozen=True)
class SkippedFile:
    """A file that was found but could not be used, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class InputSummary:
    """What ``results.json`` records about one input set: counts and one hash, never per-image
    hashes (a per-image hash lets anyone holding a patient's scan confirm it was in training)."""

    role: str
    source: str
    kind: str
    n_images: int
    n_patients: int | None
    n_labels: int | None
    image_size_min: tuple[int, int]
    image_size_max: tuple[int, int]
    content_sha256: str
    n_skipped: int
    skipped: tuple[SkippedFile, ...]
    n_ignored: int


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A set of 2D grayscale images in the working format, with ids and optional metadata.

    Every image is a read-only ``float32`` array of shape ``(H, W)`` with values in ``[0, 1]``
    (see :func:`privaudit.data.convert.to_working` for how RGB, 16-bit and float inputs are
    mapped). Sizes may differ between images; embedders resize to their own input size.

    ``images`` is a tuple of arrays for sets built in memory and for loaded sets below the pixel
    budget, and a :class:`~privaudit.data.lazy.LazyImages` for larger loaded sets: the same
    sequence interface (``len``, an int index, a slice, iteration), but every access reads the
    image from disk again (see :mod:`privaudit.data.lazy`). Code that needs every image should
    walk it in slices of a batch's size rather than ``list(images)``.

    Attributes:
        images: the pixel arrays, in the order of ``ids`` (a tuple, or read on access).
        ids: stable, unique image ids: the path relative to the input root, or the index for
            arrays.
        patient_ids: one patient id per image, or ``None`` when the input has none.
        labels: one class label per image (as text), or ``None``.
        source: where the set came from, as the user gave it.
        kind: ``"folder"``, ``"manifest"``, ``"array"`` or ``"memory"``.
        skipped: files that were found but could not be decoded.
        n_ignored: files in a folder that are not images (other extensions, hidden files).
        files: the absolute path of the file behind each image (folder and manifest inputs), or
            ``None`` when the images did not come from one file each (arrays, memory). Checks
            that read file headers (``metadata``) use it; it never reaches an output.

    Example:
        >>> import numpy as np
        >>> s = ImageSet.from_arrays(np.zeros((3, 8, 8), np.uint8), patient_ids=["a", "a", "b"])
        >>> len(s), s.ids, s.n_patients
        (3, ('0', '1', '2'), 2)
    """

    images: tuple[np.ndarray, ...] | LazyImages
    ids: tuple[str, ...]
    patient_ids: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None
    source: str = "<memory>"
    kind: str = "memory"
    skipped: tuple[SkippedFile, ...] = ()
    n_ignored: int = 0
    files: tuple[str, ...] | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.ids) != n:
            raise InputError(f"{self.source}: {len(self.ids)} ids for {n} images")
        for name in ("patient_ids", "labels", "files"):
            values = getattr(self, name)
            if values is not None and len(values) != n:
                raise InputError(f"{self.source}: {len(values)} {name} for {n} images")
        index = {image_id: i for i, image_id in enumerate(self.ids)}
        if len(index) != n:
            dup = next(i for i in self.ids if self.ids.count(i) > 1)
            raise InputError(f"{self.source}: image id {dup!r} occurs more than once")
        if isinstance(self.images, LazyImages):
            # Checked image by image when the loader decoded them, and again on every access.
            object.__setattr__(self, "_index", index)
            return
        for image in self.images:
            if image.ndim != 2 or image.dtype != np.float32:
                raise InputError(
                    f"{self.source}: images must be 2D float32 in the working format; "
                    f"got {image.dtype} {image.shape} (use ImageSet.from_arrays)"
                )
            image.flags.writeable = False
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray | Sequence[np.ndarray],
        *,
        patient_ids: Sequence[object] | None = None,
        labels: Sequence[object] | None = None,
        ids: Sequence[str] | None = None,
        source: str = "<memory>",
    ) -> ImageSet:
        """Build a set from an ``(N, H, W)`` / ``(N, H, W, C)`` array or a list of 2D/HWC arrays.

        Each image is converted to the working format; ids default to the index.
        """
        if isinstance(images, np.ndarray) and images.ndim not in (3, 4):
            raise InputError(
                f"{source}: got an array of shape {images.shape}; expected (N, H, W) or (N, H, W, C)"
            )
        converted = tuple(to_working(np.asarray(img), where=f"{source}[{i}]") for i, img in enumerate(images))
        return cls(
            images=converted,
            ids=tuple(ids) if ids is not None else tuple(str(i) for i in range(len(converted))),
            patient_ids=text_column(patient_ids, "patient_id", source),
            labels=text_column(labels, "label", source),
            source=source,
            kind="memory",
        )

    def __len__(self) -> int:
        return len(self.images)

    def index_of(self, image_id: str) -> int:
        """Position of the image with ``image_id``."""
        return self._index[image_id]

    @property
    def in_memory(self) -> bool:
        """Whether the pixels are held in memory (``False``: read from disk on access)."""
        return not isinstance(self.images, LazyImages)

    def subset(self, indices: Sequence[int] | np.ndarray, *, source: str | None = None) -> ImageSet:
        """A new set holding the images at ``indices`` (metadata carried along; a lazy set's
        subset is lazy too, and reads nothing here)."""
        idx = [int(i) for i in indices]
        return ImageSet(
            images=self.images.take(idx) if isinstance(self.images, LazyImages) else tuple(self.images[i] for i in idx),
            ids=tuple(self.ids[i] for i in idx),
            patient_ids=None if self.patient_ids is None else tuple(self.patient_ids[i] for i in idx),
            labels=None if self.labels is None else tuple(self.labels[i] for i in idx),
            source=source or self.source,
            kind=self.kind,
            files=None if self.files is None else tuple(self.files[i] for i in idx),
        )

    @property
    def shapes(self) -> np.ndarray:
        """``(N, 2)`` array of every image's ``(H, W)`` (without reading a lazy set's pixels)."""
        if isinstance(self.images, LazyImages):
            return self.images.shapes
        return np.array([img.shape for img in self.images], dtype=np.int64).reshape(-1, 2)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield the images in order, ``batch_size`` at a time."""
        for start in range(0, len(self.images), batch_size):
            yield self.images[start : start + batch_size]

    @property
    def n_patients(self) -> int | None:
        """Number of distinct patients, or ``None`` without patient ids."""
        return None if self.patient_ids is None else len(set(self.patient_ids))

    @cached_property
    def pixel_digests(self) -> tuple[bytes, ...]:
        """SHA-256 of each image's shape and working-format pixels.

        Used in memory to find exact duplicates; never written to any output. A lazy set has
        them from when it was loaded (reading every image again only for them would double
        the cost of a load).
        """
        if isinstance(self.images, LazyImages):
            return self.images.digests
        return tuple(pixel_digest(img) for img in self.images)

    @cached_property
    def content_sha256(self) -> str:
        """One hash of the whole set: ids, patient ids, labels and pixels, in id order.

        The same images under the same ids give the same hash whatever the order they were
        listed in.
        """
        h = hashlib.sha256()
        for i in sorted(range(len(self)), key=lambda j: self.ids[j]):
            h.update(self.ids[i].encode("utf-8") + b"\0")
            h.update((self.patient_ids[i] if self.patient_ids else "").encode("utf-8") + b"\0")
            h.update((self.labels[i] if self.labels else "").encode("utf-8") + b"\0")
            h.update(self.pixel_digests[i])
        return h.hexdigest()

    def summary(self, role: str) -> InputSummary:
        """Counts, sizes and the set hash for ``results.json``."""
        shapes = self.shapes if len(self) else np.zeros((1, 2), int)
        return InputSummary(
            role=role,
            source=self.source,
            kind=self.kind,
            n_images=len(self),
            n_patients=self.n_patients,
            n_labels=None if self.labels is None else len(set(self.labels)),
            image_size_min=(int(shapes[:, 0].min()), int(shapes[:, 1].min())),
            image_size_max=(int(shapes[:, 0].max()), int(shapes[:, 1].max())),
            content_sha256=self.content_sha256,
            n_skipped=len(self.skipped),
            skipped=self.skipped,
            n_ignored=self.n_ignored,
        )


def text_column(values: Sequence[object] | np.ndarray | None, name: str, source: str) -> tuple[str, ...] | None:
    """Patient ids and labels are kept as text, so ``7`` in an array and ``"7"`` in a CSV match."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"{source}: {name} has shape {arr.shape}; expected one value per image")
    out = []
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        text = str(v).strip()
        if not text or text.lower() == "nan":
            raise InputError(f"{source}: {name} of image {i} is empty")
        out.append(text)
    return tuple(out)
