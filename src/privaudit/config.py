"""Audit configuration: frozen dataclasses, loaded from TOML with unknown keys refused.

A configuration file (``--config``) looks like this; every key is optional::

    seed = 0
    embedders = ["pixels"]   # the first is the primary space of the checks
    checks = ["copies", "metadata", "quality"]
    max_skipped = 0.05

    [copies]             # one table per check, holding that check's options
    alpha = 0.01

Command-line options override the file.
"""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from privaudit._util import did_you_mean
from privaudit.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib


def read_toml(path: str | Path, *, what: str) -> dict[str, Any]:
    """Parse a TOML file; any problem becomes a one-line ``ConfigError``."""
    p = Path(path)
    try:
        with open(p, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a folder, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {p} is not valid UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {p} is not valid TOML: {exc}") from None


def build_dataclass(cls: type, data: Mapping[str, Any], *, where: str) -> Any:
    """Instantiate the frozen dataclass ``cls`` from a mapping, checking keys and types.

    Unknown keys are refused with a did-you-mean suggestion; values of the wrong type are refused
    naming the key, the expected type and the value received.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table; got {_type_name(data)}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    renamed: Mapping[str, str] = getattr(cls, "RENAMED", {})
    for key, value in data.items():
        if key in renamed and key not in names:
            raise ConfigError(f"{where}: {key!r} was replaced by {renamed[key]}")
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key {key!r}{did_you_mean(key, names)}; known keys: {', '.join(names)}"
            )
        kwargs[key] = coerce(hints[key], value, where=f"{where}.{key}")
    return cls(**kwargs)


def coerce(tp: Any, value: Any, *, where: str) -> Any:
    """Check ``value`` against the type hint ``tp`` (TOML values only) and convert lists to tuples."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, where=where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        if value not in get_args(tp):
            allowed = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: got {value!r}{did_you_mean(str(value), map(str, get_args(tp)))}; expected one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list; got {_type_name(value)} {value!r}")
        (item,) = [a for a in get_args(tp) if a is not Ellipsis]
        return tuple(coerce(item, v, where=f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where=where)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a programming error in an options class
        raise TypeError(f"{where}: unsupported option type {tp!r}")
    if not ok:
        raise ConfigError(f"{where}: expected {tp.__name__}; got {_type_name(value)} {value!r}")
    return value


def _type_name(value: Any) -> str:
    return {dict: "table", list: "list", str: "text", bool: "boolean"}.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class AuditConfig:
    """Everything that determines what an audit measures (not how its verdict is decided: that is
    the policy's job).

    Attributes:
        seed: seeds every random choice; the same inputs and seed give the same result.
        embedders: the embedding spaces of the audit, by embedder name (see
            ``privaudit.embed``); the first is the primary space the checks run in, unless a
            check's options name another.
        checks: the checks to run, by name.
        max_skipped: share of undecodable files tolerated per input before it is refused.
        batch_size: images per embedding batch (results do not depend on it).
        device: where models run: ``"cpu"``, or ``"cuda"``/``"cuda:N"`` when a GPU is there.
        check_options: per-check options objects, keyed by check name; missing ones default.
        embedder_options: per-embedder options objects, keyed by embedder name (the
            ``[embedder_options.<name>]`` tables of a config file); missing ones default.
        cluster: run embedding and exact kNN on a Ray cluster (:mod:`privaudit.cluster`):
            ``"local"``, ``"local:N"`` or a Ray address; ``None`` (the default) runs in this
            process. It changes no figure, so ``results.json`` records it under ``run``, not
            in ``config``.

    Example:
        >>> cfg = AuditConfig.from_dict({"seed": 3, "copies": {"alpha": 0.05}})
        >>> cfg.seed, cfg.options_for("copies").alpha
        (3, 0.05)
    """

    seed: int = 0
    # pixels sees exact and photometric copies, and the copies check's aligned comparison undoes
    # mirrors, rotations, crops and shifts; where a set is too large for that comparison
    # (above copies.align_max), the check adds the copy-detection descriptor fitted on the training
    # images (copies.unaligned_embedders; README: "Embedders").
    embedders: tuple[str, ...] = ("pixels",)
    # metadata runs by default: reading headers costs little, and a header copied from a training
    # file leaks whatever the pixels are. On array inputs it is "not assessed" (no files), which
    # the default policy counts as a warning, not a failure.
    checks: tuple[str, ...] = ("copies", "metadata", "quality")
    max_skipped: float = 0.05
    batch_size: int = 256
    device: str = "cpu"
    check_options: Mapping[str, Any] = field(default_factory=dict)
    embedder_options: Mapping[str, Any] = field(default_factory=dict)
    cluster: str | None = None

    def __post_init__(self) -> None:
        from privaudit.checks import CHECKS
        from privaudit.embed import EMBEDDERS

        if not self.checks:
            raise ConfigError("no checks selected; available: " + ", ".join(CHECKS.names()))
        for name in self.checks:
            CHECKS.get(name)  # raises with did-you-mean
        if len(set(self.checks)) != len(self.checks):
            raise ConfigError(f"a check is listed twice in {', '.join(self.checks)}")
        if not self.embedders:
            raise ConfigError("no embedder selected; available: " + ", ".join(EMBEDDERS.names()))
        from privaudit.embed import parse_spec

        for spec in self.embedders:
            EMBEDDERS.get(parse_spec(spec)[0])
        if len(set(self.embedders)) != len(self.embedders):
            raise ConfigError(f"an embedder is listed twice in {', '.join(self.embedders)}")
        if not 0.0 <= self.max_skipped <= 1.0:
            raise ConfigError(f"max_skipped must lie in [0, 1]; got {self.max_skipped}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {self.batch_size}")
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"device must be 'cpu' or 'cuda' (or 'cuda:N'); got {self.device!r}")
        if self.device != "cpu":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r} was asked for, but CUDA is not available here; use --device cpu")
        if self.cluster is not None:
            from privaudit.cluster import parse_address

            parse_address(self.cluster)
            if self.device != "cpu":
                raise ConfigError(f"--cluster embeds on the cluster's CPU workers; --device {self.device} cannot be combined with it")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer; got {self.seed}")
        for name, options in self.check_options.items():
            expected = CHECKS.get(name).Options
            if not isinstance(options, expected):
                raise ConfigError(f"options for check {name!r} must be {expected.__name__}")
        for name, options in self.embedder_options.items():
            expected_e = EMBEDDERS.get(name).Options
            if expected_e is None or not isinstance(options, expected_e):
                raise ConfigError(f"embedder {name!r} takes no options of type {type(options).__name__}")

    def options_for(self, check: str) -> Any:
        """The options of ``check``: as configured, or that check's defaults."""
        from privaudit.checks import CHECKS

        options = self.check_options.get(check)
        return options if options is not None else CHECKS.get(check).Options()

    def replace(self, **changes: Any) -> AuditConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> AuditConfig:
        """Build from a mapping shaped like the TOML file (check options in tables named after
        the check)."""
        from privaudit.checks import CHECKS

        from privaudit.embed import EMBEDDERS

        top = {f.name for f in dataclasses.fields(cls)} - {"check_options", "embedder_options"}
        plain = {k: v for k, v in data.items() if k in top}
        options = {}
        embedder_options = {}
        raw = data.get("embedder_options", {})
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: embedder_options must be a table of [embedder_options.<name>] tables")
        for name, value in raw.items():
            cls_e = EMBEDDERS.get(name)
            if cls_e.Options is None:
                raise ConfigError(f"{where}: embedder {name!r} takes no options")
            embedder_options[name] = build_dataclass(cls_e.Options, value, where=f"{where}: [embedder_options.{name}]")
        for key, value in data.items():
            if key in top or key == "embedder_options":
                continue
            if key in CHECKS:
                options[key] = build_dataclass(CHECKS.get(key).Options, value, where=f"{where}: [{key}]")
            else:
                known = sorted(top) + ["embedder_options"] + CHECKS.names()
                raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, known)}; known keys: {', '.join(known)}")
        base = build_dataclass(cls, plain, where=where)
        return dataclasses.replace(base, check_options=options, embedder_options=embedder_options)

    @classmethod
    def from_toml(cls, path: str | Path) -> AuditConfig:
        """Load a configuration file (see the module docstring)."""
        return cls.from_dict(read_toml(path, what="config file"), where=f"config file {path}")

    def to_dict(self, sizes: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Plain values for ``results.json``, with the options of every selected check filled in,
        and those of every embedder the checks need for inputs of these ``sizes`` (without
        them, of every embedder they may need)."""
        from privaudit._util import to_jsonable

        from privaudit.embed import EMBEDDERS, parse_spec

        skip = {"check_options", "embedder_options", "cluster"}  # cluster: recorded under run
        out: dict[str, Any] = {f.name: to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in skip}
        out["check_options"] = {name: to_jsonable(self.options_for(name)) for name in self.checks}
        out["embedder_options"] = {}
        for spec in self.spaces_needed(sizes):
            name = parse_spec(spec)[0]
            if EMBEDDERS.get(name).Options is not None:
                out["embedder_options"][name] = to_jsonable(self.embedder_options_for(name))
        return out

    def embedder_options_for(self, name: str) -> Any:
        """The options of embedder ``name`` (registry name): as configured, or its defaults;
        ``None`` for embedders without options."""
        from privaudit.embed import EMBEDDERS

        options = self.embedder_options.get(name)
        if options is not None:
            return options
        cls = EMBEDDERS.get(name).Options
        return None if cls is None else cls()

    def spaces_needed(self, sizes: Mapping[str, int] | None = None) -> tuple[str, ...]:
        """Every embedding space the selected checks need, the primary one first: for inputs
        of these ``sizes`` (images per role, see :meth:`Check.spaces_for`), or without them
        every space they may need."""
        from privaudit.checks import CHECKS

        needed = list(self.embedders[:1])
        for name in self.checks:
            check, options = CHECKS.get(name)(), self.options_for(name)
            wanted = check.spaces(options, self.embedders) if sizes is None else check.spaces_for(options, self.embedders, sizes)
            for space in wanted:
                if space not in needed:
                    needed.append(space)
        return tuple(needed)
