"""Run the CLI in-process from a test (faster than a subprocess): exit code, stdout, stderr."""

from __future__ import annotations

import sys


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    from distilltune.cli import main

    capsys.readouterr()
    old = sys.argv
    sys.argv = ["distilltune", *args]
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    cap = capsys.readouterr()
    return code, cap.out, cap.err
