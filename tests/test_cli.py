"""The CLI through main(argv): a table of argument lists, exit codes and messages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_dicom
from privaudit import __version__
from privaudit.cli import build_parser, main

# Placeholders filled from the phantom files: {train}, {holdout}, {leaky}, {clean}, {tmp}.
CASES = [
    # id, argv, exit code, text expected on stderr (or stdout for exit 0/1)
    ("leaky-fails", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--holdout", "{holdout}", "--out", "{tmp}/o"], 1, "verdict: FAIL"),
    # Not failed (exit 0); it warns: on this tiny study the positive control misses flipped,
    # shifted and cropped copies at 5 % prevalence, and says so.
    ("clean-not-failed", ["audit", "--train", "{train}", "--synthetic", "{clean}", "--holdout", "{holdout}", "--out", "{tmp}/o"], 0, "copies.flagged_rate = 0 "),
    ("no-holdout", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/o"], 1, "a weaker within-training estimate (no holdout)"),
    ("missing-train", ["audit", "--synthetic", "{leaky}"], 2, "the following arguments are required: --train"),
    ("bad-seed", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--seed", "-3"], 2, "expected a non-negative integer"),
    ("bad-max-skipped", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--max-skipped", "2"], 2, "expected a number in [0, 1]"),
    ("no-such-path", ["audit", "--train", "{tmp}/nope", "--synthetic", "{leaky}", "--out", "{tmp}/o"], 2, "--train: no such file or folder"),
    ("unknown-check", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--checks", "copy"], 2, "unknown check 'copy' (did you mean 'copies'?)"),
    ("unknown-embedder", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--embedder", "pixel"], 2, "did you mean 'pixels'"),
    ("policy-typo", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--policy", "{tmp}/typo.toml"], 2, "unknown key 'fial' (did you mean 'fail'?)"),
    ("policy-missing", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--policy", "{tmp}/none.toml"], 2, "policy file not found"),
    ("config-type", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--config", "{tmp}/cfg.toml"], 2, "alpha: expected float; got text"),
    ("out-is-file", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/afile"], 2, "exists and is not a folder"),
    ("out-not-empty", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/full"], 2, "is not empty; choose a new folder, or pass --force"),
    ("overlap", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--holdout", "{train}", "--out", "{tmp}/o"], 2, "--holdout shares 30 patient(s) with --train"),
    ("dicom-no-pydicom", ["audit", "--train", "{tmp}/dicoms", "--synthetic", "{leaky}", "--out", "{tmp}/o"], 3, "pip install 'privaudit[dicom]'"),
    ("cluster-no-ray", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/o", "--cluster", "local"], 3, "--cluster needs the 'ray' package, which is not installed: pip install 'privaudit[cluster]'"),
    ("cluster-unreachable", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/o", "--cluster", "127.0.0.1:1"], 2, "--cluster 127.0.0.1: nothing answers at port 1"),
    ("cluster-bad-local", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/o", "--cluster", "local:0"], 2, "expected 'local:N' with N a positive number"),
    ("gate-missing-results", ["gate", "{tmp}/none.json"], 2, "none.json not found"),
    ("gate-no-args", ["gate"], 2, "the following arguments are required: RESULTS.json"),
    ("report-missing-results", ["report", "{tmp}/none.json"], 2, "not found"),
    ("policy-check-missing", ["policy", "check", "{tmp}/none.toml"], 2, "policy file not found"),
    ("policy-check-typo", ["policy", "check", "{tmp}/typo.toml"], 2, "unknown key 'fial' (did you mean 'fail'?)"),
    ("policy-no-action", ["policy"], 2, "choose an action: init or check"),
    ("waivers-no-action", ["waivers"], 2, "choose an action: init or check"),
    ("waivers-check-missing", ["waivers", "check", "{tmp}/none.toml"], 2, "waivers file not found"),
    ("audit-waivers-missing", ["audit", "--train", "{train}", "--synthetic", "{leaky}", "--waivers", "{tmp}/none.toml"], 2, "waivers file not found"),
    ("no-command", [], 2, "usage:"),
    ("unknown-command", ["frobnicate"], 2, "invalid choice: 'frobnicate'"),
]


@pytest.fixture
def fill(study_files, tmp_path, monkeypatch):
    (tmp_path / "typo.toml").write_text("[copies.copy_rate]\nfial = 0.1\n")
    (tmp_path / "cfg.toml").write_text('[copies]\nalpha = "small"\n')
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    write_dicom(tmp_path / "dicoms" / "a.dcm", np.eye(8, dtype=np.uint16))
    names = {k: str(v) for k, v in study_files.items()} | {"tmp": str(tmp_path)}

    def _fill(argv: list[str], case_id: str) -> list[str]:
        if case_id == "dicom-no-pydicom":
            monkeypatch.setitem(sys.modules, "pydicom", None)
        if case_id == "cluster-no-ray":  # the core install: the [cluster] extra is absent
            monkeypatch.setitem(sys.modules, "ray", None)
        if case_id == "cluster-unreachable":  # needs the [cluster] extra (without it: exit 3)
            pytest.importorskip("ray")
        return [a.format(**names) for a in argv]

    return _fill


@pytest.mark.parametrize("case_id, argv, code, text", CASES, ids=[c[0] for c in CASES])
def test_cli_table(case_id, argv, code, text, fill, capsys):
    assert main(fill(argv, case_id)) == code
    out, err = capsys.readouterr()
    if code in (0, 1):
        assert text in out
    else:
        assert text in err
        if case_id != "no-command":  # usage is help, not an error line
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("privaudit: error: "), err
            assert "Traceback" not in err


def test_user_files_survive(fill, tmp_path, capsys):
    main(fill(["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/full"], "x"))
    main(fill(["audit", "--train", "{train}", "--synthetic", "{leaky}", "--out", "{tmp}/afile"], "x"))
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine" and (tmp_path / "afile").read_text() == "mine"
    # With --force, only the audit's own two files are added next to the user's.
    assert main(fill(["audit", "--train", "{train}", "--synthetic", "{clean}", "--holdout", "{holdout}", "--out", "{tmp}/full", "--force"], "x")) == 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["notes.txt", "report.html", "results.json"]
    assert (tmp_path / "full" / "notes.txt").read_text() == "mine"
    assert not list((tmp_path / "full").glob(".*tmp"))  # no temporary files left behind


def test_fail_on_warn(fill, tmp_path, capsys):
    (tmp_path / "strict.toml").write_text("[copies.copy_rate]\nwarn = -1.0\nfail = 0.5\n")
    base = ["audit", "--train", "{train}", "--synthetic", "{clean}", "--holdout", "{holdout}", "--policy", "{tmp}/strict.toml", "--force"]
    assert main(fill(base + ["--out", "{tmp}/w1"], "x")) == 0
    assert "verdict: WARN" in capsys.readouterr().out
    assert main(fill(base + ["--out", "{tmp}/w2", "--fail-on", "warn"], "x")) == 1


def test_debug_shows_the_traceback(fill, capsys):
    assert main(fill(["audit", "--train", "{tmp}/nope", "--synthetic", "{leaky}", "--debug"], "x")) == 2
    assert "Traceback" in capsys.readouterr().err


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"privaudit {__version__}"
    for argv in (["--help"], ["audit", "--help"], ["demo", "--help"], ["report", "--help"], ["gate", "--help"], ["policy", "init", "--help"], ["waivers", "init", "--help"]):
        assert main(argv) == 0
        assert "usage: privaudit" in capsys.readouterr().out


def test_every_command_and_option_has_help():
    import argparse

    def check(parser: argparse.ArgumentParser, path: str) -> int:
        n = 0
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"{path} {action.option_strings or action.dest}"
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    assert command.description, f"{path} {name}"
                    assert any(c.dest == name and c.help for c in action._choices_actions), f"{path} {name}"
                    n += 1 + check(command, f"{path} {name}")
        return n

    # audit, demo, report, gate, policy (init, check), waivers (init, check), embed, embedders,
    # cache (purge, path), dp-sweep
    assert check(build_parser(), "privaudit") == 16


def test_python_dash_m_works_like_the_script():
    done = subprocess.run([sys.executable, "-m", "privaudit", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"privaudit {__version__}"
    script = Path(sys.executable).with_name("privaudit")
    done = subprocess.run([str(script), "audit", "--train", "nowhere", "--synthetic", "nowhere"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("privaudit: error: --train: no such file or folder")


@pytest.mark.slow
def test_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "LEAKY synthetic set" in out and "CLEAN synthetic set" in out and "NOTE" not in out
    # The clean set is not failed; it may warn when the positive control shows kinds of copies
    # (crops, combinations) this audit would miss at 5 % prevalence, and the demo says why.
    clean = out.split("CLEAN")[1]
    assert "verdict: FAIL" in out.split("CLEAN")[0] and "verdict: FAIL" not in clean
    assert "verdict: PASS" in clean or "The clean set is not failed, but warns on" in clean
    found = out.split("planted copies found: ")[1].split(" ")[0]
    assert int(found) >= 32  # of 40: every family but the pixel-shifted ones, at least
    for name in ("leaky", "clean"):
        assert (tmp_path / "demo" / name / "results.json").exists() and (tmp_path / "demo" / name / "report.html").exists()
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2  # not empty any more
