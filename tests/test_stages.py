"""Stage timings and memory peaks (issue 10): what results.json's ``run`` and the report show."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from privaudit.config import AuditConfig
from privaudit.pipeline import audit
from privaudit.stages import StageClock


def test_stages_are_recorded_in_order_and_each_peak_is_its_own():
    clock = StageClock()
    with clock.stage("big"):
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        block[::512] = 2.0
        del block
    with clock.stage("small"):
        sum(range(1000))
    with pytest.raises(ZeroDivisionError), clock.stage("fails"):
        1 / 0  # noqa: B018
    assert [s.name for s in clock.stages] == ["big", "small", "fails"]  # a failed stage is still timed
    big, small = clock.stages[0], clock.stages[1]
    assert big.peak_rss_mb is not None and big.peak_rss_mb >= 200
    if sys.platform.startswith("linux"):
        # The high-water mark is reset per stage: the small stage does not inherit the big one's peak.
        assert clock.peak_scope == "stage"
        assert small.peak_rss_mb < big.peak_rss_mb - 150
    assert clock.process_peak_mib() == max(s.peak_rss_mb for s in clock.stages)
    assert all(s.seconds >= 0 for s in clock.stages) and clock.total_seconds >= sum(s.seconds for s in clock.stages)


def test_an_audit_records_its_stages_in_results_and_report(study, tmp_path):
    config = AuditConfig(embedders=("pixels",), checks=("copies", "quality"))
    result = audit(study.train, study.clean, study.holdout, config=config, out=tmp_path / "out", cache=False)
    run = result.run
    assert [s.name for s in run.stages] == ["load", "embed pixels", "check copies", "check quality", "verdict"]
    assert run.seconds >= sum(s.seconds for s in run.stages) > 0
    assert run.peak_rss_mb == max(s.peak_rss_mb for s in run.stages)
    from privaudit.results import load_results

    data = load_results(tmp_path / "out" / "results.json")  # schema-validated
    assert [s["name"] for s in data["run"]["stages"]] == [s.name for s in run.stages]
    # Every search of the checks, with its shape: copies searches the synthetic set in the
    # training set (exact at this size), quality finds k-NN radii in each compared set itself.
    n_train, n_syn, d = len(study.train), len(study.clean), 32 * 32
    by_stage = {name: [t for t in run.searches if t.stage == name] for name in ("check copies", "check quality")}
    assert {(t.kind, t.n_queries, t.n_base, t.dim, t.k) for t in by_stage["check copies"]} >= {("exact", n_syn, n_train, d, 1), ("self", n_train, n_train, d, 1)}  # the duplicates: nearest_other
    assert by_stage["check quality"] and all(t.kind == "self" and t.n_queries == t.n_base for t in by_stage["check quality"])
    assert len(run.searches) == sum(map(len, by_stage.values()))
    for name, found in by_stage.items():
        assert 0 < sum(t.seconds for t in found) <= next(s.seconds for s in run.stages if s.name == name)
    assert data["run"]["searches"][0] == {**vars(run.searches[0])}
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Where this audit spent its time and memory" in html and "<td>check copies</td>" in html
