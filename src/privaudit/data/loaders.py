"""``load_imageset``: a folder, an array file or a manifest CSV -> :class:`ImageSet`."""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import logging
import os
import posixpath
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from privaudit.data.convert import to_working
from privaudit.data.imageset import ImageSet, SkippedFile, text_column
from privaudit.data.lazy import (
    ArrayImages,
    FileImages,
    LazyImages,
    NpyImages,
    NpyLayout,
    npy_layout,
    pixel_budget_bytes,
    pixel_digest,
    read_rows,
    rows_per_read,
)
from privaudit.data.readers import UnreadableImage, is_image_file, read_image
from privaudit.errors import InputError

log = logging.getLogger(__name__)

#: Default share of files that may fail to decode before the input is refused.
DEFAULT_MAX_SKIPPED = 0.05

MANIFEST_COLUMNS = ("path", "patient_id", "label")


def load_imageset(
    source: str | os.PathLike[str],
    *,
    role: str = "images",
    max_skipped: float = DEFAULT_MAX_SKIPPED,
    pixel_budget_mb: float | None = None,
) -> ImageSet:
    """Load a folder, an ``.npy``/``.npz`` array file or a manifest ``.csv`` as an :class:`ImageSet`.

    * **Folder**: every PNG, JPEG, TIFF, BMP and DICOM file below it (recursively; hidden files
      and other extensions are ignored and counted). Ids are paths relative to the folder.
    * **.npy**: an ``(N, H, W)`` or ``(N, H, W, C)`` array. **.npz**: key ``images`` as above, and
      optional ``patient_id`` and ``label`` arrays of length N. Ids are indices. Never unpickled.
    * **.csv manifest**: column ``path`` (relative to the CSV's folder; paths escaping it are
      refused) and optional ``patient_id`` and ``label``. Ids are the paths as written.

    A file that cannot be decoded is skipped and listed in ``ImageSet.skipped``.

    Every image is decoded once here (to find the undecodable ones, and to record each image's
    shape and pixel digest). A set whose working-format pixels fit in ``pixel_budget_mb`` keeps
    them in memory; a larger one drops them and reads each image again from disk when it is used
    (:mod:`privaudit.data.lazy`), checking that it has not changed since.

    Args:
        source: the path.
        role: the input's role (``"train"``, ``"synthetic"``, ``"holdout"``) for messages.
        max_skipped: the largest share of undecodable files tolerated before an ``InputError``.
        pixel_budget_mb: MiB of float32 pixels kept in memory at most; default
            ``$PRIVAUDIT_PIXEL_BUDGET_MB`` or :data:`privaudit.data.lazy.DEFAULT_PIXEL_BUDGET_MB`
            (256). ``0`` always reads from disk, ``float("inf")`` never does.

    Raises:
        InputError: missing path, unsupported type, malformed array or manifest, too many
            undecodable files, or nothing left.
        MissingDependencyError: DICOM files without pydicom installed.

    Example:
        >>> train = load_imageset("data/train.csv", role="train")  # doctest: +SKIP
    """
    if not 0.0 <= max_skipped <= 1.0:
        raise InputError(f"max_skipped must lie in [0, 1]; got {max_skipped}")
    budget = pixel_budget_bytes(pixel_budget_mb)
    path = Path(source)
    label = f"--{role}" if role in ("train", "synthetic", "holdout") else role
    if not path.exists():
        raise InputError(f"{label}: no such file or folder: {path}")
    if path.is_dir():
        return _load_folder(path, label=label, max_skipped=max_skipped, budget=budget)
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz"):
        return _load_array_file(path, label=label, budget=budget)
    if suffix == ".csv":
        return _load_manifest(path, label=label, max_skipped=max_skipped, budget=budget)
    raise InputError(
        f"{label}: unsupported input {path}: expected a folder of images, an .npy/.npz array "
        "file or a .csv manifest"
    )


class _Decoded:
    """The decoded images of one input: every image's shape and pixel digest, and the pixels
    themselves while they fit in the budget (all of them are dropped once they do not)."""

    def __init__(self, budget: float, label: str) -> None:
        self.budget = budget
        self.label = label
        self.kept: list[np.ndarray] | None = []
        self.nbytes = 0
        self.shapes: list[tuple[int, int]] = []
        self.digests: list[bytes] = []

    def __len__(self) -> int:
        return len(self.digests)

    def add(self, image: np.ndarray) -> None:
        self.shapes.append(image.shape)
        self.digests.append(pixel_digest(image))
        self.nbytes += image.nbytes
        if self.kept is not None:
            if self.nbytes > self.budget:
                self.kept = None  # from here on the set is read from disk
            else:
                self.kept.append(image)

    def sequence(self, lazy: Callable[..., LazyImages]) -> tuple[np.ndarray, ...] | LazyImages:
        """The kept images as a tuple, or ``lazy(shapes=..., digests=..., label=...)``."""
        if self.kept is not None:
            return tuple(self.kept)
        log.info(
            "%s: %d images hold %.0f MiB of pixels, more than the pixel budget of %.0f MiB: they are read "
            "from disk when used (PRIVAUDIT_PIXEL_BUDGET_MB changes the budget)",
            self.label, len(self), self.nbytes / 2**20, self.budget / 2**20,
        )
        shapes = np.array(self.shapes, dtype=np.int64).reshape(-1, 2)
        return lazy(shapes=shapes, digests=self.digests, label=self.label)


def _load_folder(root: Path, *, label: str, max_skipped: float, budget: float) -> ImageSet:
    if not os.access(root, os.R_OK | os.X_OK):
        raise InputError(f"{label}: folder is not readable: {root}")
    candidates: list[Path] = []
    skipped: list[SkippedFile] = []
    n_ignored = 0

    def on_error(exc: OSError) -> None:
        where = Path(exc.filename) if exc.filename else root
        if where == root:  # os.access can say yes (root, ACLs, network file systems) and listing still fail
            raise InputError(f"{label}: folder is not readable: {root} ({exc.strerror})")
        skipped.append(SkippedFile(_rel(where, root), f"folder not readable ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath, name)
            if name.startswith(".") or not p.is_file():
                n_ignored += 1
            elif is_image_file(p):
                candidates.append(p)
            else:
                n_ignored += 1
    candidates.sort(key=lambda p: _rel(p, root))
    decoded = _Decoded(budget, label)
    ids, files = [], []
    for p in candidates:
        try:
            decoded.add(read_image(p))
            ids.append(_rel(p, root))
            files.append(os.path.abspath(p))
        except UnreadableImage as exc:
            skipped.append(SkippedFile(_rel(p, root), str(exc)))
    _check_skipped(label, root, n_found=len(candidates), skipped=skipped, n_ok=len(decoded), max_skipped=max_skipped, n_ignored=n_ignored)
    return ImageSet(
        images=decoded.sequence(functools.partial(FileImages, files)),
        ids=tuple(ids),
        source=str(root),
        kind="folder",
        skipped=tuple(skipped),
        n_ignored=n_ignored,
        files=tuple(files),
    )


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path != root else "."


def _check_skipped(
    label: str,
    source: Path,
    *,
    n_found: int,
    skipped: list[SkippedFile],
    n_ok: int,
    max_skipped: float,
    n_ignored: int = 0,
) -> None:
    if n_ok == 0:
        if skipped:
            reasons = Counter(s.reason for s in skipped).most_common(1)[0]
            raise InputError(
                f"{label}: no readable images in {source}: all {len(skipped)} failed "
                f"(most common reason: {reasons[0]}, {reasons[1]}x)"
            )
        extra = f" ({n_ignored} other files ignored)" if n_ignored else ""
        raise InputError(
            f"{label}: no images found in {source}{extra}; expected PNG, JPEG, TIFF, BMP or DICOM files"
        )
    n_total = max(n_found, n_ok + len(skipped))
    share = len(skipped) / n_total
    if share > max_skipped:
        first = skipped[0]
        raise InputError(
            f"{label}: {len(skipped)} of {n_total} files ({_percent(share, max_skipped)}) could not be read, "
            f"more than --max-skipped {_percent(max_skipped, share)}; first: {first.path}: {first.reason}"
        )
    for s in skipped:
        log.warning("%s: skipped %s: %s", label, s.path, s.reason)


def _percent(value: float, other: float) -> str:
    """``value`` as a percentage with enough decimals to differ from ``other`` (5.3% vs 5%)."""
    for digits in range(0, 4):
        text = f"{value:.{digits}%}"
        if round(value * 100, digits) != round(other * 100, digits) or digits == 3:
            return text
    return text  # pragma: no cover


def _load_array_file(path: Path, *, label: str, budget: float) -> ImageSet:
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r" if path.suffix.lower() == ".npy" else None)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise InputError(
                f"{label}: {path} holds Python objects; privaudit never unpickles input files "
                "(save plain numeric arrays)"
            ) from None
        raise InputError(f"{label}: {path} is not a readable NumPy file ({exc})") from None
    except Exception as exc:  # OSError, EOFError, zipfile.BadZipFile, zlib.error, ...
        raise InputError(f"{label}: {path} is not a readable NumPy file ({type(exc).__name__}: {exc})") from None
    patient_ids = labels = None
    layout = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if "images" not in keys:
                raise InputError(
                    f"{label}: {path} has no 'images' array{_misspelt(keys, 'images')}; "
                    f"keys: {', '.join(keys) or 'none'}"
                )
            images = _npz_get(loaded, "images", path, label)
            if "patient_id" in keys:
                patient_ids = _npz_get(loaded, "patient_id", path, label)
            if "label" in keys:
                labels = _npz_get(loaded, "label", path, label)
    else:
        images = loaded
        # Rows are read from the file with ordinary reads, not through the map (see privaudit.data.lazy).
        layout = npy_layout(path, loaded) if images.ndim in (3, 4) and images.dtype.kind in "biuf" else None
        if layout is None:
            # Fortran order (or not images at all): read into memory now rather than keep the
            # map open for the run, where a file truncated meanwhile would kill the process
            # (SIGBUS) instead of giving a one-line error; such files are held like an .npz.
            images = np.array(loaded)
            del loaded
    return _from_array(images, patient_ids=patient_ids, labels=labels, source=str(path), label=label, budget=budget, layout=layout)


def _npz_get(npz: np.lib.npyio.NpzFile, key: str, path: Path, label: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError:
        raise InputError(
            f"{label}: array {key!r} in {path} holds Python objects; privaudit never unpickles input files"
        ) from None
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, ...
        raise InputError(f"{label}: array {key!r} in {path} cannot be read ({exc})") from None


def _from_array(
    images: np.ndarray,
    *,
    patient_ids: object,
    labels: object,
    source: str,
    label: str,
    budget: float = float("inf"),
    layout: NpyLayout | None = None,
) -> ImageSet:
    """An ImageSet from an ``(N, H, W[, C])`` array (an ``.npz``'s, or an ``.npy`` read through
    ``layout``), converted and hashed :func:`rows_per_read` images at a time."""
    if images.dtype.kind not in "biuf":
        raise InputError(f"{label}: {source}: images have dtype {images.dtype}; expected numbers")
    if images.ndim == 4 and images.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"{label}: {source}: got shape {images.shape}, which looks like a set of 3D volumes "
            "(N, D, H, W); privaudit audits 2D images only for now"
        )
    if images.ndim not in (3, 4):
        raise InputError(
            f"{label}: {source}: got shape {images.shape}; expected (N, H, W) or (N, H, W, C)"
        )
    n = images.shape[0]
    if n == 0:
        raise InputError(f"{label}: {source} holds no images")
    for name, values in (("patient_id", patient_ids), ("label", labels)):
        if values is not None and len(np.asarray(values)) != n:
            raise InputError(
                f"{label}: {source}: '{name}' has {len(np.asarray(values))} entries for {n} images"
            )
    decoded = _Decoded(budget, label)
    non_finite: list[int] = []
    try:
        with contextlib.ExitStack() as stack:
            handle = stack.enter_context(open(source, "rb")) if layout is not None else None
            step = rows_per_read(int(np.prod(images.shape[1:])) * images.dtype.itemsize)
            for start in range(0, n, step):
                stop = min(start + step, n)
                raw = read_rows(handle, layout, start, stop) if layout is not None else images[start:stop]
                finite = np.isfinite(raw.reshape(stop - start, -1)).all(axis=1) if raw.dtype.kind == "f" else None
                for k in range(stop - start):
                    if finite is not None and not finite[k]:
                        non_finite.append(start + k)
                    elif not non_finite:  # once one image is refused, only count the others
                        decoded.add(to_working(raw[k], where=f"{source}[{start + k}]"))
    except OSError as exc:
        raise InputError(f"{label}: {source} is not a readable NumPy file ({exc.strerror or exc})") from None
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None
    if non_finite:
        raise InputError(
            f"{label}: {source}: {len(non_finite)} image(s) contain NaN or infinite values "
            f"(first: index {non_finite[0]})"
        )
    rows = np.arange(n, dtype=np.int64)
    if layout is not None:
        lazy = functools.partial(NpyImages, source, offset=layout.offset, dtype=layout.dtype, item_shape=layout.item_shape, rows=rows)
    else:
        lazy = functools.partial(ArrayImages, images, source=source, rows=rows)
    try:
        return ImageSet(
            images=decoded.sequence(lazy),
            ids=tuple(str(i) for i in range(n)),
            patient_ids=text_column(patient_ids, "patient_id", source),
            labels=text_column(labels, "label", source),
            source=source,
            kind="array",
        )
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None


def _load_manifest(path: Path, *, label: str, max_skipped: float, budget: float) -> ImageSet:
    root = path.parent
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: manifest {path} is not valid UTF-8 (byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{label}: manifest {path} is not a valid CSV file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{label}: manifest {path} cannot be read ({exc.strerror})") from None
    if "path" not in columns:
        raise InputError(
            f"{label}: manifest {path} has no 'path' column{_misspelt(columns, 'path')}; "
            f"columns: {', '.join(columns) or 'none'}"
        )
    if not rows:
        raise InputError(f"{label}: manifest {path} lists no images")
    has_patients = "patient_id" in columns
    has_labels = "label" in columns
    seen: dict[str, int] = {}
    decoded = _Decoded(budget, label)
    ids, patients, labels, files = [], [], [], []
    skipped: list[SkippedFile] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        rel = row.get("path", "")
        if not rel:
            raise InputError(f"{label}: manifest {path}, line {line}: empty path")
        if any(ord(ch) < 32 for ch in rel):
            raise InputError(f"{label}: manifest {path}, line {line}: path {rel!r} contains a control character")
        norm = _safe_relative(rel)
        if norm is None:
            raise InputError(
                f"{label}: manifest {path}, line {line}: path {rel!r} escapes the manifest's folder; "
                "paths must be relative and stay inside it"
            )
        if norm in seen:
            raise InputError(
                f"{label}: manifest {path}, line {line}: path {norm!r} is listed twice (first on line {seen[norm]})"
            )
        seen[norm] = line
        for column, present in (("patient_id", has_patients), ("label", has_labels)):
            if present and not row.get(column):
                raise InputError(f"{label}: manifest {path}, line {line}: empty {column}")
        file = root / norm
        if not file.is_file():
            why = "is a folder, not a file" if file.is_dir() else "does not exist"
            skipped.append(SkippedFile(norm, f"file listed in the manifest {why}"))
            continue
        try:
            decoded.add(read_image(file))
        except UnreadableImage as exc:
            skipped.append(SkippedFile(norm, str(exc)))
            continue
        ids.append(norm)
        files.append(os.path.abspath(file))
        patients.append(row.get("patient_id", ""))
        labels.append(row.get("label", ""))
    _check_skipped(label, path, n_found=len(rows), skipped=skipped, n_ok=len(decoded), max_skipped=max_skipped)
    return ImageSet(
        images=decoded.sequence(functools.partial(FileImages, files)),
        ids=tuple(ids),
        patient_ids=tuple(patients) if has_patients else None,
        labels=tuple(labels) if has_labels else None,
        source=str(path),
        kind="manifest",
        skipped=tuple(skipped),
        files=tuple(files),
    )


def _misspelt(names: list[str], wanted: str) -> str:
    """`` (is 'Path' meant to be 'path'?)`` when one of ``names`` is close to ``wanted``."""
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6) or [n for n in names if n.lower() == wanted]
    return f" (is {close[0]!r} meant to be {wanted!r}?)" if close else ""


def _safe_relative(rel: str) -> str | None:
    """Normalise a manifest path; ``None`` if it is absolute or leaves the manifest's folder.

    The check is lexical (``..`` segments, absolute paths, drive letters): symbolic links inside
    the folder are the user's own layout and are followed.
    """
    text = rel.replace("\\", "/")
    if text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return None
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm
