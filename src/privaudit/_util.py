"""Small helpers shared across stages: suggestions, JSON conversion, atomic writes."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import hashlib
import json
import math
import os
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy values, tuples and paths into plain JSON values.

    Non-finite floats become ``None``: JSON has no NaN, and a missing figure must read as
    "not assessed", never as a number.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def dumps_json(obj: Any) -> str:
    """Serialise to stable, human-readable JSON (sorted keys are *not* used: field order is the
    documented order of the result)."""
    return json.dumps(to_jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader never sees a half-written file, and an interrupted write leaves the previous file
    (or none) in place. The file is created readable by its owner only (0600): outputs can hold
    patient images and identifiers.
    """
    target = Path(path)
    tmp = stage_bytes(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def stage_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a new temporary file next to ``path`` (0600, fsynced) and return its path.

    The caller moves it into place with ``os.replace`` (see :func:`replace_all`) or removes it.
    If writing fails or is interrupted, the temporary file is removed before the error propagates.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def replace_all(staged: Iterable[tuple[Path, Path]]) -> None:
    """Move each staged ``(temporary, target)`` file into place, with SIGINT/SIGTERM held back.

    The renames take microseconds; holding the signals until all are done means that an
    interruption leaves either all the old files or all the new ones, never a mix.
    """
    with deferred_signals():
        for tmp, target in staged:
            os.replace(tmp, target)


@contextlib.contextmanager
def deferred_signals(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold back ``signums`` inside the block and deliver them, to the previous handlers, after it.

    Only in the main thread (the only one that can set handlers); elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in signums:
        if signal.getsignal(signum) is None:  # a handler installed outside Python: leave it be
            continue
        previous[signum] = signal.signal(signum, lambda s, _frame: received.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()
