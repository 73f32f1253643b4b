"""Policy guard: PII redaction, blocked topics, injection and extraction heuristics, output checks.

``Guard(task.policy, system_prompt=task.system_prompt).check_input(text)`` → ``GuardDecision``.
"""

from distilltune.policy.guard import ConversationDecision, Guard, GuardConfig, GuardDecision
from distilltune.policy.pii import PIIRedactor, Span

__all__ = ["ConversationDecision", "Guard", "GuardConfig", "GuardDecision", "PIIRedactor", "Span"]
