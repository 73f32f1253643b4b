"""The task card: the user's domain (conversations, knowledge, policy, tests, budgets)."""

from distilltune.task.load import Task, load_task
from distilltune.task.schema import Budgets, Case, Conversation, Message, PolicySpec, TaskSpec

__all__ = ["Budgets", "Case", "Conversation", "Message", "PolicySpec", "Task", "TaskSpec", "load_task"]
