"""The command line: parses arguments, calls the library, maps errors to exit codes.

Exit codes: 0 pass (and warn, unless ``--fail-on warn``), 1 gate failed, 2 usage, configuration,
input or output error, 3 missing optional dependency, 4 internal error, 130 interrupted. Errors are one
line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
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
  2  usage, configuration, policy, input or output error
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, help="what to do")

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
    a.add_argument("--waivers", metavar="FILE", help="a reviewer's waivers TOML file (see 'privaudit waivers init'); the verdict says how many it relied on")
    a.add_argument(
        "--no-images",
        action="store_true",
        help="shareable outputs: no image data in the report; image ids, patient ids and paths pseudonymised in both files",
    )
    a.add_argument("--config", metavar="FILE", help="audit configuration TOML file; options below override it")
    a.add_argument("--checks", metavar="LIST", help="comma-separated checks to run (default: copies,metadata,quality)")
    a.add_argument(
        "--embedder",
        metavar="NAME[,NAME]",
        help="embedding space(s) of the checks, the first the primary one (default: pixels; the copies check adds copydetect where a set is too large for its aligned comparison)",
    )
    a.add_argument("--seed", type=_nonneg_int, metavar="N", help="random seed (default: 0)")
    a.add_argument(
        "--max-skipped",
        type=_fraction,
        metavar="FRACTION",
        help="largest share of undecodable files per input before it is refused (default: 0.05)",
    )
    _cache_options(a)
    a.add_argument(
        "--cluster",
        metavar="ADDRESS",
        help="embed and run the exact kNN searches on a Ray cluster: 'local' (a local instance), 'local:N' "
        "(N worker CPUs) or a Ray address such as ray://HOST:10001 (needs pip install 'privaudit[cluster]'; "
        "default: everything in this process)",
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

    e = sub.add_parser(
        "embed",
        help="export the embeddings of a set of images",
        description="Embed a set of images with one embedder and write the vectors to an .npy file "
        "(one unit-length float32 row per image, in the order of the image ids, which are written "
        "next to it as FILE.ids.txt). Embedders that learn from the audit's images are fitted on --fit-on.",
    )
    e.add_argument("input", metavar="INPUT", help="a folder of images, an .npy/.npz array file or a .csv manifest")
    e.add_argument("--embedder", required=True, metavar="NAME", help="the embedder (see 'privaudit embedders')")
    e.add_argument("--out", required=True, metavar="FILE.npy", help="where to write the vectors (refused if it exists, unless --force)")
    e.add_argument("--fit-on", metavar="PATH", help="training images to fit a learned embedder on (copydetect)")
    e.add_argument("--config", metavar="FILE", help="configuration TOML with [embedder_options.<name>] tables")
    e.add_argument("--seed", type=_nonneg_int, default=0, metavar="N", help="seed of a learned embedder's fit (default: 0)")
    e.add_argument("--force", action="store_true", help="replace an existing --out file")
    _cache_options(e)
    _common(e)

    dp = sub.add_parser(
        "dp-sweep",
        help="retrain a reference generator with DP-SGD at several ε and audit each (the trade-off curve)",
        description="Train a reference generator on --train with DP-SGD (Opacus) at each ε of --epsilons "
        "(inf: the same training without DP), sample a synthetic set from each, audit each set like "
        "'privaudit audit' (same holdout, embedders and checks), bound each generator's ε empirically "
        "with a one-run canary audit, and write the quality/privacy trade-off curve into --out "
        "(dp_results.json, dp_report.html, points/<eps>/). Re-running into the same --out resumes: "
        "finished points are kept. ε is per training image: a patient with k scans is protected at about kε.",
        epilog="exit codes:\n  0  the sweep finished\n  2  usage, configuration, input or output error\n"
        "  3  opacus is missing (pip install 'privaudit[dp]')\n  4  internal error\n  130 interrupted (finished points are kept)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dp.add_argument("--train", required=True, metavar="PATH", help="the training images (folder, .npy/.npz, or .csv manifest)")
    dp.add_argument("--holdout", metavar="PATH", help="real images of other patients; calibrate every audit (strongly recommended)")
    dp.add_argument("--epsilons", default="1,3,10,inf", metavar="LIST", help="target ε values, comma-separated; inf = no DP (default: 1,3,10,inf)")
    dp.add_argument("--delta", type=float, metavar="D", help="δ of every guarantee (default: 1/(10 N), N = training images)")
    dp.add_argument("--generator", default="vae", metavar="NAME", help="reference generator (default: vae)")
    dp.add_argument("--epochs", type=_pos_int, metavar="N", help="training epochs per point (default: 30)")
    dp.add_argument("--batch-size", type=_pos_int, metavar="N", help="expected images per step (default: 64)")
    dp.add_argument("--max-grad-norm", type=float, metavar="C", help="per-image clipping norm (default: 1.0)")
    dp.add_argument("--accountant", choices=("prv", "rdp"), help="Opacus privacy accountant (default: prv)")
    dp.add_argument("--canaries", type=_nonneg_int, metavar="N", help="canaries of the empirical audit (default: a quarter of the training images, at most 500; 0: none)")
    dp.add_argument("--n-synthetic", type=_pos_int, metavar="N", help="images each generator samples (default: as many as it trained on, at most 2000)")
    dp.add_argument("--size", type=_pos_int, metavar="PX", help="image side the generators work at (default: 32)")
    dp.add_argument("--one-scan-per-patient", action="store_true", help="train on one scan per patient, so that ε holds per patient (needs patient ids)")
    dp.add_argument("--config", metavar="FILE", help="audit configuration TOML for every point's audit; options below override it")
    dp.add_argument("--checks", metavar="LIST", help="checks of every point's audit (default: the audit's defaults without metadata)")
    dp.add_argument("--embedder", metavar="NAME[,NAME]", help="embedding space(s) of the audits (default: pixels, as for audit)")
    dp.add_argument("--seed", type=_nonneg_int, default=0, metavar="N", help="random seed (default: 0)")
    dp.add_argument("--out", default="dp-sweep-out", metavar="DIR", help="output folder (default: dp-sweep-out); a folder holding the same sweep is resumed")
    dp.add_argument("--force", action="store_true", help="write into a non-empty folder that holds no sweep (nothing in it is removed)")
    _cache_options(dp)
    _common(dp)

    ls = sub.add_parser(
        "embedders",
        help="list the available embedders",
        description="List the available embedders with their dimension, input and fingerprint.",
    )
    _common(ls)

    c = sub.add_parser("cache", help="manage the embedding cache", description="Manage the on-disk embedding cache.")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION", parser_class=_Parser, required=True, help="purge or path")
    purge = csub.add_parser(
        "purge",
        help="delete every cached embedding and fitted model",
        description="Delete every cached embedding and fitted model under the cache folder "
        "(only privaudit's own 'embeddings' and 'models' subfolders).",
    )
    purge.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: the user's private privaudit cache)")
    _common(purge)
    where = csub.add_parser("path", help="print the cache folder", description="Print the cache folder that would be used.")
    where.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: the user's private privaudit cache)")
    _common(where)

    r = sub.add_parser(
        "report",
        help="re-render the report from a results.json, without recomputing",
        description="Re-render report.html from a results.json without recomputing anything. "
        "Thumbnails are reloaded from the input paths recorded in results.json when those sets are "
        "still there with the same content hash; otherwise the report says why they are missing.",
    )
    r.add_argument("results", metavar="RESULTS.json", help="a results.json written by 'privaudit audit'")
    r.add_argument(
        "--out",
        metavar="FILE",
        help="the HTML file to write (default: report.html, or report-no-images.html with --no-images, next to RESULTS.json)",
    )
    r.add_argument("--pdf", action="store_true", help="also print the report to PDF (same name, .pdf) with headless Chromium")
    r.add_argument(
        "--no-images",
        action="store_true",
        help="shareable report: no image data, ids and paths pseudonymised; also writes the pseudonymised results next to it (same name, .json)",
    )
    r.add_argument("--force", action="store_true", help="replace existing output files")
    _common(r)

    g = sub.add_parser(
        "gate",
        help="re-decide the verdict of a results.json with a policy and waivers, without recomputing",
        description="Re-decide pass/warn/fail from the figures in a results.json with a policy (and "
        "a reviewer's waivers), without recomputing anything. The exit code is the same as "
        "'privaudit audit' would give with that policy: made for approval pipelines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("results", metavar="RESULTS.json", help="a results.json written by 'privaudit audit'")
    g.add_argument("--policy", metavar="FILE", help="policy TOML file (default: the shipped default policy)")
    g.add_argument("--waivers", metavar="FILE", help="a reviewer's waivers TOML file")
    g.add_argument(
        "--fail-on",
        choices=("fail", "warn"),
        default="fail",
        help="lowest verdict that makes the exit code 1 (default: fail)",
    )
    g.add_argument("--json", action="store_true", help="print the verdict as JSON instead of text")
    g.add_argument(
        "--out",
        metavar="FILE",
        help="also write the results with the new verdict to FILE (then 'privaudit report FILE' shows it)",
    )
    g.add_argument("--force", action="store_true", help="replace an existing --out file")
    _common(g)

    pol = sub.add_parser(
        "policy",
        help="write or check a policy file",
        description="Write the commented default policy to start your own from, or check a policy file.",
    )
    pol_sub = pol.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=_Parser, help="what to do")
    pi = pol_sub.add_parser("init", help="write the commented default policy", description="Write the commented default policy to FILE (never over an existing file without --force).")
    pi.add_argument("file", nargs="?", default="privaudit-policy.toml", metavar="FILE", help="where to write it (default: privaudit-policy.toml)")
    pi.add_argument("--force", action="store_true", help="replace an existing FILE")
    _common(pi)
    pc = pol_sub.add_parser("check", help="validate a policy file and list its rules", description="Validate a policy file (one-line error, exit 2, when it is malformed) and list its rules.")
    pc.add_argument("file", metavar="FILE", help="the policy TOML file")
    _common(pc)

    wv = sub.add_parser(
        "waivers",
        help="write a review worksheet for the flagged items of an audit",
        description="Reviewer waivers: decisions on flagged items (not a copy, or accepted), with "
        "name, date and reason, that 'audit' and 'gate' take with --waivers.",
    )
    wv_sub = wv.add_subparsers(dest="waivers_command", metavar="ACTION", parser_class=_Parser, help="what to do")
    wi = wv_sub.add_parser(
        "init",
        help="write a review worksheet listing every flagged item as pending",
        description="Write a waivers TOML file listing every flagged item of RESULTS.json with "
        "decision = \"pending\", for a reviewer to fill in.",
    )
    wi.add_argument("results", metavar="RESULTS.json", help="a results.json written by 'privaudit audit'")
    wi.add_argument("file", nargs="?", metavar="FILE", help="where to write it (default: waivers.toml next to RESULTS.json)")
    wi.add_argument("--force", action="store_true", help="replace an existing FILE")
    _common(wi)
    wc = wv_sub.add_parser("check", help="validate a waivers file", description="Validate a waivers file (one-line error, exit 2, when it is malformed) and count its decisions.")
    wc.add_argument("file", metavar="FILE", help="the waivers TOML file")
    _common(wc)
    return parser


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="embedding cache folder (default: $PRIVAUDIT_CACHE_DIR or the user's private cache folder); "
        "it holds patient-derived data and is created readable by its owner only",
    )
    p.add_argument("--no-cache", action="store_true", help="embed everything afresh and store nothing")
    p.add_argument("--device", default="cpu", metavar="cpu|cuda", help="where models run (default: cpu)")


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


def _pos_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
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
        _configure_logging(verbose=getattr(args, "verbose", False), debug=getattr(args, "debug", False))
        commands = {
            "audit": _cmd_audit,
            "demo": _cmd_demo,
            "report": _cmd_report,
            "gate": _cmd_gate,
            "policy": _cmd_policy,
            "waivers": _cmd_waivers,
            "embed": _cmd_embed,
            "dp-sweep": _cmd_dp_sweep,
            "embedders": _cmd_embedders,
            "cache": _cmd_cache,
        }
        return commands[args.command](args)
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
    if args.device != "cpu":
        overrides["device"] = args.device
    if args.cluster is not None:
        overrides["cluster"] = args.cluster
    if overrides:
        config = config.replace(**overrides)
    from privaudit.waivers import Waivers

    policy = Policy.from_toml(args.policy) if args.policy else Policy.default()
    waivers = Waivers.from_toml(args.waivers) if args.waivers else None
    result = audit(
        args.train, args.synthetic, args.holdout,
        config=config, policy=policy, out=args.out, force=args.force, waivers=waivers, no_images=args.no_images,
        cache=_cache_arg(args),
    )
    print(summarize(result, out=args.out))
    return _exit_code(result.verdict.status.value, args.fail_on)


def _exit_code(status: str, fail_on: str) -> int:
    failed = status == "fail" or (status == "warn" and fail_on == "warn")
    return EXIT_GATE_FAILED if failed else EXIT_OK


def _verdict_lines(verdict: Any, indent: str = "") -> list[str]:
    lines = [f"{indent}verdict: {verdict.status.value.upper()}"]
    for reason in verdict.reasons:
        lines.append(f"{indent}  - {reason.message}")
    review = getattr(verdict, "review", None)
    if review is not None:
        extra = []
        if review.unmatched:
            extra.append(f"{len(review.unmatched)} matched nothing")
        if review.n_pending:
            extra.append(f"{review.n_pending} pending")
        lines.append(f"{indent}waivers relied on: {review.n_applied}" + (f" ({', '.join(extra)})" if extra else ""))
        for note in review.notes:
            lines.append(f"{indent}note: {note}")
    return lines


def summarize(result: Any, *, out: str | None = None, indent: str = "") -> str:
    """A few lines for the terminal: the verdict, its reasons, the headline figures, the files."""
    lines = _verdict_lines(result.verdict, indent)
    for name, check in result.checks.items():
        lines.append(f"{indent}{name}: {check.summary}")
    for role, summary in result.inputs.items():
        if summary.n_skipped:
            lines.append(f"{indent}{role}: {summary.n_skipped} file(s) skipped (listed in the report)")
    if out is not None:
        lines.append(f"{indent}results: {out}/results.json")
        lines.append(f"{indent}report:  {out}/report.html")
    return "\n".join(lines)


def _cache_arg(args: argparse.Namespace) -> Any:
    if args.no_cache:
        if args.cache_dir:
            raise ConfigError("--cache-dir and --no-cache contradict each other")
        return False
    return args.cache_dir  # None: the default folder


def _cmd_embed(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from privaudit._util import atomic_write_bytes, atomic_write_text
    from privaudit.config import AuditConfig
    from privaudit.data import load_imageset
    from privaudit.embed import get_embedder, parse_spec
    from privaudit.errors import OutputError
    from privaudit.pipeline import _as_cache

    out = Path(args.out)
    if out.suffix != ".npy":
        raise ConfigError(f"--out must end in .npy; got {out}")
    ids_file = out.with_suffix(".ids.txt")
    for target in (out, ids_file):
        if target.exists() and not args.force:
            raise OutputError(f"{target} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise OutputError(f"the folder of --out does not exist: {out.parent}")
    config = AuditConfig.from_toml(args.config) if args.config else AuditConfig()
    name = parse_spec(args.embedder)[0]
    embedder = get_embedder(args.embedder, device=args.device, options=config.embedder_options_for(name))
    cache = _as_cache(_cache_arg(args))
    if embedder.requires_fit:
        if not args.fit_on:
            raise ConfigError(f"embedder {name!r} learns from training images: give them with --fit-on PATH")
        embedder.fit(load_imageset(args.fit_on, role="train"), seed=args.seed, cache=cache)
    elif args.fit_on:
        raise ConfigError(f"embedder {name!r} is not fitted; --fit-on does not apply")
    images = load_imageset(args.input, role="input")
    if cache is None:
        vectors = embedder.embed(images)
    else:
        vectors = cache.embed(embedder.fingerprint(), images.pixel_digests, images.images, embedder.dim, lambda chunk: embedder.embed(chunk), label=args.embedder)
    import io

    buf = io.BytesIO()
    np.save(buf, vectors)
    atomic_write_bytes(out, buf.getvalue())
    atomic_write_text(ids_file, "".join(f"{i}\n" for i in images.ids))
    print(f"{len(images)} x {embedder.dim} embeddings ({args.embedder}, fingerprint {embedder.fingerprint()}) -> {out}; ids -> {ids_file}")
    if images.skipped:
        print(f"{len(images.skipped)} file(s) skipped: " + "; ".join(f"{s.path}: {s.reason}" for s in images.skipped[:5]))
    return EXIT_OK


def _cmd_embedders(args: argparse.Namespace) -> int:
    from privaudit.embed import EMBEDDERS, get_embedder

    rows = []
    for name in EMBEDDERS.names():
        cls = EMBEDDERS.get(name)
        if cls.requires_fit:
            rows.append((name, str(cls.dim), _size(cls.preprocessing), "fitted on each training set", cls.description))
        elif name == "torchscript":
            rows.append((name, "model's", "declared", "sha256 of the model file", "your own model: --embedder torchscript:PATH"))
        else:
            emb = get_embedder(name)
            rows.append((name, str(emb.dim), _size(emb.preprocessing), emb.fingerprint(), emb.description))
    widths = [max(len(r[i]) for r in rows + [("name", "dim", "input", "fingerprint", "")]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(("name", "dim", "input", "fingerprint"), widths)) + "  description")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return EXIT_OK


def _size(pre: Any) -> str:
    return f"{pre.size[0]}x{pre.size[1]}x{pre.channels}"


def _cmd_cache(args: argparse.Namespace) -> int:
    from privaudit.embed.cache import EmbeddingCache

    cache = EmbeddingCache(args.cache_dir)
    if args.cache_command == "path":
        print(cache.root)
        return EXIT_OK
    files, size = cache.purge()
    print(f"removed {files} file(s), {size / 1e6:.1f} MB, from {cache.root}")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from privaudit.demo import run_demo

    print(run_demo(args.out, seed=args.seed, force=args.force))
    return EXIT_OK


def _refuse_existing(path: Path, force: bool, what: str = "") -> None:
    from privaudit.errors import OutputError

    if path.exists() and not force:
        raise OutputError(f"{path} exists{what}; pass --force to replace it, or choose another file")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder")
    if not path.parent.is_dir():
        raise OutputError(f"the folder {path.parent} does not exist")


def _write(path: Path, text: str) -> None:
    from privaudit._util import atomic_write_text
    from privaudit.errors import OutputError

    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None


def _cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from privaudit._util import dumps_json
    from privaudit.redact import pseudonymise
    from privaudit.reports.html import reload_images, render_html
    from privaudit.results import load_results

    results_path = Path(args.results)
    data = load_results(results_path)
    default = "report-no-images.html" if args.no_images else "report.html"
    out = Path(args.out) if args.out else results_path.parent / default
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out}: expected an .html file name")
    outputs = [out]
    if args.no_images:
        outputs.append(out.with_suffix(".json"))
    if args.pdf:
        outputs.append(out.with_suffix(".pdf"))
        from privaudit.reports.pdf import find_chromium

        find_chromium()  # fail before writing anything when Chromium is missing
    for path in outputs:
        _refuse_existing(path, args.force)
    if args.no_images:
        shareable = pseudonymise(data)
        _write(out, render_html(shareable, no_images=True))
        _write(outputs[1], dumps_json(shareable))
        print(f"report:  {out} (no images; ids pseudonymised)")
        print(f"results: {outputs[1]} (pseudonymised)")
    else:
        loader, notes = reload_images(data, results_path)
        _write(out, render_html(data, image_loader=loader, image_notes=notes))
        print(f"report:  {out}")
        for note in notes.values():
            print(f"note: thumbnails not shown: {note}")
    if args.pdf:
        from privaudit.reports.pdf import html_to_pdf

        print(f"pdf:     {html_to_pdf(out, outputs[-1])}")
    return EXIT_OK


def _cmd_gate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from privaudit._util import dumps_json, to_jsonable
    from privaudit.policy import Policy
    from privaudit.results import load_results
    from privaudit.waivers import Waivers

    data = load_results(args.results)
    policy = Policy.from_toml(args.policy) if args.policy else Policy.default()
    waivers = Waivers.from_toml(args.waivers) if args.waivers else None
    if args.out:
        _refuse_existing(Path(args.out), args.force)
    verdict = policy.evaluate(data["checks"], waivers=waivers, inputs=data["inputs"])
    if args.out:
        updated = dict(data)
        updated["verdict"] = to_jsonable(verdict)
        _write(Path(args.out), dumps_json(updated))
    if args.json:
        print(json.dumps(to_jsonable(verdict), indent=2, ensure_ascii=False))
    else:
        print("\n".join(_verdict_lines(verdict)))
        if args.out:
            print(f"results: {args.out} (with this verdict)")
    return _exit_code(verdict.status.value, args.fail_on)


def _cmd_policy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from privaudit.policy import Policy, default_policy_text

    if args.policy_command is None:
        raise ConfigError("privaudit policy: choose an action: init or check (see 'privaudit policy --help')")
    if args.policy_command == "init":
        path = Path(args.file)
        _refuse_existing(path, args.force)
        _write(path, default_policy_text())
        print(f"policy: {path} (the commented default; edit it, then: privaudit policy check {path})")
        return EXIT_OK
    policy = Policy.from_toml(args.file)
    print(f"{args.file}: valid policy, {len(policy.rules)} rule(s); not assessed counts as {policy.not_assessed.value}")
    for rule in policy.rules:
        bound = "" if rule.use == "value" else f", compares {rule.use}"
        min_n = f", min_n {rule.min_n}" if rule.min_n else ""
        print(f"  - {rule.metric}: warn {rule.warn}, fail {rule.fail}{bound}{min_n}, not assessed -> {rule.not_assessed.value}")
    return EXIT_OK


def _cmd_waivers(args: argparse.Namespace) -> int:
    from pathlib import Path

    from privaudit.results import load_results
    from privaudit.waivers import PENDING, Waivers, worksheet_text

    if args.waivers_command is None:
        raise ConfigError("privaudit waivers: choose an action: init or check (see 'privaudit waivers --help')")
    if args.waivers_command == "init":
        data = load_results(args.results)
        path = Path(args.file) if args.file else Path(args.results).parent / "waivers.toml"
        _refuse_existing(path, args.force)
        _write(path, worksheet_text(data))
        n = worksheet_text(data).count("\n[[waiver]]\n")
        print(f"waivers: {path} ({n} flagged item(s), all pending; fill in decision, reviewer, date and reason)")
        return EXIT_OK
    waivers = Waivers.from_toml(args.file)
    decided = [w for w in waivers.waivers if w.decision != PENDING]
    print(f"{args.file}: valid waivers file, {len(decided)} decided, {len(waivers.waivers) - len(decided)} pending")
    return EXIT_OK


def _cmd_dp_sweep(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    from privaudit.config import AuditConfig
    from privaudit.dp.generators import GENERATORS
    from privaudit.dp.sweep import SweepConfig, _default_checks, dp_sweep, parse_epsilons
    from privaudit.dp.train import TrainOptions

    audit_config = AuditConfig.from_toml(args.config) if args.config else AuditConfig(checks=_default_checks())
    overrides: dict[str, Any] = {}
    if args.embedder is not None:
        overrides["embedders"] = tuple(e.strip() for e in args.embedder.split(",") if e.strip())
    if args.checks is not None:
        overrides["checks"] = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    if overrides:
        audit_config = audit_config.replace(**overrides)
    train_changes: dict[str, Any] = {}
    for key in ("epochs", "batch_size", "max_grad_norm", "accountant"):
        value = getattr(args, key)
        if value is not None:
            train_changes[key] = value
    if args.delta is not None and not math.isfinite(args.delta):
        raise ConfigError(f"--delta must be a number in (0, 1); got {args.delta}")
    generator_cls = GENERATORS.get(args.generator)
    config = SweepConfig(
        epsilons=parse_epsilons(args.epsilons),
        delta=args.delta,
        generator=args.generator,
        generator_options=generator_cls.Options(),
        train=dataclasses.replace(TrainOptions(), **train_changes),
        size=args.size or 32,
        n_synthetic=args.n_synthetic,
        canaries=args.canaries,
        one_scan_per_patient=args.one_scan_per_patient,
        audit=audit_config,
        seed=args.seed,
        device=args.device,
    )
    tty = sys.stderr.isatty()

    def progress(message: str) -> None:
        if tty:  # one self-overwriting line on a terminal; nothing in CI logs
            print("\r\033[K" + message, end="", file=sys.stderr, flush=True)

    result = dp_sweep(args.train, args.holdout, config=config, out=args.out, force=args.force, cache=_cache_arg(args), progress=progress)
    if tty:
        print(file=sys.stderr)
    print(summarize_sweep(result.data, out=args.out))
    return EXIT_OK


def summarize_sweep(data: Any, *, out: str | None = None) -> str:
    """A few lines for the terminal: one per point, the control, the files."""
    lines = [f"DP sweep ({data['privacy']['accountant']} accountant, δ = {data['privacy']['delta']:.3g}, per image): {len(data['points'])} point(s)"]
    for p in data["points"]:
        target = "inf (no DP)" if p["epsilon"] is None else f"{p['epsilon']:g}"
        achieved = "-" if p["training"]["epsilon"] is None else f"{p['training']['epsilon']:.3f}"
        emp = p.get("empirical")
        lb = "n/a" if not emp else f"{emp['epsilon_lb']:.3f}"
        lines.append(f"  ε {target}: accountant {achieved}, empirical lower bound {lb}, audit {p['verdict']}, {p['seconds']['total']:.0f} s")
    for w in data["warnings"]:
        lines.append(f"note: {w}")
    lines.append(data["privacy"]["statement"])
    if out is not None:
        lines.append(f"results: {out}/dp_results.json")
        lines.append(f"report:  {out}/dp_report.html")
    return "\n".join(lines)
