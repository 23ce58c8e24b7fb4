"""Review and waivers: a reviewer's decisions on flagged items, taken into account by the gate.

A waivers file is a TOML review worksheet. ``privaudit waivers init RESULTS.json`` writes one
with every flagged item of an audit and ``decision = "pending"``; a reviewer fills in a decision,
their name, the date and a reason, and ``privaudit audit --waivers`` / ``privaudit gate
--waivers`` use it::

    version = 1

    [audit]                       # the audit the worksheet was made from (content hashes)
    results_created_at = "2025-11-24T10:00:00Z"
    train_sha256 = "3f2a..."
    synthetic_sha256 = "9b1c..."
    holdout_sha256 = "77d0..."

    [[waiver]]
    check = "copies"
    synthetic_id = "leaky/0012.png"
    train_id = "train/p0003_s1.png"
    similarity = 0.99871          # as reviewed; a pair whose similarity changed is not waived
    decision = "not_a_copy"       # or "accepted", or "pending" (not yet reviewed: no effect)
    reviewer = "Dr A. Example"
    date = 2025-11-24
    reason = "Same positioning, different patient: ribs and heart outline differ."

Why TOML: reviewers write free text and comments, and TOML has dates and needs no quoting rules
that a spreadsheet would silently change (CSV round-trips through spreadsheet software often
turn ids like ``0012`` into ``12``). The policy is TOML too.

A waiver applies to the flagged item of its check with the same keys (and score, when it records
one). What it does to the figures is the check's decision (:meth:`Check.metrics_after_review`);
the check's own measurements in ``results.json`` never change, only what the policy judges. A
waiver that matches nothing (the item is no longer flagged, or the pair changed) is listed as
unmatched and has no effect.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privaudit._util import did_you_mean
from privaudit.checks.base import Metric
from privaudit.config import read_toml
from privaudit.errors import ConfigError

WAIVERS_VERSION = 1
PENDING = "pending"
_BASE_KEYS = ("check", "decision", "reviewer", "date", "reason")
_AUDIT_KEYS = ("results_created_at", "train_sha256", "synthetic_sha256", "holdout_sha256")
#: Scores are compared after a TOML/JSON round trip of the same float, so this only absorbs
#: hand-rounded values (a reviewer typing 0.9987 for 0.998712...).
SCORE_TOLERANCE = 5e-4

POST_SELECTION_NOTE = (
    "The synthetic set changed since the review worksheet was made, while the training set and "
    "the holdout (the null) are the same. If flagged images were removed and the rest re-audited "
    "against the same null, this re-audit is post-selection: the images left are those that "
    "happened to score below the threshold on this very null, so the new figures read optimistic "
    "(fewer flags than a fresh, independent holdout would give). Confirm with a holdout that was "
    "not used to choose what to remove."
)


@dataclass(frozen=True)
class Waiver:
    """One reviewer decision on one flagged item."""

    check: str
    item: Mapping[str, str]
    score: float | None
    decision: str
    reviewer: str
    date: str
    reason: str


@dataclass(frozen=True)
class AppliedWaiver:
    """A waiver that matched a flagged item of this audit, as the report and results show it."""

    check: str
    item: Mapping[str, str]
    decision: str
    reviewer: str
    date: str
    reason: str


@dataclass(frozen=True)
class UnmatchedWaiver:
    """A decided waiver that matched no flagged item, and why; it had no effect."""

    check: str
    item: Mapping[str, str]
    decision: str
    reviewer: str
    why: str


@dataclass(frozen=True)
class Review:
    """What the waivers did in one verdict (``verdict.review`` in ``results.json``).

    Attributes:
        source: the waivers file.
        sha256: hash of its bytes.
        n_applied: waivers the verdict relied on.
        n_pending: worksheet entries not yet decided (no effect).
        applied: the waivers that matched a flagged item, with who decided what, when and why.
        unmatched: decided waivers that matched nothing in this audit.
        notes: caveats, e.g. the post-selection warning after a re-audit.
    """

    source: str
    sha256: str
    n_applied: int
    n_pending: int
    applied: tuple[AppliedWaiver, ...]
    unmatched: tuple[UnmatchedWaiver, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Waivers:
    """A parsed waivers file (see the module docstring)."""

    waivers: tuple[Waiver, ...]
    audit: Mapping[str, str] = field(default_factory=dict)
    source: str = "<dict>"
    sha256: str = ""

    @classmethod
    def from_toml(cls, path: str | Path) -> Waivers:
        """Load and validate a waivers file."""
        data = read_toml(path, what="waivers file")
        return cls.from_dict(data, source=str(path), sha256=hashlib.sha256(Path(path).read_bytes()).hexdigest())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>", sha256: str = "") -> Waivers:
        """Validate parsed waivers: known keys, known checks and decisions, complete records."""
        from privaudit.checks import CHECKS

        where = f"waivers {source}"
        for key in data:
            if key not in ("version", "audit", "waiver"):
                raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, ('version', 'audit', 'waiver'))}; expected 'version', [audit] and [[waiver]] tables")
        version = data.get("version", WAIVERS_VERSION)
        if version != WAIVERS_VERSION:
            raise ConfigError(f"{where}: version {version!r} is not supported; expected {WAIVERS_VERSION}")
        audit = data.get("audit", {})
        if not isinstance(audit, Mapping):
            raise ConfigError(f"{where}: [audit] must be a table")
        for key, value in audit.items():
            if key not in _AUDIT_KEYS:
                raise ConfigError(f"{where}: [audit]: unknown key {key!r}{did_you_mean(key, _AUDIT_KEYS)}; known keys: {', '.join(_AUDIT_KEYS)}")
            if not isinstance(value, str):
                raise ConfigError(f"{where}: [audit].{key} must be text; got {type(value).__name__}")
        entries = data.get("waiver", [])
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise ConfigError(f"{where}: waivers must be [[waiver]] tables")
        waivers: list[Waiver] = []
        seen: dict[tuple[Any, ...], int] = {}
        for i, entry in enumerate(entries, start=1):
            at = f"{where}: waiver {i}"
            check = entry.get("check")
            if not isinstance(check, str) or not check:
                raise ConfigError(f"{at}: 'check' is missing (e.g. check = \"copies\")")
            reviewable = CHECKS.get(check).reviewable  # unknown check: did-you-mean error
            if reviewable is None:
                raise ConfigError(f"{at}: check {check!r} has nothing a reviewer can waive")
            known = (*_BASE_KEYS, *reviewable.keys, *((reviewable.score,) if reviewable.score else ()))
            for key in entry:
                if key not in known:
                    raise ConfigError(f"{at}: unknown key {key!r}{did_you_mean(key, known)}; known keys: {', '.join(known)}")
            item = {}
            for key in reviewable.keys:
                value = entry.get(key)
                if not isinstance(value, str) or not value:
                    raise ConfigError(f"{at}: {key!r} is missing or not text; a {check} waiver names {', '.join(reviewable.keys)}")
                item[key] = value
            score = None
            if reviewable.score and reviewable.score in entry:
                raw = entry[reviewable.score]
                if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
                    raise ConfigError(f"{at}: {reviewable.score} must be a number; got {raw!r}")
                score = float(raw)
            decision = entry.get("decision")
            allowed = (*reviewable.decisions, PENDING)
            if decision not in allowed:
                raise ConfigError(f"{at}: decision {decision!r}{did_you_mean(str(decision), allowed)}; expected one of {', '.join(allowed)}")
            texts = {}
            for key in ("reviewer", "reason"):
                value = entry.get(key, "")
                if not isinstance(value, str):
                    raise ConfigError(f"{at}: {key} must be text; got {type(value).__name__}")
                texts[key] = value.strip()
            date = _date(entry.get("date", ""), at)
            if decision != PENDING:
                missing = [k for k, v in (("reviewer", texts["reviewer"]), ("date", date), ("reason", texts["reason"])) if not v]
                if missing:
                    raise ConfigError(f"{at}: a decided waiver needs {', '.join(missing)} (who decided, when and why); use decision = \"pending\" until then")
            key = (check, tuple(item.values()))
            if key in seen:
                raise ConfigError(f"{at}: the same {check} item as waiver {seen[key]} ({', '.join(item.values())})")
            seen[key] = i
            waivers.append(Waiver(check, item, score, decision, texts["reviewer"], date, texts["reason"]))
        return cls(tuple(waivers), dict(audit), source, sha256)

    def apply(self, checks: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[Review, dict[str, dict[str, Metric]]]:
        """Match the decided waivers to flagged items; return the review and the metrics after it.

        Args:
            checks: the check results in their ``results.json`` form.
            inputs: the input summaries in their ``results.json`` form (for the post-selection
                warning, which compares content hashes with the worksheet's ``[audit]``).

        Returns:
            The :class:`Review`, and for each check that a waiver applied to, its metrics after
            review (:meth:`Check.metrics_after_review`).
        """
        from privaudit.checks import CHECKS

        applied: list[AppliedWaiver] = []
        unmatched: list[UnmatchedWaiver] = []
        decisions: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
        for w in self.waivers:
            if w.decision == PENDING:
                continue
            reviewable = CHECKS.get(w.check).reviewable
            if reviewable is None:  # checked when parsed; kept as an error under python -O too
                raise RuntimeError(f"check {w.check!r} has nothing a reviewer can waive")
            result = checks.get(w.check)
            if result is None:
                unmatched.append(UnmatchedWaiver(w.check, w.item, w.decision, w.reviewer, f"check {w.check!r} was not run"))
                continue
            found = next((it for it in result.get(reviewable.field, ()) if all(it.get(k) == v for k, v in w.item.items())), None)
            if found is None:
                unmatched.append(UnmatchedWaiver(w.check, w.item, w.decision, w.reviewer, "not flagged in this audit"))
                continue
            if w.score is not None and reviewable.score and abs(float(found[reviewable.score]) - w.score) > SCORE_TOLERANCE:
                unmatched.append(UnmatchedWaiver(
                    w.check, w.item, w.decision, w.reviewer,
                    f"{reviewable.score} is now {found[reviewable.score]:.6g}, not the reviewed {w.score:.6g}: the pair changed, review it again",
                ))
                continue
            applied.append(AppliedWaiver(w.check, w.item, w.decision, w.reviewer, w.date, w.reason))
            decisions.setdefault(w.check, []).append((w.decision, found))
        metrics = {name: CHECKS.get(name).metrics_after_review(checks[name], ds) for name, ds in decisions.items()}
        review = Review(
            source=self.source,
            sha256=self.sha256,
            n_applied=len(applied),
            n_pending=sum(w.decision == PENDING for w in self.waivers),
            applied=tuple(applied),
            unmatched=tuple(unmatched),
            notes=tuple(self._notes(inputs or {})),
        )
        return review, metrics

    def _notes(self, inputs: Mapping[str, Mapping[str, Any]]) -> list[str]:
        recorded = self.audit
        now = {role: s.get("content_sha256") for role, s in inputs.items()}
        if not recorded or not now:
            return []
        same_null = recorded.get("train_sha256") == now.get("train") and recorded.get("holdout_sha256") == now.get("holdout")
        if same_null and recorded.get("synthetic_sha256") not in (None, now.get("synthetic")):
            return [POST_SELECTION_NOTE]
        return []


def worksheet_text(results: Mapping[str, Any]) -> str:
    """A review worksheet (waivers TOML) listing every flagged item of ``results``, all pending."""
    from privaudit.checks import CHECKS

    lines = [
        "# privaudit review worksheet (waivers), version 1.",
        "#",
        "# One [[waiver]] per flagged item of the audit below. To record a review, set `decision`",
        "# and fill in reviewer, date (YYYY-MM-DD) and reason; leave `decision = \"pending\"` for items",
        "# not reviewed yet (they have no effect). Then:",
        "#     privaudit gate RESULTS.json --waivers THIS_FILE",
        "# The report lists every waiver the verdict relied on, with who decided what, when and why.",
        "#",
        "# Decisions:",
    ]
    for name in CHECKS.names():
        reviewable = CHECKS.get(name).reviewable
        if reviewable is not None:
            for decision, meaning in reviewable.decisions.items():
                lines.append(f"#   {name}: {decision:<12} {meaning}")
    lines += [
        "#",
        "# A waiver applies only to the same pair with the same score; if the images change, review",
        "# again. Removing flagged images and re-auditing against the same holdout is post-selection:",
        "# the report will say so.",
        "",
        f"version = {WAIVERS_VERSION}",
        "",
        "[audit]",
        f"results_created_at = {_toml_str(results.get('created_at', ''))}",
    ]
    for role in ("train", "synthetic", "holdout"):
        s = results.get("inputs", {}).get(role)
        if s is not None:
            lines.append(f"{role}_sha256 = {_toml_str(s['content_sha256'])}")
    n = 0
    for name, result in results.get("checks", {}).items():
        reviewable = CHECKS.get(name).reviewable if name in CHECKS else None
        if reviewable is None:
            continue
        for item in result.get(reviewable.field, ()):
            n += 1
            lines += ["", "[[waiver]]", f"check = {_toml_str(name)}"]
            lines += [f"{k} = {_toml_str(item[k])}" for k in reviewable.keys]
            if reviewable.score:
                lines.append(f"{reviewable.score} = {float(item[reviewable.score])!r}")
            lines += [f"decision = \"{PENDING}\"", 'reviewer = ""', 'date = ""', 'reason = ""']
    if n == 0:
        lines += ["", "# Nothing was flagged in this audit: there is nothing to review."]
    return "\n".join(lines) + "\n"


def _toml_str(value: Any) -> str:
    import json

    # A JSON string is a valid TOML basic string for everything json.dumps emits with
    # ensure_ascii (escapes \\uXXXX, \\", \\\\, \\n, ...).
    return json.dumps(str(value), ensure_ascii=True)


def _date(value: Any, at: str) -> str:
    if isinstance(value, _dt.datetime):
        return value.date().isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if not isinstance(value, str):
        raise ConfigError(f"{at}: date must be a date (YYYY-MM-DD); got {value!r}")
    value = value.strip()
    if not value:
        return ""
    try:
        return _dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise ConfigError(f"{at}: date must be YYYY-MM-DD; got {value!r}") from None
