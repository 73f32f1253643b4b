"""Compare strategies on one task: statistics, decision under budgets, and the report.

``build_report`` turns evaluated strategies (``StrategyResult``) into report.html, report.md and
report.json; ``validate_report`` checks a report dict against the versioned report.json schema.
The orchestration that trains and evaluates each strategy lives in ``compare.run``.
"""

from distilltune.compare.report import StrategyResult, analyse, build_report, curve_from_metrics
from distilltune.compare.schema import SCHEMA_VERSION, validate_report

__all__ = [
    "SCHEMA_VERSION",
    "StrategyResult",
    "analyse",
    "build_report",
    "curve_from_metrics",
    "validate_report",
]
