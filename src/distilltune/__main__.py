"""Allows ``python -m distilltune``."""

from distilltune.cli import main

main()
