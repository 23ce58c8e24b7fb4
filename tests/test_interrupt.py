"""Nothing lost: a real ``privaudit audit`` process interrupted mid-run by SIGINT or SIGTERM.

Each test starts the installed ``privaudit`` script, waits until the audit has reached a given
stage, sends the signal, and checks the exit code (130), the one-line message, and that the
output folder holds no half-written ``results.json``/``report.html`` and no temporary files.

Three stages:

* **loading**: the training manifest is a named pipe that nobody writes, so the process is
  blocked reading its input; nothing is touched in the fault path (no hook at all).
* **staging**: results.json has been written to its temporary file, report.html not yet;
  interruption must remove the temporary file and leave the user's previous outputs untouched.
* **committing**: the renames that put both files in place; SIGINT/SIGTERM are held back until
  both are done, so the pair is never mixed (a new results.json next to an old report.html).

To stop the process at the last two stages deterministically, a ``sitecustomize`` module on
``PYTHONPATH`` wraps ``os.fsync`` or ``os.replace`` in the child: after the real call it prints
PAUSED and waits until the test has signalled it. The signal then arrives at a known moment;
everything else, including the signal handling in ``privaudit.cli.console_main``, is the real
code path.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).with_name("privaudit")
MESSAGE = "privaudit: error: interrupted; no half-written output was left behind"

HOOK = r'''
import os, sys, time

_stage = os.environ.get("PRIVAUDIT_TEST_PAUSE_AT")


def _pause(out_dir):
    sys.stderr.write("PAUSED\n")
    sys.stderr.flush()
    go = os.path.join(os.path.dirname(out_dir), "go")
    for _ in range(2400):  # until the test has sent its signal (at most 2 minutes)
        if os.path.exists(go):
            break
        time.sleep(0.05)


if _stage == "staging":
    _real_fsync = os.fsync

    def fsync(fd):
        _real_fsync(fd)
        # Embedding-cache writes are fsynced too: pause only once the staged results.json is
        # complete on disk (the name of an open descriptor, from /proc: the tests run on Linux).
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(path).startswith(".results.json."):
            _pause(os.path.dirname(path))

    os.fsync = fsync
elif _stage == "committing":
    _real_replace = os.replace

    def replace(src, dst, **kwargs):
        _real_replace(src, dst, **kwargs)
        if str(dst).endswith("results.json"):  # one of the two renames done
            _pause(os.path.dirname(str(dst)))

    os.replace = replace
'''


def _start(argv: list[str], tmp: Path, cache: Path, *, pause_at: str | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PRIVAUDIT_CACHE_DIR": str(cache)}
    if pause_at is not None:
        hook_dir = tmp / "hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(HOOK)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH")]))
        env["PRIVAUDIT_TEST_PAUSE_AT"] = pause_at
    return subprocess.Popen([str(SCRIPT), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


class _Lines:
    """stderr of a child read line by line in a thread, so that waiting can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 300.0) -> None:
        if any(text in line for line in self.lines):
            return
        deadline = time.monotonic() + timeout
        while True:
            line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the process ended before {text!r}: {self.lines}")
            self.lines.append(line)
            if text in line:
                return

    def rest(self) -> list[str]:
        self._thread.join(timeout=60)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                return self.lines
            self.lines.append(line)


def _interrupt(proc: subprocess.Popen[str], lines: _Lines, signum: int) -> tuple[int, list[str]]:
    proc.send_signal(signum)
    code = proc.wait(timeout=120)
    return code, lines.rest()


def _argv(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["audit", "--train", str(files["train"]), "--synthetic", str(files["leaky"]), "--holdout", str(files["holdout"]), "--out", str(out), *extra]


def _previous(out: Path) -> dict[str, str]:
    out.mkdir()
    old = {"results.json": '{"previous": true}\n', "report.html": "<p>previous run</p>\n", "notes.txt": "mine\n"}
    for name, text in old.items():
        (out / name).write_text(text)
    return old


def _no_temporaries(out: Path) -> None:
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


@dataclass
class Run:
    """One interrupted audit: its process, its stderr and its output folder."""

    proc: subprocess.Popen[str]
    lines: _Lines
    out: Path
    folder: Path
    cache: Path
    previous: dict[str, str] | None


def _launch(name: str, files: dict[str, Path], folder: Path, cache: Path) -> Run:
    folder.mkdir()
    out = folder / "out"
    stage = name.split("-")[0]
    previous = None
    if stage == "loading":
        os.mkfifo(folder / "train.csv")  # nobody writes it: the audit blocks reading its input
        proc = _start(_argv({**files, "train": folder / "train.csv"}, out, "-v"), folder, cache)
    else:
        previous = _previous(out) if name != "staging-rerun" else None
        extra = ("--force",) if previous is not None else RERUN_EMBEDDERS
        proc = _start(_argv(files, out, *extra), folder, cache, pause_at=stage)
    return Run(proc, _Lines(proc), out, folder, cache, previous)


# The rerun scenario names a fitted space beside pixels, so that its test covers a fitted model
# left in the cache by an interrupted run (the default spaces fit nothing at these sizes).
RERUN_EMBEDDERS = ("--embedder", "pixels,copydetect")
SCENARIOS = ("loading-SIGINT", "loading-SIGTERM", "staging-SIGINT", "staging-SIGTERM", "committing-SIGTERM", "staging-rerun")


@pytest.fixture(scope="module")
def runs(study_files, tmp_path_factory):
    """Every scenario's process, started at once: each waits at its stage for its signal, so
    they can start together and spend their start-up time (importing torch) side by side.
    The rerun scenario, whose test is that an interrupted run leaves its work in the cache,
    has an embedding cache of its own; the others share one.
    """
    root = tmp_path_factory.mktemp("interrupt")
    shared = root / "cache"
    started = {name: _launch(name, study_files, root / name, root / "rerun-cache" if name == "staging-rerun" else shared) for name in SCENARIOS}
    yield started
    for run in started.values():
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def _stop(run: Run, signum: int, *, marker: str = "PAUSED") -> tuple[int, list[str]]:
    run.lines.wait_for(marker)
    if marker != "PAUSED":
        time.sleep(0.3)  # into the blocking read
    run.proc.send_signal(signum)
    (run.folder / "go").touch()  # lets a paused commit go on; the signal is already pending
    code = run.proc.wait(timeout=120)
    return code, run.lines.rest()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_while_loading(signum, runs):
    run = runs[f"loading-{signal.Signals(signum).name}"]
    code, err = _stop(run, signum, marker="loading images")
    assert code == 130 and err[-1] == MESSAGE, err
    assert not any("Traceback" in line for line in err)
    assert not run.out.exists()  # the output folder is created only to write the outputs


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_while_writing_keeps_the_previous_outputs(signum, runs):
    run = runs[f"staging-{signal.Signals(signum).name}"]
    run.lines.wait_for("PAUSED")
    assert any(p.name.startswith(".results.json.") for p in run.out.iterdir())  # mid-write indeed
    code, err = _stop(run, signum)
    assert code == 130 and err[-1] == MESSAGE, err
    assert not any("Traceback" in line for line in err)
    _no_temporaries(run.out)
    assert {p.name: p.read_text() for p in run.out.iterdir()} == run.previous


@pytest.mark.slow
def test_interrupted_between_the_renames_finishes_the_pair(runs):
    run = runs["committing-SIGTERM"]
    code, err = _stop(run, signal.SIGTERM)
    assert code == 130 and err[-1] == MESSAGE, err
    _no_temporaries(run.out)
    # The signal was held back until both renames were done: both files are the new ones.
    results = json.loads((run.out / "results.json").read_text())
    assert results["verdict"]["status"] == "fail"
    html = (run.out / "report.html").read_text()
    assert html.rstrip().endswith("</html>") and results["created_at"] in html
    assert (run.out / "notes.txt").read_text() == "mine\n"


@pytest.mark.slow
def test_a_rerun_after_an_interruption_completes(runs, study_files):
    run = runs["staging-rerun"]
    code, _ = _stop(run, signal.SIGINT)
    assert code == 130 and not run.out.exists()
    # The same command again, uninterrupted: nothing was left behind, so no --force is needed.
    env = {**os.environ, "PRIVAUDIT_CACHE_DIR": str(run.cache)}
    done = subprocess.run([str(SCRIPT), *_argv(study_files, run.out, *RERUN_EMBEDDERS)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 1, done.stderr
    results = json.loads((run.out / "results.json").read_text())
    assert results["verdict"]["status"] == "fail"
    _no_temporaries(run.out)
    # The interrupted run had embedded everything (and fitted copydetect) before it was stopped:
    # the rerun takes it all from the cache and embeds nothing again.
    embedded = results["run"]["embedded"]
    assert set(embedded) == {e["name"] for e in results["embedders"]} == {"pixels", "copydetect"}
    assert all(c["embedded"] == 0 and c["from_cache"] > 0 for c in embedded.values()), embedded


def test_deferred_signals_hold_a_signal_until_the_block_ends():
    from privaudit._util import deferred_signals

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the signal has arrived: without deferral, KeyboardInterrupt here
            steps.append("block finished")
    assert steps == ["block finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
