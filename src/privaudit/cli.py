"""The command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 pass (and warn, unless ``--fail-on warn``), 1 gate failed, 2 usage, configuration
or input error, 3 missing optional dependency, 4 internal error, 130 interrupted. Errors are one
line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from privaudit._version import __version__
from privaudit.errors import (
    EXIT_GATE_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    PrivauditError,
)

PROG = "privaudit"

EPILOG = """\
exit codes:
  0  the gate passed (a warning passes too, unless --fail-on warn)
  1  the gate failed
  2  usage, configuration, policy or input error
  3  an optional dependency is missing (the message names the pip extra)
  4  internal error (a bug: please report it with the --debug output)
  130 interrupted
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and raise instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (also used to check the help texts)."""
    parser = _Parser(
        prog=PROG,
        description="Audit synthetic medical images for privacy leaks before they are shared.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser(
        "audit",
        help="audit a synthetic set against its training set",
        description="Audit a synthetic image set against the training set it was made from, and "
        "decide pass/warn/fail with a policy. Writes results.json and report.html into --out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = a.add_argument_group("inputs (each a folder of images, an .npy/.npz array file, or a .csv manifest)")
    inputs.add_argument("--train", required=True, metavar="PATH", help="the generator's training images")
    inputs.add_argument("--synthetic", required=True, metavar="PATH", help="the synthetic images to be released")
    inputs.add_argument(
        "--holdout",
        metavar="PATH",
        help="real images of patients not in training, from the same population; they calibrate "
        "the thresholds (strongly recommended)",
    )
    a.add_argument("--policy", metavar="FILE", help="policy TOML file (default: the shipped default policy)")
    a.add_argument("--config", metavar="FILE", help="audit configuration TOML file; options below override it")
    a.add_argument("--checks", metavar="LIST", help="comma-separated checks to run (default: copies,quality)")
    a.add_argument(
        "--embedder",
        metavar="NAME[,NAME]",
        help="embedding space(s) of the checks, the first the primary one (default: pixels)",
    )
    a.add_argument("--seed", type=_nonneg_int, metavar="N", help="random seed (default: 0)")
    a.add_argument(
        "--max-skipped",
        type=_fraction,
        metavar="FRACTION",
        help="largest share of undecodable files per input before it is refused (default: 0.05)",
    )
    a.add_argument("--out", default="privaudit-out", metavar="DIR", help="output folder (default: privaudit-out)")
    a.add_argument("--force", action="store_true", help="write into a non-empty --out (replaces only results.json and report.html)")
    a.add_argument(
        "--fail-on",
        choices=("fail", "warn"),
        default="fail",
        help="lowest verdict that makes the exit code 1 (default: fail)",
    )
    _common(a)

    d = sub.add_parser(
        "demo",
        help="build phantom data and audit a leaky and a clean synthetic set",
        description="Build a seeded phantom study (training, holdout, and a leaky and a clean "
        "synthetic set), audit both into OUT/leaky and OUT/clean, and print both verdicts and how "
        "many planted copies were found. Exits 0 when the demo ran.",
    )
    d.add_argument("--out", default="demo-audit", metavar="DIR", help="output folder (default: demo-audit)")
    d.add_argument("--force", action="store_true", help="write into a non-empty --out")
    d.add_argument("--seed", type=_nonneg_int, default=0, metavar="N", help="random seed (default: 0)")
    _common(d)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer; got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(args_list)
        except SystemExit as exc:  # --help and --version exit 0 through argparse
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        _configure_logging(verbose=args.verbose, debug=args.debug)
        return {"audit": _cmd_audit, "demo": _cmd_demo}[args.command](args)
    except PrivauditError as exc:
        if debug:
            traceback.print_exc()
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted; no half-written output was left behind")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        _error(f"internal error: {type(exc).__name__}: {detail} (run again with --debug for the traceback)")
        return EXIT_INTERNAL


def console_main() -> NoReturn:
    """Entry point of the ``privaudit`` script: SIGTERM is handled like Ctrl-C."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    sys.exit(main())


def _error(message: str) -> None:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)


def _configure_logging(*, verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def _cmd_audit(args: argparse.Namespace) -> int:
    from privaudit.pipeline import audit
    from privaudit.config import AuditConfig
    from privaudit.policy import Policy

    config = AuditConfig.from_toml(args.config) if args.config else AuditConfig()
    overrides: dict[str, Any] = {}
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.embedder is not None:
        overrides["embedders"] = tuple(e.strip() for e in args.embedder.split(",") if e.strip())
    if args.checks is not None:
        overrides["checks"] = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    if args.max_skipped is not None:
        overrides["max_skipped"] = args.max_skipped
    if overrides:
        config = config.replace(**overrides)
    policy = Policy.from_toml(args.policy) if args.policy else Policy.default()
    result = audit(args.train, args.synthetic, args.holdout, config=config, policy=policy, out=args.out, force=args.force)
    print(summarize(result, out=args.out))
    status = result.verdict.status.value
    failed = status == "fail" or (status == "warn" and args.fail_on == "warn")
    return EXIT_GATE_FAILED if failed else EXIT_OK


def summarize(result: Any, *, out: str | None = None, indent: str = "") -> str:
    """A few lines for the terminal: the verdict, its reasons, the headline figures, the files."""
    lines = [f"{indent}verdict: {result.verdict.status.value.upper()}"]
    for reason in result.verdict.reasons:
        lines.append(f"{indent}  - {reason.message}")
    for name, check in result.checks.items():
        lines.append(f"{indent}{name}: {check.summary}")
    for role, summary in result.inputs.items():
        if summary.n_skipped:
            lines.append(f"{indent}{role}: {summary.n_skipped} file(s) skipped (listed in the report)")
    if out is not None:
        lines.append(f"{indent}results: {out}/results.json")
        lines.append(f"{indent}report:  {out}/report.html")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from privaudit.demo import run_demo

    print(run_demo(args.out, seed=args.seed, force=args.force))
    return EXIT_OK
