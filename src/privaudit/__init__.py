"""privaudit: audit synthetic medical images for privacy leaks before they are shared.

The public API is imported lazily, so ``import privaudit`` stays cheap (no torch, no FAISS)::

    import privaudit
    result = privaudit.audit("train.csv", "synthetic/", "holdout.csv", out="audit-out")
    print(result.verdict.status)

Names: :func:`audit`, :class:`AuditConfig`, :class:`AuditResult`, :class:`Policy`,
:func:`load_imageset`, :class:`ImageSet`, :class:`Waivers`, :func:`load_results`,
:data:`__version__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from privaudit._version import __version__

_LAZY = {
    "audit": "privaudit.pipeline",
    "AuditConfig": "privaudit.config",
    "AuditResult": "privaudit.results",
    "Policy": "privaudit.policy",
    "load_imageset": "privaudit.data",
    "ImageSet": "privaudit.data",
    "Waivers": "privaudit.waivers",
    "load_results": "privaudit.results",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:
    from privaudit.pipeline import audit
    from privaudit.config import AuditConfig
    from privaudit.data import ImageSet, load_imageset
    from privaudit.policy import Policy
    from privaudit.results import AuditResult, load_results
    from privaudit.waivers import Waivers


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'privaudit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
