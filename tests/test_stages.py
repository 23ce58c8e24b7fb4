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
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Where this audit spent its time and memory" in html and "<td>check copies</td>" in html
