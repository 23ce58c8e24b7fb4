"""DP stage: reference generators trained with DP-SGD (Opacus) at several privacy budgets, each
sample set audited like any other, and the quality/privacy trade-off curve.

Names: :func:`dp_sweep`, :class:`SweepConfig`, :class:`TrainOptions`, :data:`GENERATORS`,
:class:`VAEOptions`, :func:`one_run_audit`, :func:`load_dp_results`. Opacus (the ``dp`` extra)
is imported only when a generator is trained with DP.
"""

from privaudit.dp.empirical import EmpiricalEpsilon, epsilon_lower_bound, one_run_audit
from privaudit.dp.generators import GENERATORS, ReferenceGenerator, VAEOptions
from privaudit.dp.sweep import DP_SCHEMA_VERSION, SweepConfig, SweepResult, dp_sweep, load_dp_results, parse_epsilons
from privaudit.dp.train import TrainOptions, TrainStats

__all__ = [
    "DP_SCHEMA_VERSION",
    "EmpiricalEpsilon",
    "GENERATORS",
    "ReferenceGenerator",
    "SweepConfig",
    "SweepResult",
    "TrainOptions",
    "TrainStats",
    "VAEOptions",
    "dp_sweep",
    "epsilon_lower_bound",
    "load_dp_results",
    "one_run_audit",
    "parse_epsilons",
]
