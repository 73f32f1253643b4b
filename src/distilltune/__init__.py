"""distilltune: distill, fine-tune, or both — measured on your task, chosen under your budgets, served.

The package mirrors the pipeline: ``task`` (the user's task card) → ``data`` (chat examples) →
``models`` (teacher, student) → ``train`` / ``distill`` → ``retrieval`` / ``policy`` →
``evaluation`` / ``compare`` → ``serve``. The CLI lives in ``distilltune.cli``.
"""

__version__ = "0.1.0"
