"""The digit-run recognizers cannot be driven into super-linear work (a CPU denial of service).

A request may hold up to ``limits.max_message_chars`` characters per message; a text made of digits
and separators is the worst case for the digit recognizers, which grade every group-aligned window
of every digit run. The number of windows is counted exactly (at most 19 start at each digit group),
and the guard's CPU time on an input four times longer is compared with the shorter one in the same
process (linear work gives about 4x, quadratic 16x; the bound is a generous 8x, with no absolute
time threshold).
"""

from __future__ import annotations

import time

import pytest

from distilltune.policy import Guard
from distilltune.policy.recognizers import digit_windows
from distilltune.task.schema import PolicySpec

# Units repeated to the wanted length: digits and every separator the digit runs accept, a context
# word (weak candidates are then graded too), full-width digits and zero-width separators.
UNITS = ["1 ", "1-", "1.", "(1)", "12 - ", "1/", "card 1 ", "account 12 ", "SSN 1 ", "１-", "1\u200b", "+1 "]


def _text(unit: str, n: int) -> str:
    return (unit * (n // len(unit) + 1))[:n]


@pytest.mark.parametrize("unit", UNITS)
def test_windows_grow_linearly_with_the_text(unit):
    short, long = _text(unit, 2000), _text(unit, 8000)
    groups = sum(ch.isdigit() for ch in long)  # an upper bound on digit groups
    n_short = sum(1 for _ in digit_windows(short))
    n_long = sum(1 for _ in digit_windows(long))
    assert n_long <= 19 * max(groups, 1)
    # Linear: windows = a * groups - (fewer windows near a run's end), so 4x the text gives at most
    # 4x the windows plus three of those end effects (each under 19 * 19 / 2).
    assert n_long <= 4 * n_short + 19 * 19 * 2


def _cpu(fn, text: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn(text)
        best = min(best, time.process_time() - t0)
    return best


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard(PolicySpec(), system_prompt="You are a help desk.")


@pytest.mark.parametrize("unit", ["1 ", "1-", "12 - ", "account 12 ", "１-"])
def test_guard_time_is_linear_in_a_long_run_of_digits(guard, unit):
    short, long = _text(unit, 1500), _text(unit, 6000)
    _cpu(guard.check_input, short, repeats=1)  # warm caches (unicode tables, regex compilation)
    t_short = _cpu(guard.check_input, short)
    t_long = _cpu(guard.check_input, long)
    assert t_long <= 8 * max(t_short, 1e-3), (unit, t_short, t_long)
    conv = [{"role": "user", "content": short}, {"role": "user", "content": short}]
    conv4 = [{"role": "user", "content": long}, {"role": "user", "content": long}]
    t_conv = _cpu(guard.check_conversation, conv)
    t_conv4 = _cpu(guard.check_conversation, conv4)
    assert t_conv4 <= 8 * max(t_conv, 1e-3), (unit, t_conv, t_conv4)
