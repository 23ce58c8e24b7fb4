"""A small name -> implementation registry, shared by embedders and checks.

Names are validated (lower-case identifiers) and duplicates are refused, so two plugins cannot
silently shadow each other. Third-party implementations arrive through an entry-point group and
are loaded lazily, the first time a name is not found among the built-ins; a plugin that fails to
import is an error, never a silent skip.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

from privaudit._util import did_you_mean
from privaudit.errors import ConfigError, PrivauditError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class Registry(Generic[T]):
    """Maps names to implementations of one kind (embedder classes, check classes, ...).

    Example:
        >>> widgets: Registry[type] = Registry("widget")
        >>> @widgets.register("round")
        ... class Round: ...
        >>> widgets.get("round") is Round
        True
    """

    def __init__(self, kind: str, *, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; malformed or duplicate names raise ``ValueError``."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"invalid {self.kind} name {name!r}: expected a lower-case identifier "
                "(letters, digits, underscores; at most 32 characters)"
            )
        if name in self._items:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the implementation registered as ``name`` (a ``ConfigError`` if there is none)."""
        if name not in self._items:
            self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, known)}; "
                f"available: {', '.join(known)}"
            ) from None

    def names(self) -> list[str]:
        """All registered names, plugins included, sorted."""
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        if name not in self._items:
            self._load_plugins()
        return name in self._items

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for entry in metadata.entry_points(group=self.entry_point_group or ""):
            if entry.name in self._items:
                raise PrivauditError(
                    f"plugin {entry.value!r} tries to register {self.kind} {entry.name!r}, "
                    "which already exists"
                )
            try:
                obj = entry.load()
            except Exception as exc:  # a broken plugin must be visible, not skipped
                raise PrivauditError(
                    f"{self.kind} plugin {entry.name!r} ({entry.value}) failed to import: {exc}"
                ) from exc
            self.add(entry.name, obj)
