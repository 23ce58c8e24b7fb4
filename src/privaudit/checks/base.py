"""What every check shares: the prepared context, the result types and the registry.

A check takes an :class:`AuditContext` (image sets, their embeddings, shared neighbour searches
and a seeded random stream) and its own options, and returns a frozen :class:`CheckResult`. It
never prints, renders, or decides pass/fail: the verdict belongs to :mod:`privaudit.policy`.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch

from privaudit.data.imageset import ImageSet
from privaudit.embed.base import EmbedderInfo
from privaudit.registry import Registry
from privaudit.search import Neighbors, knn


class Direction(str, Enum):
    """Which way a metric is read. ``*_rate`` / ``*_risk`` metrics are higher-is-worse and
    ``*_score`` metrics higher-is-better, so the name says it too."""

    HIGHER_IS_WORSE = "higher_is_worse"
    HIGHER_IS_BETTER = "higher_is_better"


@dataclass(frozen=True)
class MetricSpec:
    """A metric a check reports and a policy can set levels on."""

    name: str
    direction: Direction
    description: str


@dataclass(frozen=True)
class Metric:
    """One figure with its uncertainty.

    Attributes:
        value: the estimate; ``None`` when it could not be assessed (never read as a pass).
        n: the sample size the estimate rests on.
        ci_low: lower end of its 95 % interval (``None`` when there is none).
        ci_high: upper end of its 95 % interval.
        direction: how to read it.
        floor: for a rate, the smallest non-zero value the method can produce on this data
            (e.g. the fewest copies BH can flag, divided by n); ``None`` when there is no such
            limit. A policy level below the floor cannot be checked: the rule is then "not
            assessed" unless the value is above the level anyway.
    """

    value: float | None
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    direction: Direction = Direction.HIGHER_IS_WORSE
    floor: float | None = None

    @property
    def assessed(self) -> bool:
        """True when the value is a finite number."""
        return self.value is not None and math.isfinite(self.value)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metric:
        """The metric from its ``results.json`` form (``null`` values read as NaN)."""
        value = data.get("value")
        return cls(
            value=math.nan if value is None else float(value),
            n=int(data.get("n", 0)),
            ci_low=data.get("ci_low"),
            ci_high=data.get("ci_high"),
            direction=Direction(data.get("direction", Direction.HIGHER_IS_WORSE.value)),
            floor=data.get("floor"),
        )


class CheckStatus(str, Enum):
    """Whether a check could measure what it is for."""

    ASSESSED = "assessed"
    NOT_ASSESSED = "not_assessed"


@dataclass(frozen=True)
class CheckResult:
    """Fields every check result has; each check subclasses it with its details.

    Attributes:
        check: the check's name.
        status: whether it could measure what it is for.
        reason: why not, when it could not.
        metrics: the figures a policy can set levels on.
        warnings: caveats a reader must see next to the figures.
        summary: one or two plain-language sentences a non-specialist can read aloud; the
            terminal summary and the report use it.
    """

    check: str
    status: CheckStatus
    reason: str | None
    metrics: Mapping[str, Metric]
    warnings: tuple[str, ...] = ()
    summary: str = ""


@dataclass(frozen=True, eq=False)
class EmbeddedSets:
    """The embeddings of each input set in one embedder's space (unit float32 rows).

    ``embedder`` is the fitted embedder itself, for checks that must embed images of their own
    (the copies check's positive control); it is never serialised.
    """

    info: EmbedderInfo
    near_duplicate_similarity: float
    train: np.ndarray
    synthetic: np.ndarray
    holdout: np.ndarray | None
    embedder: Any = field(default=None, repr=False)

    def embed(self, images: list) -> np.ndarray:
        """Embed extra images in this space (as the audit's sets were)."""
        if self.embedder is None:
            raise RuntimeError(f"no embedder attached to the {self.info.name} space")
        return self.embedder.embed(images)

    def of(self, role: str) -> np.ndarray:
        """The embeddings of ``"train"``, ``"synthetic"`` or ``"holdout"``."""
        value = getattr(self, role)
        if value is None:
            raise KeyError(f"no {role} set in this audit")
        return value


@dataclass(eq=False)
class AuditContext:
    """Everything a check needs, prepared once by the orchestrator.

    Attributes:
        train, synthetic, holdout: the image sets (``holdout`` may be ``None``).
        spaces: the embeddings of every set in each embedding space, keyed by embedder spec,
            the audit's primary space first.
        configured: the embedders the audit was configured with (``spaces`` may hold more,
            for checks whose options name another); empty means all of ``spaces``.
        seed: the audit seed (use :meth:`rng` and :meth:`torch_generator`, not the seed).

    Neighbour searches go through :meth:`neighbors`, which remembers them, so that checks that
    need the same search share one.
    """

    train: ImageSet
    synthetic: ImageSet
    holdout: ImageSet | None
    spaces: Mapping[str, EmbeddedSets]
    seed: int
    configured: tuple[str, ...] = ()
    _knn_cache: dict[tuple[str, str, str], Neighbors] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.configured:
            self.configured = tuple(self.spaces)

    @property
    def primary(self) -> str:
        """The spec of the primary embedder (e.g. ``"pixels"``, ``"torchscript:/m.pt"``)."""
        return next(iter(self.spaces))

    @property
    def space(self) -> EmbeddedSets:
        """The primary embedding space (the first configured embedder)."""
        return next(iter(self.spaces.values()))

    def space_of(self, embedder: str | None = None) -> EmbeddedSets:
        """The space of ``embedder``, or the primary one."""
        return self.space if embedder is None else self.spaces[embedder]

    def images(self, role: str) -> ImageSet:
        """The image set of ``"train"``, ``"synthetic"`` or ``"holdout"``."""
        value = getattr(self, role)
        if value is None:
            raise KeyError(f"no {role} set in this audit")
        return value

    def neighbors(self, query: str, base: str, *, k: int = 1, embedder: str | None = None) -> Neighbors:
        """k nearest ``base`` images of every ``query`` image (roles), in the space of
        ``embedder`` (default: primary), computed at most once per audit."""
        space = self.space_of(embedder)
        key = (embedder or self.primary, query, base)
        cached = self._knn_cache.get(key)
        if cached is None or cached.k < k:
            cached = knn(space.of(query), space.of(base), k=k)
            self._knn_cache[key] = cached
        return cached.first(k)

    def rng(self, purpose: str) -> np.random.Generator:
        """A random stream for ``purpose``, derived from the audit seed.

        Streams are keyed by name, so adding a check never changes another check's draws.
        """
        return np.random.default_rng(self._seed_sequence(purpose))

    def torch_generator(self, purpose: str) -> torch.Generator:
        """A seeded ``torch.Generator`` for ``purpose`` (see :meth:`rng`)."""
        gen = torch.Generator()
        gen.manual_seed(int(self._seed_sequence(purpose).generate_state(1, np.uint64)[0] >> np.uint64(1)))
        return gen

    def _seed_sequence(self, purpose: str) -> np.random.SeedSequence:
        key = int.from_bytes(hashlib.sha256(purpose.encode()).digest()[:8], "little")
        return np.random.SeedSequence([self.seed, key])


@dataclass(frozen=True)
class Reviewable:
    """What a human reviewer can waive in a check's result (see :mod:`privaudit.waivers`).

    Attributes:
        field: the list of flagged items in the result's dict form, e.g. ``"flagged"``.
        keys: the fields that identify one item, e.g. ``("synthetic_id", "train_id")``; a waiver
            names all of them.
        decisions: the decisions a reviewer can record, each with its meaning in words.
        score: a field recorded in review worksheets so that a waiver only applies to the same
            pair with the same score (``None``: match on the keys alone).
    """

    field: str
    keys: tuple[str, ...]
    decisions: Mapping[str, str]
    score: str | None = None


class Check(ABC):
    """A check: a name, an options dataclass, the metrics it reports, and :meth:`run`."""

    name: ClassVar[str]
    title: ClassVar[str]
    #: A frozen dataclass of the check's options, all with defaults.
    Options: ClassVar[type]
    metrics: ClassVar[Mapping[str, MetricSpec]]
    #: Input roles the check cannot run without.
    requires: ClassVar[tuple[str, ...]] = ("train", "synthetic")

    def spaces(self, options: Any, configured: tuple[str, ...]) -> tuple[str, ...]:
        """The embedding spaces the check needs, given the audit's configured ones.

        By default the primary space; a check whose options name an embedder returns that one.
        The orchestrator embeds every set once in the union of what the checks need.
        """
        return configured[:1]

    def spaces_for(self, options: Any, configured: tuple[str, ...], sizes: Mapping[str, int]) -> tuple[str, ...]:
        """The spaces the check needs for inputs of these ``sizes`` (images per role:
        ``train``, ``synthetic`` and, when given, ``holdout``), once they are loaded.

        By default :meth:`spaces`; a check whose choice depends on the size of its inputs
        overrides this, and :meth:`spaces` then returns every space it may need.
        """
        return self.spaces(options, configured)

    @abstractmethod
    def run(self, ctx: AuditContext, options: Any) -> CheckResult:
        """Measure, and return a result; never print, render or decide pass/fail."""

    #: What a reviewer can waive, or ``None`` when the check has nothing to review.
    reviewable: ClassVar[Reviewable | None] = None

    @classmethod
    def metrics_after_review(cls, result: Mapping[str, Any], decisions: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Metric]:
        """The metrics the policy judges once reviewed items are taken into account.

        Args:
            result: the check's result in its ``results.json`` form (so ``privaudit gate`` can
                call it without recomputing).
            decisions: per flagged item that a waiver matched, the reviewer's decision and the
                item (its ``results.json`` form, e.g. a flagged pair with its p-value).

        Only checks with :attr:`reviewable` implement it; it must return every metric in
        :attr:`metrics`, equal to the unreviewed ones when ``decisions`` is empty.
        """
        raise NotImplementedError(f"check {cls.name!r} has nothing a reviewer can waive")


CHECKS: Registry[type[Check]] = Registry("check", entry_point_group="privaudit.checks")


def metric_catalog() -> dict[str, MetricSpec]:
    """Every metric of every registered check, keyed ``"<check>.<metric>"``."""
    return {f"{name}.{m}": spec for name in CHECKS.names() for m, spec in CHECKS.get(name).metrics.items()}
