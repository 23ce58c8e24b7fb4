"""Policy: warn/fail levels per metric -> a pass/warn/fail verdict with one reason per rule.

A policy is a TOML file (``--policy``); the commented default ships in
``privaudit/policies/default.toml`` and is used when none is given::

    version = 1
    not_assessed = "fail"          # what a metric that could not be measured does

    [copies.excess_flag_rate]      # [<check>.<metric>]
    warn = 0.01                    # warn when the value is above this (below, for *_score)
    fail = 0.02

A metric is compared in the direction its check declares: ``*_rate`` and ``*_risk`` metrics fail
*above* their level, ``*_score`` metrics fail *below* it. A value exactly at a level does not
trip it. A metric that could not be computed (check not run, not assessed, NaN) is
"not assessed": the rule then fails, or warns if the policy says ``not_assessed = "warn"``;
it never passes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

from privaudit._util import did_you_mean
from privaudit.checks.base import CheckResult, CheckStatus, Direction, Metric, metric_catalog
from privaudit.config import read_toml
from privaudit.errors import ConfigError

POLICY_VERSION = 1
_RULE_KEYS = ("warn", "fail", "not_assessed")


class Status(str, Enum):
    """Outcome of one rule, and of the whole verdict (which is never ``not_assessed``)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    NOT_ASSESSED = "not_assessed"


_SEVERITY = {Status.PASS: 0, Status.WARN: 1, Status.FAIL: 2}


@dataclass(frozen=True)
class Rule:
    """Warn/fail levels on one metric."""

    metric: str
    direction: Direction
    warn: float | None
    fail: float | None
    not_assessed: Status

    def trips(self, value: float, level: float | None) -> bool:
        """Whether ``value`` is strictly beyond ``level`` in the bad direction."""
        if level is None:
            return False
        return value > level if self.direction is Direction.HIGHER_IS_WORSE else value < level


@dataclass(frozen=True)
class RuleOutcome:
    """What one rule said, and why, in words."""

    metric: str
    status: Status
    counts_as: Status
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int | None
    warn: float | None
    fail: float | None
    message: str


@dataclass(frozen=True)
class Verdict:
    """The gate's decision.

    Attributes:
        status: ``pass``, ``warn`` or ``fail``: the worst rule, counting "not assessed" rules as
            the policy says.
        reasons: one outcome per rule, in policy order.
        n_not_assessed: rules whose metric could not be measured.
        policy_source: the policy file, or ``"default"``.
        policy_sha256: hash of the policy file's bytes.
    """

    status: Status
    reasons: tuple[RuleOutcome, ...]
    n_not_assessed: int
    policy_source: str
    policy_sha256: str


@dataclass(frozen=True)
class Policy:
    """A parsed policy (see the module docstring).

    Example:
        >>> policy = Policy.default()
        >>> [r.metric for r in policy.rules]
        ['copies.excess_flag_rate', 'metadata.identifier_match_rate', 'metadata.identifying_field_rate']
    """

    rules: tuple[Rule, ...]
    not_assessed: Status
    source: str
    sha256: str

    @classmethod
    def default(cls) -> Policy:
        """The policy that ships with privaudit."""
        text = default_policy_text()
        return cls.from_dict(_parse_text(text, "default policy"), source="default", sha256=_sha(text.encode()))

    @classmethod
    def from_toml(cls, path: str | Path) -> Policy:
        """Load and validate a policy file."""
        data = read_toml(path, what="policy file")
        return cls.from_dict(data, source=str(path), sha256=_sha(Path(path).read_bytes()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>", sha256: str = "") -> Policy:
        """Validate a parsed policy: known checks and metrics, known keys, numbers, order."""
        where = f"policy {source}"
        catalog = metric_catalog()
        checks = sorted({name.split(".")[0] for name in catalog})
        version = data.get("version", POLICY_VERSION)
        if version != POLICY_VERSION:
            raise ConfigError(f"{where}: version {version!r} is not supported; expected {POLICY_VERSION}")
        default_na = _not_assessed(data.get("not_assessed", "fail"), f"{where}: not_assessed")
        rules = []
        for check, table in data.items():
            if check in ("version", "not_assessed"):
                continue
            if check not in checks:
                known = ["version", "not_assessed", *checks]
                raise ConfigError(f"{where}: unknown key {check!r}{did_you_mean(check, known)}; expected a check name ({', '.join(checks)}), 'version' or 'not_assessed'")
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where}: [{check}] must be a table of metrics")
            metrics = sorted(m.split(".", 1)[1] for m in catalog if m.startswith(check + "."))
            for metric, levels in table.items():
                name = f"{check}.{metric}"
                if name not in catalog:
                    raise ConfigError(f"{where}: check {check!r} has no metric {metric!r}{did_you_mean(metric, metrics)}; metrics: {', '.join(metrics)}")
                rules.append(_rule(name, catalog[name].direction, levels, default_na, f"{where}: [{name}]"))
        if not rules:
            raise ConfigError(f"{where}: no rules; a policy needs at least one [<check>.<metric>] table")
        return cls(rules=tuple(rules), not_assessed=default_na, source=source, sha256=sha256)

    def evaluate(self, checks: Mapping[str, CheckResult]) -> Verdict:
        """Decide the verdict from check results."""
        return self.evaluate_metrics(metrics_of(checks))

    def evaluate_metrics(self, metrics: Mapping[str, Metric | str]) -> Verdict:
        """Decide from ``{"check.metric": Metric}``; a string value is the reason it is missing."""
        outcomes = [self._judge(rule, metrics.get(rule.metric, f"check '{rule.metric.split('.')[0]}' was not run")) for rule in self.rules]
        worst = max((o.counts_as for o in outcomes), key=_SEVERITY.__getitem__)
        return Verdict(
            status=worst,
            reasons=tuple(outcomes),
            n_not_assessed=sum(o.status is Status.NOT_ASSESSED for o in outcomes),
            policy_source=self.source,
            policy_sha256=self.sha256,
        )

    def _judge(self, rule: Rule, metric: Metric | str) -> RuleOutcome:
        levels = dict(warn=rule.warn, fail=rule.fail)
        if isinstance(metric, str) or not metric.assessed:
            why = metric if isinstance(metric, str) else "the value could not be computed"
            return RuleOutcome(
                rule.metric, Status.NOT_ASSESSED, rule.not_assessed, None, None, None,
                None if isinstance(metric, str) else metric.n, **levels,
                message=f"{rule.metric}: not assessed ({why}); counts as {rule.not_assessed.value}",
            )
        value = float(metric.value)  # type: ignore[arg-type]
        if rule.trips(value, rule.fail):
            status, level, word = Status.FAIL, rule.fail, "fail"
        elif rule.trips(value, rule.warn):
            status, level, word = Status.WARN, rule.warn, "warn"
        else:
            status = Status.PASS
            level = rule.warn if rule.warn is not None else rule.fail
            word = "warn" if rule.warn is not None else "fail"
        side = "above" if rule.direction is Direction.HIGHER_IS_WORSE else "below"
        relation = f"{side} the {word} level" if status is not Status.PASS else f"not {side} the {word} level"
        interval = ""
        if metric.ci_low is not None and metric.ci_high is not None:
            interval = f" (95% CI {_fmt(metric.ci_low)} to {_fmt(metric.ci_high)})"
        return RuleOutcome(
            rule.metric, status, status, value, metric.ci_low, metric.ci_high, metric.n, **levels,
            message=f"{rule.metric} = {_fmt(value)}{interval}, n = {metric.n}: {relation} {_fmt(level)}: {status.value}",
        )


def metrics_of(checks: Mapping[str, CheckResult]) -> dict[str, Metric | str]:
    """Flatten check results into ``{"check.metric": Metric}`` (a reason string when not assessed)."""
    out: dict[str, Metric | str] = {}
    for name, result in checks.items():
        for metric, value in result.metrics.items():
            if result.status is CheckStatus.NOT_ASSESSED:
                out[f"{name}.{metric}"] = f"check not assessed: {result.reason}"
            else:
                out[f"{name}.{metric}"] = value
    return out


def default_policy_text() -> str:
    """The commented default policy, as shipped."""
    return resources.files("privaudit").joinpath("policies/default.toml").read_text(encoding="utf-8")


def _parse_text(text: str, what: str) -> dict[str, Any]:
    from privaudit.config import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # pragma: no cover - the shipped file is tested
        raise ConfigError(f"{what} is not valid TOML: {exc}") from None


def _rule(name: str, direction: Direction, levels: Any, default_na: Status, where: str) -> Rule:
    if not isinstance(levels, Mapping):
        raise ConfigError(f"{where} must be a table with 'warn' and/or 'fail'")
    for key in levels:
        if key not in _RULE_KEYS:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, _RULE_KEYS)}; known keys: {', '.join(_RULE_KEYS)}")
    values: dict[str, float | None] = {}
    for key in ("warn", "fail"):
        v = levels.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ConfigError(f"{where}: {key} must be a number; got {type(v).__name__} {v!r}")
        values[key] = None if v is None else float(v)
    warn, fail = values["warn"], values["fail"]
    if warn is None and fail is None:
        raise ConfigError(f"{where} sets neither 'warn' nor 'fail'")
    if warn is not None and fail is not None:
        worse_first = fail < warn if direction is Direction.HIGHER_IS_WORSE else fail > warn
        if worse_first:
            order = "at or above" if direction is Direction.HIGHER_IS_WORSE else "at or below"
            raise ConfigError(f"{where}: fail ({fail:g}) must be {order} warn ({warn:g}) for a metric that is {direction.value.replace('_', ' ')}")
    na = _not_assessed(levels.get("not_assessed", default_na.value), f"{where}: not_assessed")
    return Rule(name, direction, warn, fail, na)


def _not_assessed(value: Any, where: str) -> Status:
    allowed = ("fail", "warn")
    if value not in allowed:
        raise ConfigError(f"{where} must be \"fail\" or \"warn\"{did_you_mean(str(value), allowed)}; got {value!r} (a metric that was not measured never passes)")
    return Status(value)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}"
