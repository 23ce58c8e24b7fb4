"""Stage timings and peak memory of one audit, for ``results.json``'s ``run`` and the report.

Wall time comes from :func:`time.perf_counter`. Peak memory is the process's resident set
size high-water mark. On Linux the mark is reset at the start of every stage (writing ``5`` to
``/proc/self/clear_refs``) and read at its end (``VmHWM`` in ``/proc/self/status``), so each
stage reports the peak reached *during that stage*. Where that is not possible (other systems,
or a kernel that refuses the reset) each stage reports the process's peak *so far* from
:func:`resource.getrusage`, which never decreases; :attr:`StageClock.peak_scope` says which.

Written here rather than taken from a library: psutil reads the same ``/proc`` files but cannot
reset the high-water mark, and memory profilers (tracemalloc, memray) miss memory allocated by
FAISS and BLAS or cost far more than the stages they measure.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["StageClock", "StageTiming"]


@dataclass(frozen=True)
class StageTiming:
    """One stage of an audit.

    Attributes:
        name: the stage, e.g. ``"load"``, ``"embed pixels"``, ``"check copies"``.
        seconds: its wall time.
        peak_rss_mb: the resident-memory peak, in MiB (see :attr:`StageClock.peak_scope`);
            ``None`` where the system reports none.
    """

    name: str
    seconds: float
    peak_rss_mb: float | None


def _read_hwm_kib() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


class StageClock:
    """Times named stages and records their memory peaks.

    Example:
        >>> clock = StageClock()
        >>> with clock.stage("load"):
        ...     data = list(range(1000))
        >>> [s.name for s in clock.stages], clock.stages[0].seconds >= 0
        (['load'], True)
    """

    def __init__(self) -> None:
        self.stages: list[StageTiming] = []
        # Per stage only when the reset works and the mark can be read back.
        self.peak_scope = "stage" if _read_hwm_kib() is not None and _reset_hwm() else "process"
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name`` (recorded even if the block raises)."""
        if self.peak_scope == "stage":
            _reset_hwm()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages.append(StageTiming(name, time.perf_counter() - t0, self.peak_mib()))

    def peak_mib(self) -> float | None:
        """The current peak: since the last stage started (``"stage"`` scope) or since the
        process started (``"process"``)."""
        if self.peak_scope == "stage":
            kib = _read_hwm_kib()
            return None if kib is None else kib / 1024
        return _maxrss_mib()

    @property
    def total_seconds(self) -> float:
        """Wall time since the clock was made."""
        return time.perf_counter() - self._started

    def process_peak_mib(self) -> float | None:
        """The highest stage peak (every stage's peak in ``"stage"`` scope is a lower bound of the
        process's, so their maximum is the process peak over the timed stages)."""
        peaks = [s.peak_rss_mb for s in self.stages if s.peak_rss_mb is not None]
        return max(peaks) if peaks else None
