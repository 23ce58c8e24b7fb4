"""Decoders for single image files: PNG, JPEG, BMP (Pillow), TIFF (tifffile) and DICOM (pydicom).

Each reader returns the working format (:mod:`privaudit.data.convert`) or raises
:class:`UnreadableImage` with a short reason; the folder loader then skips the file and lists it.
Only pixel data and the attributes needed to interpret it are read from DICOM files: no header
field ever reaches a log or an output. Library warnings and log records raised while decoding are
silenced, because some of them quote header values (pydicom's "invalid value for VR DA: ...",
tifffile's "coercing invalid ASCII ..."); what went wrong reaches the user as the skip reason.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from privaudit.data.convert import ImageFormatError, to_working
from privaudit.errors import MissingDependencyError

if TYPE_CHECKING:
    from PIL import Image

PILLOW_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS | TIFF_EXTENSIONS | DICOM_EXTENSIONS


class UnreadableImage(Exception):
    """A file that cannot be decoded into one 2D image; ``str(exc)`` is the reason."""


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def has_dicom_preamble(path: Path) -> bool:
    """True when the file carries the DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return _is_dicom(head)


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


@contextlib.contextmanager
def quiet_decoding(*loggers: str) -> Iterator[None]:
    """Silence warnings and the named libraries' log records while a file is decoded.

    Decoders warn and log about quirks they work around (pydicom even logs a traceback for a
    frame it cannot decode, then raises), and some of those messages quote header values. Errors
    still surface as exceptions, which become skip reasons. A logger and all its children are
    cut off from the handlers above them (not propagated, but caught by a NullHandler so that
    Python's last-resort handler does not print them either).
    """
    saved = []
    for name in loggers:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.propagate = False
        logger.addHandler(_SINK)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(_SINK)
            logger.propagate = propagate


_SINK = logging.NullHandler()


def is_image_file(path: Path) -> bool:
    """Whether a folder scan should try to decode ``path``."""
    return path.suffix.lower() in IMAGE_EXTENSIONS or has_dicom_preamble(path)


def read_image(path: str | Path) -> np.ndarray:
    """Decode one image file into the working format.

    Raises:
        UnreadableImage: the file is empty, corrupt, not an image, a volume, or has no pixels.
        MissingDependencyError: a DICOM file was found and pydicom is not installed.
    """
    path = Path(path)
    try:
        # Opening the file first tells "cannot be read" (permissions, a folder) apart from
        # "corrupt", and its first bytes choose the decoder along with the extension.
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise UnreadableImage(f"cannot open: {exc.strerror or exc}") from None
    if not head:
        raise UnreadableImage("empty file (0 bytes)")
    suffix = path.suffix.lower()
    try:
        if suffix in DICOM_EXTENSIONS or (suffix not in PILLOW_EXTENSIONS | TIFF_EXTENSIONS and _is_dicom(head)):
            return _read_dicom(path, preamble=_is_dicom(head))
        if suffix in TIFF_EXTENSIONS and head[:4] in TIFF_MAGIC:
            return _read_tiff(path)
        # Pillow identifies the format from the content, so a PNG saved as ".tif" still reads.
        return _read_pillow(path)
    except ImageFormatError as exc:
        raise UnreadableImage(_strip_where(str(exc), path)) from None


def _strip_where(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with quiet_decoding("PIL"), warnings.catch_warnings():
            # Above Image.MAX_IMAGE_PIXELS Pillow only warns; treat that as a refusal too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                frames = getattr(img, "n_frames", 1)
                if frames > 1:
                    raise UnreadableImage(
                        f"{frames} frames: privaudit audits 2D images only for now"
                    )
                img.load()
                arr = _pillow_array(img)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not a recognised image file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data as OSError/SyntaxError/ValueError.
        raise UnreadableImage(f"corrupt or truncated image ({exc})") from None
    return to_working(arr, where=str(path))


def _pillow_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")
    return np.asarray(img)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with quiet_decoding("tifffile"), tifffile.TiffFile(path) as tif:
            try:
                page = tif.pages.first
            except IndexError:
                raise UnreadableImage("TIFF file holds no image") from None
            # Only the first two pages are ever looked at: counting them all (len(pages),
            # tif.series) follows the chain of page offsets, which a damaged or hostile file can
            # make circular, and tifffile then loops for ever (found by benchmarks/fuzz_readers.py).
            try:
                tif.pages[1]
            except IndexError:
                pass
            else:
                raise UnreadableImage("TIFF holds more than one page (an image stack): privaudit audits 2D images only for now")
            # tifffile names the axes: Y and X, plus S for the samples of one pixel (RGB,
            # contiguous "YXS" or planar "SYX"). Anything else (Z, T, Q, ...) is a stack.
            if page.axes not in ("YX", "YXS", "SYX"):
                raise UnreadableImage(
                    f"TIFF holds an image of shape {tuple(page.shape)} (axes {page.axes}): "
                    "privaudit audits 2D images only for now"
                )
            axes = dict(zip(page.axes, page.shape))
            _check_size(axes["Y"] * axes["X"])
            arr = page.asarray()
    except UnreadableImage:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files and missing codecs
        raise UnreadableImage(f"corrupt or unsupported TIFF ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB
    return to_working(arr, where=str(path))


def _read_dicom(path: Path, *, preamble: bool = True) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError:
        raise MissingDependencyError("pydicom", extra="dicom", needed_for="reading DICOM files") from None

    with quiet_decoding("pydicom"):
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception as exc:
            raise UnreadableImage(f"not a readable DICOM file ({type(exc).__name__})") from None
        try:
            arr = _dicom_pixels(ds, preamble=preamble, modality_lut=apply_modality_lut)
        except (UnreadableImage, ImageFormatError):
            raise
        except Exception as exc:
            # pydicom parses elements lazily: an attribute with an unknown VR or a malformed value
            # raises when read (found by benchmarks/fuzz_readers.py). Only the error's type is
            # shown: its text could quote a header value.
            raise UnreadableImage(f"DICOM attributes cannot be interpreted ({type(exc).__name__})") from None
    return to_working(np.asarray(arr), where=str(path), minmax=True)


def _dicom_pixels(ds: Any, *, preamble: bool, modality_lut: Any) -> np.ndarray:
    if "PixelData" not in ds:
        # force=True parses any bytes; without the preamble and without any image, patient or
        # study attribute, the file is not DICOM at all.
        if not preamble and not any(tag.group in (0x0008, 0x0010, 0x0020, 0x0028) for tag in ds.keys()):
            raise UnreadableImage("not a recognised DICOM file")
        raise UnreadableImage("DICOM file without pixel data")
    frames = _int_or(getattr(ds, "NumberOfFrames", 1), 1)
    if frames > 1:
        raise UnreadableImage(f"multi-frame DICOM ({frames} frames): privaudit audits 2D images only for now")
    _check_size(_int_or(getattr(ds, "Rows", 0), 0) * _int_or(getattr(ds, "Columns", 0), 0))
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing decoder plugins, truncated pixel data, bad attributes
        raise UnreadableImage(_pixel_error(ds, exc)) from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if arr.ndim == 2:
        arr = modality_lut(arr, ds)  # rescale slope/intercept, or a modality LUT
        if photometric == "MONOCHROME1":  # low values are bright: invert
            arr = arr.max() + arr.min() - arr
    elif arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        raise UnreadableImage(f"DICOM pixel data of shape {arr.shape}: privaudit audits 2D images only for now")
    return np.asarray(arr)


def _check_size(n_pixels: int) -> None:
    """Refuse an image larger than Pillow's decompression-bomb limit before decoding it.

    Pillow enforces ``Image.MAX_IMAGE_PIXELS`` for PNG, JPEG and BMP; TIFF and DICOM headers can
    declare just as many pixels over a few bytes of compressed data, so the same limit (one
    setting, Pillow's) applies to them too.
    """
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and n_pixels > limit:
        raise UnreadableImage(
            f"refused as a possible decompression bomb (Image size ({n_pixels} pixels) exceeds limit of {limit} pixels)"
        )


def _int_or(value: object, default: int) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def _pixel_error(ds: object, exc: Exception) -> str:
    """A one-line reason naming the compression and, when it is the cause, the missing decoder."""
    try:  # the UID can be anything in a damaged file: not even a transfer syntax
        syntax = ds.file_meta.TransferSyntaxUID  # type: ignore[attr-defined]
        compressed = bool(syntax.is_transfer_syntax and syntax.is_compressed)
    except Exception:
        compressed = False
    lines = [line.strip(" \t-") for line in str(exc).strip().splitlines() if line.strip()]
    detail = "; ".join(lines[1:]) if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
    if compressed:
        what = f"compressed DICOM ({syntax.name})"
        if "missing dependencies" in str(exc):
            return f"{what} cannot be decoded: no decoder for it is installed (options: {detail[:200]})"
        return f"{what} cannot be decoded ({detail[:200]})"
    return f"DICOM pixel data cannot be decoded ({_first_line(exc)})"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
