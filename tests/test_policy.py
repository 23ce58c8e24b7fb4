"""Policy parsing and the verdict, rule by rule and at each boundary."""

from __future__ import annotations

import pytest

from privaudit.checks.base import Direction, Metric
from privaudit.errors import ConfigError
from privaudit.policy import Policy, Status, default_policy_text

RULE = "copies.copy_rate"


def policy(**rule: object) -> Policy:
    return Policy.from_dict({"copies": {"copy_rate": rule}})


def verdict(p: Policy, value: float | None):
    return p.evaluate_metrics({RULE: Metric(value, 200, direction=Direction.HIGHER_IS_WORSE)})


@pytest.mark.parametrize(
    "value, expected",
    [(0.0, "pass"), (0.01, "pass"), (0.010001, "warn"), (0.02, "warn"), (0.020001, "fail"), (-0.01, "pass")],
    ids=["zero", "at-warn", "above-warn", "at-fail", "above-fail", "negative"],
)
def test_rule_fires_strictly_above_its_levels(value, expected):
    v = verdict(policy(warn=0.01, fail=0.02), value)
    assert v.status.value == expected
    assert v.reasons[0].status.value == expected
    assert RULE in v.reasons[0].message and expected in v.reasons[0].message


def test_higher_is_better_metrics_fail_below():
    p = policy(warn=0.01, fail=0.02)
    rule = p.rules[0]
    better = type(rule)(rule.metric, Direction.HIGHER_IS_BETTER, warn=0.8, fail=0.6, not_assessed=Status.FAIL)
    assert better.trips(0.59, 0.6) and not better.trips(0.6, 0.6) and not better.trips(0.9, 0.8)


@pytest.mark.parametrize("value", [None, float("nan")], ids=["none", "nan"])
def test_not_assessed_never_passes(value):
    v = verdict(policy(warn=0.01, fail=0.02), value)
    assert v.status is Status.FAIL and v.reasons[0].status is Status.NOT_ASSESSED and v.n_not_assessed == 1
    v = verdict(policy(warn=0.01, fail=0.02, not_assessed="warn"), value)
    assert v.status is Status.WARN
    v = Policy.from_dict({"not_assessed": "warn", "copies": {"copy_rate": {"fail": 0.1}}}).evaluate_metrics({})
    assert v.status is Status.WARN and "check 'copies' was not run" in v.reasons[0].message


def test_only_one_level_is_enough():
    assert verdict(policy(fail=0.05), 0.04).status is Status.PASS
    assert verdict(policy(fail=0.05), 0.06).status is Status.FAIL
    assert verdict(policy(warn=0.05), 0.06).status is Status.WARN


@pytest.mark.parametrize(
    "data, message",
    [
        ({"copies": {"copy_rat": {"fail": 0.1}}}, "no metric 'copy_rat' \\(did you mean 'copy_rate'\\?\\)"),
        ({"copy": {"copy_rate": {"fail": 0.1}}}, "unknown key 'copy' \\(did you mean 'copies'\\?\\)"),
        ({"copies": {"copy_rate": {"fial": 0.1}}}, "unknown key 'fial' \\(did you mean 'fail'\\?\\)"),
        ({"copies": {"copy_rate": {"fail": "high"}}}, "fail must be a number; got str 'high'"),
        ({"copies": {"copy_rate": {"fail": True}}}, "fail must be a number; got bool"),
        ({"copies": {"copy_rate": {"warn": 0.2, "fail": 0.1}}}, "fail \\(0.1\\) must be at or above warn \\(0.2\\)"),
        ({"copies": {"copy_rate": {}}}, "sets neither 'warn' nor 'fail'"),
        ({"copies": {"copy_rate": 0.1}}, "must be a table"),
        ({"not_assessed": "pass", "copies": {"copy_rate": {"fail": 0.1}}}, "must be \"fail\" or \"warn\""),
        ({"version": 2, "copies": {"copy_rate": {"fail": 0.1}}}, "version 2 is not supported"),
        ({"version": 1}, "no rules"),
    ],
    ids=["metric-typo", "check-typo", "key-typo", "wrong-type", "bool", "order", "no-levels", "not-table", "na-pass", "version", "empty"],
)
def test_malformed_policies_get_one_line_errors(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        Policy.from_dict(data)
    assert "\n" not in str(info.value)


def test_policy_files(tmp_path):
    good = tmp_path / "p.toml"
    good.write_text('[copies.copy_rate]\nfail = 0.5\n')
    p = Policy.from_toml(good)
    assert p.source == str(good) and len(p.sha256) == 64
    bad = tmp_path / "bad.toml"
    bad.write_text("[copies\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Policy.from_toml(bad)
    with pytest.raises(ConfigError, match="policy file not found"):
        Policy.from_toml(tmp_path / "missing.toml")


def test_default_policy_is_commented_and_valid():
    text = default_policy_text()
    assert text.count("#") > 10
    p = Policy.default()
    assert p.source == "default" and p.not_assessed is Status.FAIL
    assert [(r.metric, r.warn, r.fail) for r in p.rules] == [
        (RULE, 0.03, 0.05),
        ("copies.flagged_rate", 0.0, 0.02),
        ("copies.control_sensitivity_score", 0.8, 0.5),
        ("metadata.identifier_match_rate", None, 0.0),
        ("metadata.identifying_field_rate", 0.0, None),
        ("quality.precision_ratio_score", 0.7, None),
        ("quality.coverage_ratio_score", 0.7, None),
        ("membership.auc_risk", 0.6, 0.7),
        ("reid.linkage_rate", 0.0, 0.02),
        ("reid.probe_auc_score", 0.95, 0.9),
    ]
    # Array inputs have no headers: their metadata rules warn rather than fail when not assessed;
    # quality warns only.
    assert [r.not_assessed for r in p.rules] == [Status.FAIL] * 3 + [Status.WARN] * 4 + [Status.FAIL] * 3
    # The opt-in checks' rules apply only when those checks were run.
    assert [r.only_if_run for r in p.rules] == [False] * 7 + [True] * 3


def test_only_if_run_rules_skip_checks_not_run_but_not_checks_not_assessed():
    p = Policy.from_dict({"copies": {"copy_rate": {"fail": 0.05}}, "reid": {"linkage_rate": {"fail": 0.01, "only_if_run": True}}})
    ok = Metric(0.0, 200, direction=Direction.HIGHER_IS_WORSE)
    # reid not run: its rule is left out, the verdict rests on copies alone.
    v = p.evaluate_metrics({RULE: ok})
    assert v.status is Status.PASS and [r.metric for r in v.reasons] == [RULE]
    # reid run but not assessed: the rule is there and fails.
    v = p.evaluate_metrics({RULE: ok, "reid.linkage_rate": "check not assessed: weak probe", "reid.probe_auc_score": "check not assessed: weak probe"})
    assert v.status is Status.FAIL and v.reasons[1].status is Status.NOT_ASSESSED and "weak probe" in v.reasons[1].message
    # A policy whose every rule is skipped judged nothing: that never passes.
    only = Policy.from_dict({"reid": {"linkage_rate": {"fail": 0.01, "only_if_run": True}}})
    v = only.evaluate_metrics({RULE: ok})
    assert v.status is Status.FAIL and v.n_not_assessed == 1 and "no rule of this policy applies" in v.reasons[0].message
    with pytest.raises(ConfigError, match="only_if_run must be true or false"):
        Policy.from_dict({"reid": {"linkage_rate": {"fail": 0.01, "only_if_run": "yes"}}})


# --- interval bounds, min_n, and every rule of the catalog at its boundary --------------------

from privaudit.checks.base import metric_catalog  # noqa: E402


def test_use_ci_high_compares_the_upper_bound():
    p = policy(warn=0.01, fail=0.02, use="ci_high")
    m = lambda hi: p.evaluate_metrics({RULE: Metric(0.0, 200, ci_low=-0.01, ci_high=hi)})  # noqa: E731
    assert m(0.01).status is Status.PASS and m(0.010001).status is Status.WARN
    assert m(0.02).status is Status.WARN and m(0.020001).status is Status.FAIL
    v = m(0.03)
    assert v.reasons[0].compared == 0.03 and v.reasons[0].value == 0.0 and v.reasons[0].use == "ci_high"
    assert "upper end of the 95% CI 0.03 (estimate 0" in v.reasons[0].message
    # The same estimate passes when the rule compares the estimate.
    assert policy(warn=0.01, fail=0.02).evaluate_metrics({RULE: Metric(0.0, 200, ci_low=-0.01, ci_high=0.03)}).status is Status.PASS


def test_a_bound_rule_without_an_interval_is_not_assessed():
    v = policy(fail=0.02, use="ci_high").evaluate_metrics({RULE: Metric(0.0, 200)})
    assert v.status is Status.FAIL and v.reasons[0].status is Status.NOT_ASSESSED
    assert "this metric has none" in v.reasons[0].message


def test_min_n():
    p = policy(fail=0.02, min_n=100)
    assert p.evaluate_metrics({RULE: Metric(0.0, 99)}).reasons[0].status is Status.NOT_ASSESSED
    assert "n = 99 is below the policy's min_n = 100" in p.evaluate_metrics({RULE: Metric(0.0, 99)}).reasons[0].message
    assert p.evaluate_metrics({RULE: Metric(0.0, 100)}).status is Status.PASS


@pytest.mark.parametrize(
    "rule, message",
    [
        ({"fail": 0.1, "use": "ci_low"}, "use = 'ci_low' is the optimistic end of the interval for a metric that is higher is worse"),
        ({"fail": 0.1, "use": "upper"}, "use must be one of 'value', 'ci_high'"),
        ({"fail": 0.1, "use": "ci_hgh"}, "did you mean 'ci_high'"),
        ({"fail": 0.1, "min_n": -1}, "min_n must be a non-negative integer"),
        ({"fail": 0.1, "min_n": 1.5}, "min_n must be a non-negative integer"),
        ({"fail": 0.1, "mi_n": 3}, "unknown key 'mi_n' \\(did you mean 'min_n'\\?\\)"),
    ],
    ids=["optimistic-bound", "unknown-use", "use-typo", "negative-min-n", "float-min-n", "min-n-typo"],
)
def test_bad_use_and_min_n(rule, message):
    with pytest.raises(ConfigError, match=message) as info:
        Policy.from_dict({"copies": {"copy_rate": rule}})
    assert "\n" not in str(info.value)


CATALOG = sorted(metric_catalog().items())


@pytest.mark.parametrize("name, spec", CATALOG, ids=[n for n, _ in CATALOG])
@pytest.mark.parametrize("use", ["value", "bound"])
def test_every_rule_fires_at_its_boundary(name, spec, use):
    """For every metric any registered check reports: at the level it holds, just past it trips,
    in the direction the metric declares; with use = the pessimistic bound, the bound decides."""
    check, metric = name.split(".")
    worse = 1.0 if spec.direction is Direction.HIGHER_IS_WORSE else -1.0
    warn, fail = 0.3, 0.3 + 0.2 * worse
    bound = "ci_high" if spec.direction is Direction.HIGHER_IS_WORSE else "ci_low"
    rule = {"warn": warn, "fail": fail} | ({"use": bound} if use == "bound" else {})
    p = Policy.from_dict({check: {metric: rule}})
    eps = 1e-9

    def status(x: float) -> str:
        if use == "value":
            m = Metric(x, 50, direction=spec.direction)
        else:  # the estimate sits safely on the good side; only the bound moves
            lo, hi = (x - 1.0, x) if bound == "ci_high" else (x, x + 1.0)
            m = Metric(x - worse * 1.0, 50, ci_low=lo, ci_high=hi, direction=spec.direction)
        return p.evaluate_metrics({name: m}).status.value

    assert status(warn) == "pass" and status(warn + worse * eps) == "warn"
    assert status(fail) == "warn" and status(fail + worse * eps) == "fail"
    assert status(warn - worse * 0.1) == "pass"


@pytest.mark.parametrize(
    "floor_count, n, assessed",
    [(1, 40, True), (3, 100, True), (4, 100, False), (5, 201, True), (6, 201, False), (10, 100, False)],
)
def test_the_floor_rule_compares_counts_with_the_first_failing_count(floor_count, n, assessed):
    """At fail = 0.02 the first failing count is floor(0.02 n) + 1 (1 of 40, 3 of 100, 5 of 201):
    a method that can flag that many could have shown a failing set, so the rule is assessed."""
    p = Policy.from_dict({"copies": {"flagged_rate": {"fail": 0.02}}})
    outcome = p.evaluate_metrics({"copies.flagged_rate": Metric(0.0, n, 0.0, 0.1, floor=floor_count / n)}).reasons[0]
    assert (outcome.status is not Status.NOT_ASSESSED) == assessed, outcome.message
    # A value above the level fails whatever the floor.
    above = p.evaluate_metrics({"copies.flagged_rate": Metric(0.5, n, 0.4, 0.6, floor=floor_count / n)})
    assert above.status is Status.FAIL and above.reasons[0].status is Status.FAIL
