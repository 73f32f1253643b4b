"""Monitoring after the launch: traffic, input/knowledge/output drift and alerts from the request log.

``run_monitor(db, task, window_s)`` returns a JSON-able report (per-window signals, out-of-distribution
and knowledge-gap clusters, the latest window's alerts); ``render_html`` turns it into a
self-contained page. ``distilltune monitor`` is the command line (exit status 1 when an alert fires).
"""

from distilltune.monitor.drift import MMDResult, mmd_test
from distilltune.monitor.logread import parse_duration, read_log
from distilltune.monitor.render import render_html, summary_lines
from distilltune.monitor.run import run_monitor

__all__ = [
    "MMDResult",
    "mmd_test",
    "parse_duration",
    "read_log",
    "render_html",
    "run_monitor",
    "summary_lines",
]
