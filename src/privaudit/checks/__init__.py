"""Checks stage: one module per check, all with one signature (see :mod:`.base`)."""

from privaudit.checks import copies as _copies  # noqa: F401  (registers "copies")
from privaudit.checks import membership as _membership  # noqa: F401  (registers "membership")
from privaudit.checks import metadata as _metadata  # noqa: F401  (registers "metadata")
from privaudit.checks import quality as _quality  # noqa: F401  (registers "quality")
from privaudit.checks import reid as _reid  # noqa: F401  (registers "reid")
from privaudit.checks.base import (
    CHECKS,
    AuditContext,
    Check,
    CheckResult,
    CheckStatus,
    Direction,
    EmbeddedSets,
    Metric,
    MetricSpec,
    metric_catalog,
)

__all__ = [
    "CHECKS",
    "AuditContext",
    "Check",
    "CheckResult",
    "CheckStatus",
    "Direction",
    "EmbeddedSets",
    "Metric",
    "MetricSpec",
    "metric_catalog",
]
