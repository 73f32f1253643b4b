"""Distillation: KD losses (pure functions), the teacher top-k cache, sequence-level and on-policy data,
hidden-state matching, and blend pipelines. Training itself runs in the one loop of ``distilltune.train``;
this package only supplies the objectives and data plugged into it."""
