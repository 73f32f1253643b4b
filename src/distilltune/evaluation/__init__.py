"""Evaluation: answer quality, groundedness, behaviour under the policy guard, efficiency."""
