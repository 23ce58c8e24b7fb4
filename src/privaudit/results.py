"""The versioned audit result: frozen dataclasses -> ``results.json``.

The JSON Schema of the serialised form ships as ``privaudit/schemas/results.schema.json``
(:func:`results_schema`); every field is described there. Bump :data:`SCHEMA_VERSION`'s major
part when a field is removed or changes meaning, its minor part when fields are added.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from privaudit._util import dumps_json, to_jsonable
from privaudit._version import __version__
from privaudit.checks.base import CheckResult
from privaudit.cluster import ClusterInfo
from privaudit.data.imageset import InputSummary
from privaudit.embed.base import EmbedderInfo
from privaudit.errors import InputError
from privaudit.patients import PatientRow
from privaudit.policy import Verdict
from privaudit.search import SearchTiming
from privaudit.stages import StageTiming

SCHEMA_VERSION = "2.6.0"  # 2.6: copies.aligned.weight; 2.5: copies.aligned.aspect, .core, .crop_core; 2.4: copies.aligned.smooth; 2.3: run.searches (each kNN search of the checks, its shape and seconds); 2.2: quality.n_holdout_compared (quality.max_compared); 2.1: run.stages, run.seconds, run.peak_rss_mb, run.peak_scope, run.cluster, copies.search (index and its measured agreement)


@dataclass(frozen=True)
class EmbeddingCount:
    """Images of one embedder taken from the cache, and images embedded afresh."""

    from_cache: int
    embedded: int


@dataclass(frozen=True)
class RunInfo:
    """Facts about this run that do not change any figure (they differ between two runs of
    the same audit, like ``created_at``)."""

    cache_dir: str | None
    embedded: Mapping[str, EmbeddingCount]
    stages: tuple[StageTiming, ...] = ()
    searches: tuple[SearchTiming, ...] = ()
    peak_scope: str | None = None
    seconds: float | None = None
    peak_rss_mb: float | None = None
    cluster: ClusterInfo | None = None


@dataclass(frozen=True)
class AuditResult:
    """Everything an audit measured and decided.

    Attributes:
        schema_version: version of the ``results.json`` layout.
        privaudit_version: the version that produced it.
        created_at: UTC time the audit finished (the only field that differs between two runs
            of the same audit).
        seed: the audit seed.
        config: the full configuration, defaults filled in.
        environment: versions of Python and the numeric libraries.
        inputs: one summary per input role (``train``, ``synthetic``, ``holdout``).
        embedders: the embedding spaces the checks ran in, the primary one first.
        checks: one result per check, keyed by name.
        verdict: the policy's decision.
        warnings: audit-level caveats (checks add their own).
        run: facts about this run that change no figure (cache use).
        pseudonymised: whether identifiers were replaced (``--no-images``; see
            :mod:`privaudit.redact`). Always ``False`` on the object an audit returns.
        patients: the per-patient view (:func:`privaudit.patients.patient_view`): copies,
            membership and re-identification joined per training patient.
    """

    schema_version: str
    privaudit_version: str
    created_at: str
    seed: int
    config: Mapping[str, Any]
    environment: Mapping[str, str]
    inputs: Mapping[str, InputSummary]
    embedders: tuple[EmbedderInfo, ...]
    checks: Mapping[str, CheckResult]
    verdict: Verdict
    warnings: tuple[str, ...] = ()
    run: RunInfo | None = None
    pseudonymised: bool = False
    patients: tuple[PatientRow, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN becomes ``null``)."""
        return to_jsonable(self)

    def to_json(self) -> str:
        """The ``results.json`` text."""
        return dumps_json(self)


def utc_now() -> str:
    """The current UTC time as ISO 8601 with seconds."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def environment() -> dict[str, str]:
    """Versions that can change numbers: Python, numpy, torch, faiss."""
    import faiss
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "platform": platform.machine(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "faiss": faiss.__version__,
    }


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``results.json`` and validate it against the schema; one-line errors.

    Files of an older minor schema version validate (minor versions only add optional fields);
    a newer minor or another major version is refused with the version it needs.

    Raises:
        InputError: missing, unreadable, not JSON, not a privaudit result, or invalid.
    """
    import jsonschema

    p = Path(path)
    what = f"results file {p}"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} not found") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a folder; give the results.json inside it") from None
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{what} cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict) or "schema_version" not in data or "verdict" not in data:
        raise InputError(f"{what} is not a privaudit results.json (no schema_version and verdict)")
    version = str(data["schema_version"])
    ours = [int(x) for x in SCHEMA_VERSION.split(".")]
    try:
        theirs = [int(x) for x in version.split(".")]
    except ValueError:
        raise InputError(f"{what}: schema_version {version!r} is not a version number") from None
    if theirs[0] != ours[0] or theirs[1] > ours[1]:
        raise InputError(
            f"{what} uses results schema {version}; this privaudit ({__version__}) reads "
            f"{ours[0]}.0 to {ours[0]}.{ours[1]}: use the privaudit version that wrote it ({data.get('privaudit_version', 'unknown')})"
        )
    validator = jsonschema.Draft202012Validator(results_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(x) for x in error.absolute_path) or "the top level"
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:200] + "..."
        raise InputError(f"{what} does not match the results schema at {where}: {message}")
    return data


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``."""
    text = resources.files("privaudit").joinpath("schemas/results.schema.json").read_text(encoding="utf-8")
    return json.loads(text)
