"""`privaudit gate`, `report`, `policy` and `waivers`: re-deciding and re-rendering from results.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from privaudit._util import to_jsonable
from privaudit.cli import main
from privaudit.errors import InputError
from privaudit.pipeline import audit
from privaudit.policy import Policy
from privaudit.reports.html import reload_images, render_html
from privaudit.results import load_results
from privaudit.waivers import POST_SELECTION_NOTE, Waivers, worksheet_text


@pytest.fixture(scope="module")
def audited(study_files, tmp_path_factory) -> dict[str, Path]:
    """Leaky, clean, not-assessed and no-holdout audits written from the phantom files."""
    root = tmp_path_factory.mktemp("audited")
    f = study_files
    runs = {
        "leaky": (f["train"], f["leaky"], f["holdout"]),
        "clean": (f["train"], f["clean"], f["holdout"]),
        "no_holdout": (f["train"], f["leaky"], None),
    }
    out = {}
    for name, (train, syn, hold) in runs.items():
        audit(train, syn, hold, out=root / name)
        out[name] = root / name / "results.json"
    return out


def verdict_of(results_path: Path, **kw) -> dict:
    data = load_results(results_path)
    policy = kw.pop("policy", None) or Policy.default()
    return to_jsonable(policy.evaluate(data["checks"], inputs=data["inputs"], **kw))


@pytest.mark.parametrize("name", ["leaky", "clean", "no_holdout"])
def test_gate_reproduces_the_audit_verdict(audited, name, capsys):
    data = load_results(audited[name])
    assert verdict_of(audited[name]) == data["verdict"]  # field for field, messages included
    code = main(["gate", str(audited[name])])
    assert code == (1 if data["verdict"]["status"] == "fail" else 0)
    out = capsys.readouterr().out
    assert f"verdict: {data['verdict']['status'].upper()}" in out
    for reason in data["verdict"]["reasons"]:
        assert reason["message"] in out


def test_gate_reproduces_a_not_assessed_verdict(study, tmp_path):
    audit(study.train, study.leaky, study.holdout.subset(range(20)), out=tmp_path / "na")
    data = load_results(tmp_path / "na" / "results.json")
    # 20 holdout images cannot calibrate the copies check; arrays have no headers for metadata.
    # The opt-in checks' only_if_run rules do not apply: those checks were not run.
    not_assessed = {r["metric"] for r in data["verdict"]["reasons"] if r["status"] == "not_assessed"}
    assert not_assessed == {r.metric for r in Policy.default().rules if r.metric.split(".")[0] in ("copies", "metadata")}
    assert not {r["metric"].split(".")[0] for r in data["verdict"]["reasons"]} & {"membership", "reid"}
    assert data["verdict"]["n_not_assessed"] == 5 and verdict_of(tmp_path / "na" / "results.json") == data["verdict"]
    assert main(["gate", str(tmp_path / "na" / "results.json")]) == 1


def test_gate_with_another_policy_json_and_out(audited, tmp_path, capsys):
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("[copies.copy_rate]\nwarn = 0.1\nfail = 0.5\n")
    assert main(["gate", str(audited["leaky"]), "--policy", str(lenient)]) == 0
    assert "verdict: WARN" in capsys.readouterr().out
    assert main(["gate", str(audited["leaky"]), "--policy", str(lenient), "--fail-on", "warn"]) == 1
    capsys.readouterr()
    assert main(["gate", str(audited["leaky"]), "--policy", str(lenient), "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["status"] == "warn" and verdict["policy_source"] == str(lenient)
    out = tmp_path / "regated.json"
    assert main(["gate", str(audited["leaky"]), "--policy", str(lenient), "--out", str(out)]) == 0
    regated = load_results(out)  # still schema-valid
    original = load_results(audited["leaky"])
    assert regated["verdict"]["status"] == "warn"
    assert {k: v for k, v in regated.items() if k != "verdict"} == {k: v for k, v in original.items() if k != "verdict"}
    assert main(["gate", str(audited["leaky"]), "--out", str(out)]) == 2  # never overwritten silently
    assert "exists; pass --force" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("{not json", "is not valid JSON"),
        ('{"a": 1}', "is not a privaudit results.json"),
        ("schema", "does not match the results schema at checks/copies/n_flagged"),
        ("future", "uses results schema 2.99.0; this privaudit"),
        ("major", "uses results schema 3.0.0"),
    ],
    ids=["missing", "not-json", "foreign", "invalid", "newer-minor", "other-major"],
)
def test_bad_results_files_get_one_line_errors(audited, tmp_path, content, message, capsys):
    path = tmp_path / "results.json"
    if content in ("schema", "future", "major"):
        data = json.loads(audited["leaky"].read_text())
        if content == "schema":
            data["checks"]["copies"]["n_flagged"] = "many"
        else:
            data["schema_version"] = "2.99.0" if content == "future" else "3.0.0"
        path.write_text(json.dumps(data))
    elif content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_results(path)
    for argv in (["gate", str(path)], ["report", str(path), "--out", str(tmp_path / "r.html")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("privaudit: error: ") and message.split(" ")[0] in err


def test_report_rerenders_the_audit_report_exactly(audited, tmp_path, capsys):
    """Re-rendering reloads the thumbnails from the recorded inputs (hash-checked): the same bytes."""
    original = audited["leaky"].with_name("report.html").read_text()
    out = tmp_path / "again.html"
    assert main(["report", str(audited["leaky"]), "--out", str(out)]) == 0
    assert out.read_text() == original
    assert "note:" not in capsys.readouterr().out
    assert main(["report", str(audited["leaky"]), "--out", str(out)]) == 2  # exists
    assert main(["report", str(audited["leaky"]), "--out", str(out), "--force"]) == 0


def test_report_says_why_thumbnails_are_missing(study, study_files, tmp_path, capsys):
    # Audit from a copy of the files, then move one set away and change another.
    data_dir = tmp_path / "data"
    shutil.copytree(study_files["train"].parent, data_dir)
    audit(data_dir / "train.csv", data_dir / "leaky.csv", data_dir / "holdout.csv", out=tmp_path / "a")
    results = tmp_path / "a" / "results.json"
    (data_dir / "leaky.csv").rename(tmp_path / "elsewhere.csv")
    first_train = next(p for p in sorted((data_dir / "train").iterdir()))
    first_train.write_bytes((data_dir / "holdout" / sorted(p.name for p in (data_dir / "holdout").iterdir())[0]).read_bytes())
    assert main(["report", str(results), "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "note: thumbnails not shown: the synthetic set is no longer at" in out
    assert "the train set at" in out and "changed since the audit (its content hash differs)" in out
    html = (tmp_path / "r.html").read_text()
    assert "data:image/png" not in html and "This report contains patient images" not in html
    assert "Thumbnails not shown." in html and "no longer at" in html
    # Figures are unaffected: the verdict is the recorded one.
    assert load_results(results)["verdict"]["reasons"][0]["message"] in html


def test_report_from_in_memory_audit_explains(study, tmp_path):
    audit(study.train, study.leaky, study.holdout, out=tmp_path / "m")
    data = load_results(tmp_path / "m" / "results.json")
    loader, notes = reload_images(data, tmp_path / "m" / "results.json")
    html = render_html(data, image_loader=loader, image_notes=notes)
    assert "passed in memory through the Python API" in html and "data:image/png" not in html


def test_pdf_without_chromium_names_the_program(audited, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no browser on PATH
    monkeypatch.delenv("PRIVAUDIT_CHROMIUM", raising=False)
    out = tmp_path / "r.html"
    assert main(["report", str(audited["leaky"]), "--out", str(out), "--pdf"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--pdf needs Chromium, which was not found" in err and "apt-get install chromium" in err
    assert not out.exists()  # nothing written when the PDF cannot be made


def test_policy_init_and_check(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["policy", "init"]) == 0
    written = tmp_path / "privaudit-policy.toml"
    from privaudit.policy import default_policy_text

    assert written.read_text() == default_policy_text()
    written.write_text(written.read_text() + "\n# my edits\n")
    assert main(["policy", "init"]) == 2  # never overwrites
    assert "my edits" in written.read_text()
    assert main(["policy", "init", "--force"]) == 0 and "my edits" not in written.read_text()
    assert main(["policy", "check", str(written)]) == 0
    assert f"valid policy, {len(Policy.default().rules)} rule(s)" in capsys.readouterr().out
    (tmp_path / "bad.toml").write_text('[copies.copy_rate]\nfail = 0.1\nuse = "ci_hihg"\n')
    assert main(["policy", "check", "bad.toml"]) == 2
    assert "did you mean 'ci_high'" in capsys.readouterr().err
    assert main(["policy"]) == 2


# --- waivers ---------------------------------------------------------------------------------


def decide(text: str, decisions: list[str], reviewer: str = "Dr A. Example") -> str:
    """Fill in the first len(decisions) pending entries of a worksheet."""
    parts = text.split("\n[[waiver]]\n")
    for i, d in enumerate(decisions, start=1):
        parts[i] = (
            parts[i]
            .replace('decision = "pending"', f'decision = "{d}"')
            .replace('reviewer = ""', f'reviewer = "{reviewer}"')
            .replace('date = ""', "date = 2025-11-24")
            .replace('reason = ""', 'reason = "looked at it"')
        )
    return "\n[[waiver]]\n".join(parts)


def test_worksheet_round_trip_has_no_effect_until_decided(audited, tmp_path, capsys):
    assert main(["waivers", "init", str(audited["leaky"]), str(tmp_path / "w.toml")]) == 0
    data = load_results(audited["leaky"])
    n = data["checks"]["copies"]["n_flagged"]
    assert f"({n} flagged item(s), all pending" in capsys.readouterr().out
    w = Waivers.from_toml(tmp_path / "w.toml")
    assert len(w.waivers) == n and w.audit["synthetic_sha256"] == data["inputs"]["synthetic"]["content_sha256"]
    v = verdict_of(audited["leaky"], waivers=w)
    assert v["n_waivers"] == 0 and v["review"]["n_pending"] == n
    assert v["reasons"] == data["verdict"]["reasons"]
    assert main(["waivers", "init", str(audited["leaky"]), str(tmp_path / "w.toml")]) == 2  # no overwrite


def test_waivers_change_the_verdict_and_say_so(audited, tmp_path, capsys):
    data = load_results(audited["leaky"])
    c = data["checks"]["copies"]
    k = c["n_flagged"]
    text = worksheet_text(data)
    # Accept every flagged pair: nothing left to count, the gate passes and relies on k waivers.
    path = tmp_path / "all.toml"
    path.write_text(decide(text, ["accepted"] * k))
    assert main(["gate", str(audited["leaky"]), "--waivers", str(path)]) == 0
    out = capsys.readouterr().out
    assert "verdict: PASS" in out and f"after {k} waivers (before review" in out and f"waivers relied on: {k}" in out
    v = verdict_of(audited["leaky"], waivers=Waivers.from_toml(path))
    assert v["n_waivers"] == k and v["reasons"][0]["n_waivers"] == k
    assert v["reasons"][0]["value_before_review"] == c["metrics"]["copy_rate"]["value"]
    # The check's own figures are untouched: only the judged metric changes (to no copies left).
    assert v["reasons"][0]["value"] == pytest.approx(0.0, abs=1e-9)


def test_false_alarm_waivers_use_up_the_chance_allowance(audited):
    """not_a_copy waivers up to lambda*m leave the copy-rate estimate unchanged; beyond, they
    lower it; accepted pairs always leave it. Only pairs with p <= lambda were in its count."""
    import copy

    from privaudit.checks.copies import CopiesCheck

    c = load_results(audited["leaky"])["checks"]["copies"]
    m, k, lam = c["n_synthetic"], c["n_flagged"], c["alpha_attainable"]
    pairs = c["flagged"]
    assert k >= 7 and all(f["p_value"] <= lam for f in pairs[:7])
    raw = CopiesCheck.metrics_after_review(c, [])
    assert raw["copy_rate"].value == c["metrics"]["copy_rate"]["value"]  # exact
    assert raw["flagged_rate"].ci_high == c["metrics"]["flagged_rate"]["ci_high"]
    below = c["metrics"]["copy_rate"]["value"] * (1 - lam) * m + lam * m  # p-values <= lambda
    # copy_rate = max(0, below - accepted - max(not_a_copy, lambda * m)) / ((1 - lambda) m)
    for f in range(4):
        for acc in range(3):
            reviewed = [("not_a_copy", x) for x in pairs[:f]] + [("accepted", x) for x in pairs[f : f + acc]]
            got = CopiesCheck.metrics_after_review(c, reviewed)
            expected = max(0.0, below - acc - max(f, lam * m)) / ((1 - lam) * m)
            assert got["copy_rate"].value == pytest.approx(expected), (f, acc)
            assert got["flagged_rate"].value == pytest.approx((k - acc - f) / m)
    # False alarms within the chance allowance change nothing.
    within = int(lam * m)
    if within:
        got = CopiesCheck.metrics_after_review(c, [("not_a_copy", x) for x in pairs[:within]])
        assert got["copy_rate"].value == pytest.approx(raw["copy_rate"].value)
    # A flagged pair with p > lambda (BH can flag such pairs when it flags many) was never in the
    # copy-rate count: accepting it lowers the flagged rate only.
    high = copy.deepcopy(c)
    high["flagged"][0]["p_value"] = min(1.0, 2 * lam + 0.01)
    got = CopiesCheck.metrics_after_review(high, [("accepted", high["flagged"][0])])
    assert got["copy_rate"].value == pytest.approx(raw["copy_rate"].value)
    assert got["flagged_rate"].value == pytest.approx((k - 1) / m)
    got = CopiesCheck.metrics_after_review(c, [("accepted", pairs[0])])
    assert got["copy_rate"].value == pytest.approx(max(0.0, below - 1 - lam * m) / ((1 - lam) * m))
    with pytest.raises(ValueError):
        CopiesCheck.metrics_after_review(c, [("accepted", x) for x in pairs] + [("accepted", pairs[0])])


def test_stale_waivers_are_listed_and_ignored(audited, tmp_path):
    data = load_results(audited["leaky"])
    text = decide(worksheet_text(data), ["not_a_copy", "accepted"])
    # The first pair's recorded similarity no longer matches; the second names a pair not flagged.
    first = data["checks"]["copies"]["flagged"][0]
    text = text.replace(f"similarity = {float(first['similarity'])!r}", "similarity = 0.5", 1)
    second = data["checks"]["copies"]["flagged"][1]
    text = text.replace(f'synthetic_id = "{second["synthetic_id"]}"', 'synthetic_id = "leaky/not_flagged.png"', 1)
    path = tmp_path / "stale.toml"
    path.write_text(text)
    v = verdict_of(audited["leaky"], waivers=Waivers.from_toml(path))
    assert v["n_waivers"] == 0 and v["reasons"] == data["verdict"]["reasons"]
    whys = [u["why"] for u in v["review"]["unmatched"]]
    assert "the pair changed, review it again" in whys[0] and whys[1] == "not flagged in this audit"


def test_re_audit_after_filtering_warns_of_post_selection(study_files, audited, tmp_path, capsys):
    data = load_results(audited["leaky"])
    worksheet = tmp_path / "w.toml"
    worksheet.write_text(worksheet_text(data))
    # Remove every flagged image from the synthetic manifest and audit the rest again.
    flagged = {p["synthetic_id"] for p in data["checks"]["copies"]["flagged"]}
    manifest = study_files["leaky"]
    lines = manifest.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if line.split(",")[0] not in flagged]
    assert len(kept) < len(lines)
    filtered = manifest.with_name("leaky_filtered.csv")
    filtered.write_text("\n".join(kept) + "\n")
    out = tmp_path / "again"
    main(["audit", "--train", str(study_files["train"]), "--synthetic", str(filtered), "--holdout", str(study_files["holdout"]), "--out", str(out), "--waivers", str(worksheet)])
    assert "note: The synthetic set changed since the review worksheet was made" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "Post-selection." in html and "post-selection" in POST_SELECTION_NOTE
    # A fresh holdout (here: another null) gives no such note.
    v = verdict_of(out / "results.json", waivers=Waivers.from_dict({"audit": {**Waivers.from_toml(worksheet).audit, "holdout_sha256": "0" * 64}}))
    assert v["review"]["notes"] == []


@pytest.mark.parametrize(
    "data, message",
    [
        ({"waiver": [{"check": "copy"}]}, "unknown check 'copy' \\(did you mean 'copies'\\?\\)"),
        ({"waivers": []}, "unknown key 'waivers' \\(did you mean 'waiver'\\?\\)"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "train_id": "b", "decision": "not_copy", "reviewer": "x", "date": "2025-01-01", "reason": "r"}]}, "decision 'not_copy' \\(did you mean 'not_a_copy'\\?\\)"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "train_id": "b", "decision": "accepted", "date": "2025-01-01", "reason": "r"}]}, "a decided waiver needs reviewer"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "train_id": "b", "decision": "accepted", "reviewer": "x", "date": "24/11/2025", "reason": "r"}]}, "date must be YYYY-MM-DD"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "decision": "pending"}]}, "'train_id' is missing"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "train_id": "b", "decision": "pending", "reviwer": "x"}]}, "unknown key 'reviwer' \\(did you mean 'reviewer'\\?\\)"),
        ({"waiver": [{"check": "copies", "synthetic_id": "a", "train_id": "b", "decision": "pending"}] * 2}, "the same copies item as waiver 1"),
        ({"version": 3}, "version 3 is not supported"),
    ],
    ids=["check-typo", "top-typo", "decision-typo", "no-reviewer", "bad-date", "missing-key", "key-typo", "duplicate", "version"],
)
def test_malformed_waivers_get_one_line_errors(data, message):
    from privaudit.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        Waivers.from_dict(data)
    assert "\n" not in str(info.value)


def test_waivers_cli_errors(audited, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[waiver]]\ncheck = "copies"\nsynthetic_id = "a"\ntrain_id = "b"\ndecision = "maybe"\n')
    for argv in (["gate", str(audited["leaky"]), "--waivers", str(bad)], ["waivers", "check", str(bad)]):
        assert main(argv) == 2
        assert "decision 'maybe'" in capsys.readouterr().err
    assert main(["gate", str(audited["leaky"]), "--waivers", str(tmp_path / "none.toml")]) == 2
    assert "waivers file not found" in capsys.readouterr().err
