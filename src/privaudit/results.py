"""The versioned audit result: frozen dataclasses -> ``results.json``.

The JSON Schema of the serialised form ships as ``privaudit/schemas/results.schema.json``
(:func:`results_schema`); every field is described there. Bump :data:`SCHEMA_VERSION`'s major
part when a field is removed or changes meaning, its minor part when fields are added.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Any

from privaudit._util import dumps_json, to_jsonable
from privaudit.checks.base import CheckResult
from privaudit.data.imageset import InputSummary
from privaudit.embed.base import EmbedderInfo
from privaudit.policy import Verdict

SCHEMA_VERSION = "1.1.0"  # 1.1: the quality check


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


def results_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``results.json``."""
    text = resources.files("privaudit").joinpath("schemas/results.schema.json").read_text(encoding="utf-8")
    return json.loads(text)
