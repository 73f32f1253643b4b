"""The data flywheel: learn from production failures with a human in the loop (docs/flywheel.md).

``run_flywheel(db, task, output, teacher=...)`` harvests the requests worth learning from (escalated,
unsure, thumbs-down, corrected, guarded, unanswered, out of distribution), labels them with the
teacher through the one request path, writes a review file and a static review page, merges the
accepted items into a new task-card version (refusing PII and eval duplicates), and gates a
retrained candidate against the current model with paired statistics. Above ``monitor`` in the
import order: it reads the request log (``serve``), evaluates (``evaluation``) and compares
(``compare``).
"""

from distilltune.flywheel.config import REASONS, FlywheelSettings
from distilltune.flywheel.run import STAGES, run_flywheel

__all__ = ["REASONS", "STAGES", "FlywheelSettings", "run_flywheel"]
