"""Policy parsing and the verdict, rule by rule and at each boundary."""

from __future__ import annotations

import pytest

from privaudit.checks.base import Direction, Metric
from privaudit.errors import ConfigError
from privaudit.policy import Policy, Status, default_policy_text

RULE = "copies.excess_flag_rate"


def policy(**rule: object) -> Policy:
    return Policy.from_dict({"copies": {"excess_flag_rate": rule}})


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
    v = Policy.from_dict({"not_assessed": "warn", "copies": {"excess_flag_rate": {"fail": 0.1}}}).evaluate_metrics({})
    assert v.status is Status.WARN and "check 'copies' was not run" in v.reasons[0].message


def test_only_one_level_is_enough():
    assert verdict(policy(fail=0.05), 0.04).status is Status.PASS
    assert verdict(policy(fail=0.05), 0.06).status is Status.FAIL
    assert verdict(policy(warn=0.05), 0.06).status is Status.WARN


@pytest.mark.parametrize(
    "data, message",
    [
        ({"copies": {"excess_flag_rat": {"fail": 0.1}}}, "no metric 'excess_flag_rat' \\(did you mean 'excess_flag_rate'\\?\\)"),
        ({"copy": {"excess_flag_rate": {"fail": 0.1}}}, "unknown key 'copy' \\(did you mean 'copies'\\?\\)"),
        ({"copies": {"excess_flag_rate": {"fial": 0.1}}}, "unknown key 'fial' \\(did you mean 'fail'\\?\\)"),
        ({"copies": {"excess_flag_rate": {"fail": "high"}}}, "fail must be a number; got str 'high'"),
        ({"copies": {"excess_flag_rate": {"fail": True}}}, "fail must be a number; got bool"),
        ({"copies": {"excess_flag_rate": {"warn": 0.2, "fail": 0.1}}}, "fail \\(0.1\\) must be at or above warn \\(0.2\\)"),
        ({"copies": {"excess_flag_rate": {}}}, "sets neither 'warn' nor 'fail'"),
        ({"copies": {"excess_flag_rate": 0.1}}, "must be a table"),
        ({"not_assessed": "pass", "copies": {"excess_flag_rate": {"fail": 0.1}}}, "must be \"fail\" or \"warn\""),
        ({"version": 2, "copies": {"excess_flag_rate": {"fail": 0.1}}}, "version 2 is not supported"),
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
    good.write_text('[copies.excess_flag_rate]\nfail = 0.5\n')
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
        (RULE, 0.01, 0.02),
        ("quality.precision_ratio_score", 0.7, None),
        ("quality.coverage_ratio_score", 0.7, None),
    ]
    assert [r.not_assessed for r in p.rules[1:]] == [Status.WARN, Status.WARN]
