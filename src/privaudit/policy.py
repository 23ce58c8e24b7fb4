"""Policy: warn/fail levels per metric -> a pass/warn/fail verdict with one reason per rule.

A policy is a TOML file (``--policy``); the commented default ships in
``privaudit/policies/default.toml`` and is used when none is given::

    version = 1
    not_assessed = "fail"          # what a metric that could not be measured does

    [copies.copy_rate]      # [<check>.<metric>]
    warn = 0.01                    # warn when the value is above this (below, for *_score)
    fail = 0.02

A metric is compared in the direction its check declares: ``*_rate`` and ``*_risk`` metrics fail
*above* their level, ``*_score`` metrics fail *below* it. A value exactly at a level does not
trip it. A metric that could not be computed (check not run, not assessed, NaN) is
"not assessed": the rule then fails, or warns if the policy says ``not_assessed = "warn"``;
it never passes.

Two more keys per rule:

* ``use = "ci_high"`` (for higher-is-worse metrics; ``"ci_low"`` for higher-is-better ones)
  compares the pessimistic end of the metric's 95 % interval instead of the estimate, so a pass
  reads "we are 95 % sure it is below the level" (one-sided 97.5 %, from the two-sided
  interval). A metric without an interval is then not assessed. The optimistic end is refused:
  it would pass sets whose interval reaches past the level.
* ``min_n = 100``: a metric resting on fewer than ``min_n`` samples is not assessed.
* ``only_if_run = true``: the rule applies only when its check was run. The default policy sets
  it on the opt-in checks (``membership``, ``reid``) so that an audit that did not select them
  is judged on what it ran; a check that *was* run but could not assess still counts as not
  assessed. Without the key (the default), a rule whose check was not run is not assessed.

Waivers (:mod:`privaudit.waivers`) change what a rule judges for the checks they apply to; the
rule's message says how many it relied on and the value before review.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privaudit._util import did_you_mean, to_jsonable
from privaudit.checks.base import CheckResult, CheckStatus, Direction, Metric, metric_catalog
from privaudit.config import read_toml
from privaudit.errors import ConfigError

if TYPE_CHECKING:
    from privaudit.waivers import Review, Waivers

POLICY_VERSION = 1
_RULE_KEYS = ("warn", "fail", "not_assessed", "use", "min_n", "only_if_run")
#: What a rule can compare: the estimate, or the pessimistic end of its 95 % interval.
_USE = {Direction.HIGHER_IS_WORSE: ("value", "ci_high"), Direction.HIGHER_IS_BETTER: ("value", "ci_low")}


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
    use: str = "value"
    min_n: int = 0
    only_if_run: bool = False

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
    use: str = "value"
    compared: float | None = None
    n_waivers: int = 0
    value_before_review: float | None = None


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
        n_waivers: reviewer waivers the verdict relied on.
        review: what the waivers did (``None`` without a waivers file).
    """

    status: Status
    reasons: tuple[RuleOutcome, ...]
    n_not_assessed: int
    policy_source: str
    policy_sha256: str
    n_waivers: int = 0
    review: Review | None = None


@dataclass(frozen=True)
class Policy:
    """A parsed policy (see the module docstring).

    Example:
        >>> policy = Policy.default()
        >>> [r.metric for r in policy.rules]
        ['copies.copy_rate', 'copies.flagged_rate', 'copies.control_sensitivity_score', 'metadata.identifier_match_rate', 'metadata.identifying_field_rate', 'membership.auc_risk', 'reid.linkage_rate', 'reid.probe_auc_score']
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

    def evaluate(
        self,
        checks: Mapping[str, CheckResult | Mapping[str, Any]],
        *,
        waivers: Waivers | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Decide the verdict from check results.

        Args:
            checks: check results, as objects or in their ``results.json`` form (this is how
                ``privaudit gate`` re-decides without recomputing; both give the same verdict).
            waivers: reviewer decisions on flagged items (:mod:`privaudit.waivers`).
            inputs: the input summaries (objects or dicts), for the waivers' post-selection check.
        """
        data = {name: c if isinstance(c, Mapping) else to_jsonable(c) for name, c in checks.items()}
        metrics = metrics_from_dicts(data)
        review, waived, n_by_check = None, {}, {}
        if waivers is not None:
            plain_inputs = {role: s if isinstance(s, Mapping) else to_jsonable(s) for role, s in (inputs or {}).items()}
            review, after = waivers.apply(data, plain_inputs)
            n_by_check = {name: sum(a.check == name for a in review.applied) for name in after}
            for name, ms in after.items():
                for m, value in ms.items():
                    waived[f"{name}.{m}"] = value
        return self.evaluate_metrics(metrics, waived=waived, n_waivers=n_by_check, review=review)

    def evaluate_metrics(
        self,
        metrics: Mapping[str, Metric | str],
        *,
        waived: Mapping[str, Metric] | None = None,
        n_waivers: Mapping[str, int] | None = None,
        review: Review | None = None,
    ) -> Verdict:
        """Decide from ``{"check.metric": Metric}``; a string value is the reason it is missing.

        ``waived`` holds metrics after review, replacing those in ``metrics``; ``n_waivers``
        counts the waivers behind each check's.
        """
        waived = waived or {}
        n_waivers = n_waivers or {}
        outcomes = []
        ran = {name.split(".")[0] for name in metrics}
        for rule in self.rules:
            if rule.only_if_run and rule.metric.split(".")[0] not in ran:
                continue
            raw = metrics.get(rule.metric, f"check '{rule.metric.split('.')[0]}' was not run")
            after = waived.get(rule.metric)
            n = n_waivers.get(rule.metric.split(".")[0], 0) if after is not None else 0
            outcomes.append(self._judge(rule, raw if after is None else after, n_waivers=n, before=raw))
        if not outcomes:  # every rule was only_if_run and none of their checks ran: nothing was judged
            outcomes.append(RuleOutcome(
                "policy", Status.NOT_ASSESSED, self.not_assessed, None, None, None, None, None, None,
                message=f"no rule of this policy applies to the checks that were run; counts as {self.not_assessed.value}",
            ))
        worst = max((o.counts_as for o in outcomes), key=_SEVERITY.__getitem__)
        return Verdict(
            status=worst,
            reasons=tuple(outcomes),
            n_not_assessed=sum(o.status is Status.NOT_ASSESSED for o in outcomes),
            policy_source=self.source,
            policy_sha256=self.sha256,
            n_waivers=review.n_applied if review is not None else 0,
            review=review,
        )

    def _judge(self, rule: Rule, metric: Metric | str, *, n_waivers: int = 0, before: Metric | str | None = None) -> RuleOutcome:
        levels = dict(warn=rule.warn, fail=rule.fail)
        why = None
        if isinstance(metric, str):
            why = metric
        elif not metric.assessed:
            why = "the value could not be computed"
        elif metric.n < rule.min_n:
            why = f"n = {metric.n} is below the policy's min_n = {rule.min_n}"
        elif rule.use != "value" and not _finite(getattr(metric, rule.use)):
            why = f"the rule compares the {_bound_words(rule.use)} of the 95% interval, and this metric has none"
        elif _below_floor(rule, metric):
            why = (
                f"the method cannot resolve values below {_fmt(metric.floor)} on this data (its detection floor), "
                f"so a value at or under the level {_fmt(_tolerance(rule))} could not have been shown; "
                "give more non-member (holdout) images"
            )
        if why is not None:
            return RuleOutcome(
                rule.metric, Status.NOT_ASSESSED, rule.not_assessed, None, None, None,
                None if isinstance(metric, str) else metric.n, **levels,
                message=f"{rule.metric}: not assessed ({why}); counts as {rule.not_assessed.value}",
                use=rule.use,
                n_waivers=n_waivers,
            )
        if not isinstance(metric, Metric):  # every other case returned "not assessed" above
            raise TypeError(f"{rule.metric}: expected a Metric, got {type(metric).__name__}")
        value = float(metric.value)  # type: ignore[arg-type]
        compared = value if rule.use == "value" else float(getattr(metric, rule.use))
        if rule.trips(compared, rule.fail):
            status, level, word = Status.FAIL, rule.fail, "fail"
        elif rule.trips(compared, rule.warn):
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
        if rule.use == "value":
            head = f"{rule.metric} = {_fmt(value)}{interval}"
        else:
            head = f"{rule.metric}: {_bound_words(rule.use)} of the 95% CI {_fmt(compared)} (estimate {_fmt(value)}{interval})"
        review = ""
        before_value = before.value if isinstance(before, Metric) else None
        if n_waivers:
            review = f", after {n_waivers} waiver{'s' * (n_waivers != 1)} (before review {_fmt(before_value)})"
        return RuleOutcome(
            rule.metric, status, status, value, metric.ci_low, metric.ci_high, metric.n, **levels,
            message=f"{head}, n = {metric.n}{review}: {relation} {_fmt(level)}: {status.value}",
            use=rule.use,
            compared=compared,
            n_waivers=n_waivers,
            value_before_review=before_value if n_waivers else None,
        )


def _tolerance(rule: Rule) -> float | None:
    """The level a rule must be shown to be under to pass it: its fail level (or warn level)."""
    return rule.fail if rule.fail is not None else rule.warn


def _below_floor(rule: Rule, metric: Metric) -> bool:
    """A higher-is-worse rate whose floor lies beyond the policy's tolerance (the fail level), and
    whose value did not exceed the tolerance anyway: the method could not have shown it was
    under it. (A warn level of 0, "warn on any flag", needs no resolution and is not checked.)

    In counts out of ``n``: the level trips from ``k_fail = floor(level n) + 1`` items on, so the
    method could have told a failing set from a passing one whenever it can flag ``k_fail``
    items, i.e. when ``floor n <= k_fail`` (a floor of 1 image of 40 with a 2 % level: 1 is the
    first failing count, assessed)."""
    level = _tolerance(rule)
    if metric.floor is None or level is None or rule.direction is not Direction.HIGHER_IS_WORSE or metric.n <= 0:
        return False
    compared = metric.value if rule.use == "value" else getattr(metric, rule.use)
    floor_count = round(metric.floor * metric.n)
    first_failing = math.floor(level * metric.n + 1e-9) + 1
    return floor_count > first_failing and compared is not None and compared <= level


def metrics_from_dicts(checks: Mapping[str, Mapping[str, Any]]) -> dict[str, Metric | str]:
    """:func:`metrics_of` for check results in their ``results.json`` form."""
    out: dict[str, Metric | str] = {}
    for name, result in checks.items():
        for metric, m in result.get("metrics", {}).items():
            if result.get("status") == CheckStatus.NOT_ASSESSED.value:
                out[f"{name}.{metric}"] = f"check not assessed: {result.get('reason')}"
            else:
                out[f"{name}.{metric}"] = Metric.from_dict(m)
    return out


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
    use = levels.get("use", "value")
    allowed = _USE[direction]
    if use not in allowed:
        if use in ("ci_low", "ci_high"):
            raise ConfigError(
                f"{where}: use = {use!r} is the optimistic end of the interval for a metric that is "
                f"{direction.value.replace('_', ' ')}: it would pass sets whose interval reaches past the level; "
                f"use {allowed[1]!r} (or 'value')"
            )
        raise ConfigError(f"{where}: use must be one of {', '.join(repr(a) for a in allowed)}{did_you_mean(str(use), ('value', 'ci_high', 'ci_low'))}; got {use!r}")
    min_n = levels.get("min_n", 0)
    if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < 0:
        raise ConfigError(f"{where}: min_n must be a non-negative integer; got {min_n!r}")
    only_if_run = levels.get("only_if_run", False)
    if not isinstance(only_if_run, bool):
        raise ConfigError(f"{where}: only_if_run must be true or false; got {only_if_run!r}")
    return Rule(name, direction, warn, fail, na, use=use, min_n=min_n, only_if_run=only_if_run)


def _not_assessed(value: Any, where: str) -> Status:
    allowed = ("fail", "warn")
    if value not in allowed:
        raise ConfigError(f"{where} must be \"fail\" or \"warn\"{did_you_mean(str(value), allowed)}; got {value!r} (a metric that was not measured never passes)")
    return Status(value)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _bound_words(use: str) -> str:
    return {"ci_high": "upper end", "ci_low": "lower end"}.get(use, use)


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.4g}"
