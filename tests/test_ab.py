"""``distilltune ab`` and its statistics (monitor/ab.py, monitor/abstats.py).

References: the always-valid p-value's false-positive rate under repeated peeking is measured on
simulated A/A experiments against the nominal alpha, with a classical z-test repeated at the same
peeks as the counter-example; Newcombe's interval against the values published in his paper; rates
on synthetic logs against counts taken directly from the generated rows.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from cli_run import run_cli

ALPHA = 0.05
N, PEEK_EVERY, FIRST_PEEK = 2000, 25, 100


# ---- the stopping rule under peeking ------------------------------------------------------------


def _classical_ever_rejects(x: np.ndarray, b: np.ndarray, binary: bool) -> np.ndarray:
    """Per simulation: did a two-sided z-test at 5 % reject at any peek (every 25 requests)?"""
    peeks = np.arange(FIRST_PEEK, N + 1, PEEK_EVERY) - 1
    nb, na = np.cumsum(b, 1)[:, peeks], np.cumsum(~b, 1)[:, peeks]
    sb, sa = np.cumsum(x * b, 1)[:, peeks], np.cumsum(x * ~b, 1)[:, peeks]
    qb, qa = np.cumsum(x * x * b, 1)[:, peeks], np.cumsum(x * x * ~b, 1)[:, peeks]
    mb, ma = sb / nb, sa / na
    if binary:
        p = (sb + sa) / (nb + na)
        v = p * (1 - p) * (1 / nb + 1 / na)
    else:
        v = (qb - nb * mb**2) / (nb - 1) / nb + (qa - na * ma**2) / (na - 1) / na
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.abs(mb - ma) / np.sqrt(v)
    return np.nan_to_num(z > 1.959964).any(axis=1)


@pytest.mark.parametrize(
    "share,kind",
    [(0.5, "rate"), (0.1, "rate"), (0.1, "rare"), (0.1, "latency")],
)
def test_always_valid_p_holds_alpha_under_peeking_where_a_repeated_z_test_does_not(share, kind):
    from distilltune.monitor.ab import _scale
    from distilltune.monitor.abstats import two_sample_sequential

    sims = 300
    rng = np.random.default_rng(11)
    if kind in ("rate", "rare"):  # A/A: both arms escalate 20 % (refuse 2 %) of the time
        x = (rng.random((sims, N)) < (0.2 if kind == "rate" else 0.02)).astype(np.float64)
        kind = "rate"
    else:  # A/A: the same skewed latency distribution in both arms
        x = rng.lognormal(5.0, 1.0, (sims, N))
    b = rng.random((sims, N)) < share
    binary = kind == "rate"
    seq = np.array(
        [two_sample_sequential(_scale(kind, x[i]), b[i], binary=binary).p_value < ALPHA for i in range(sims)]
    )
    classical = _classical_ever_rejects(x, b, binary)
    assert seq.mean() <= ALPHA, seq.mean()  # peeking after *every* request, not just every 25
    assert classical.mean() > 2 * ALPHA, classical.mean()  # the inflation the stopping rule prevents


def test_paired_always_valid_p_holds_alpha_and_detects_a_real_difference():
    from distilltune.monitor.abstats import paired_sequential

    rng = np.random.default_rng(12)

    def diffs(p_shadow: float, p_live: float) -> np.ndarray:
        return (rng.random(N) < p_shadow).astype(float) - (rng.random(N) < p_live).astype(float)

    same = [paired_sequential(diffs(0.1, 0.1)).p_value for _ in range(300)]
    assert np.mean(np.array(same) < ALPHA) <= ALPHA
    worse = [paired_sequential(diffs(0.2, 0.1)).p_value for _ in range(50)]
    assert np.mean(np.array(worse) < ALPHA) >= 0.9


def test_two_sample_test_has_power_and_its_interval_covers_the_truth():
    from distilltune.monitor.abstats import two_sample_sequential

    rng = np.random.default_rng(13)
    hits = covered = 0
    for _ in range(50):
        b = rng.random(N) < 0.5
        x = (rng.random(N) < np.where(b, 0.3, 0.2)).astype(np.float64)
        s = two_sample_sequential(x, b, binary=True)
        hits += s.p_value < ALPHA
        covered += s.ci_low <= 0.1 <= s.ci_high
    assert hits >= 45 and covered >= 48


def test_newcombe_interval_matches_the_published_values():
    """Newcombe (1998), Statistics in Medicine 17:873-890, Table II, method 10."""
    from distilltune.monitor.abstats import newcombe_diff_ci

    assert newcombe_diff_ci(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert newcombe_diff_ci(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)


def test_n_needed_matches_the_textbook_formula():
    """Two proportions 0.2 vs 0.3, equal arms: about 290 per arm (pooled-sd normal approximation)."""
    from distilltune.monitor.abstats import n_needed

    sd = np.sqrt(0.25 * 0.75)
    total = n_needed(0.1, sd, 0.5)
    per_arm = (1.959964 + 0.841621) ** 2 * 2 * sd**2 / 0.01
    assert total == pytest.approx(2 * per_arm, abs=2)


# ---- the command on synthetic logs ---------------------------------------------------------------


def _write_log(path, rows: list[dict], feedback: list[tuple] | None = None) -> None:
    from distilltune.serve.requestlog import LogRecord, RequestLog

    log = RequestLog(path)
    for r in rows:
        log.write(LogRecord(model="student", **r))
    log.flush()
    log.close()
    if feedback is not None:
        from distilltune.serve.feedback import SCHEMA

        con = sqlite3.connect(path)
        con.execute(SCHEMA)  # the server's own table: one row per request, a new rating replaces the old
        con.executemany(
            "INSERT OR REPLACE INTO feedback(request_id, rating, correction) VALUES (?, ?, ?)", feedback
        )
        con.commit()
        con.close()


def _ab_rows(n: int, p_live: float, p_cand: float, seed: int = 0) -> list[dict]:
    """A synthetic A/B log: a quarter of the requests in the candidate arm, escalating at its own rate."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cand = rng.random() < 0.25
        route = "fallback" if rng.random() < (p_cand if cand else p_live) else "student"
        if rng.random() < 0.07:
            route = "refused_input"
        rows.append({
            "id": f"r{i}", "ts": 1000.0 + i, "arm": "candidate" if cand else "live", "route": route,
            "status": 500 if rng.random() < 0.02 else 200, "answer": "word " * int(rng.integers(3, 9)),
            "latency_ms": 100.0 + float(rng.exponential(20.0)),
        })  # fmt: skip
    return rows


def _direct_rate(rows, arm, num, den) -> float:
    d = [r for r in rows if r["arm"] == arm and den(r)]
    return sum(num(r) for r in d) / len(d)


def test_ab_rates_match_direct_counts_and_a_worse_candidate_exits_1(tmp_path, capsys):
    db = tmp_path / "ab.db"
    rows = _ab_rows(800, 0.2, 0.5)  # the candidate escalates half its answers, live a fifth
    feedback = [
        (f"r{i}", r, None) for i, r in zip(range(0, 800, 3), ["down", "up", "-1", "1"] * 100, strict=False)
    ]
    feedback.append(("r0", "up", None))  # a second rating for one request replaces the first
    _write_log(db, rows, feedback)
    code, out, err = run_cli(capsys, "ab", str(db), "--json")
    assert code == 1, err
    rep = json.loads(out)
    ok = lambda r: r["status"] == 200  # noqa: E731
    answered = lambda r: ok(r) and r["route"] in ("student", "fallback")  # noqa: E731
    fb = {}
    for rid, rating, _ in feedback:
        fb[rid] = rating in ("down", "-1")
    arms = rep["ab"]["arms"]
    for arm in ("live", "candidate"):
        got = arms[arm]
        assert got["requests"] == sum(r["arm"] == arm for r in rows)
        esc = _direct_rate(rows, arm, lambda r: r["route"] == "fallback", answered)
        assert got["escalation"]["mean"] == pytest.approx(esc)
        ref = _direct_rate(rows, arm, lambda r: r["route"] == "refused_input", ok)
        assert got["refusal"]["mean"] == pytest.approx(ref)
        assert got["error"]["mean"] == pytest.approx(
            _direct_rate(rows, arm, lambda r: r["status"] != 200, bool)
        )
        assert got["feedback"]["mean"] == pytest.approx(_direct_rate(rows, arm, lambda r: r["id"] in fb, ok))
        assert got["thumbs_down"]["mean"] == pytest.approx(
            _direct_rate(rows, arm, lambda r: fb.get(r["id"], False), ok)
        )
        lat = [r["latency_ms"] for r in rows if r["arm"] == arm and ok(r)]
        assert got["latency_ms"]["p50"] == pytest.approx(np.percentile(lat, 50))
        assert got["latency_ms"]["p95"] == pytest.approx(np.percentile(lat, 95))
    esc = rep["ab"]["differences"]["escalation"]
    assert esc["estimate"] == pytest.approx(
        arms["candidate"]["escalation"]["mean"] - arms["live"]["escalation"]["mean"]
    )
    assert esc["ci"][0] > 0 and esc["decision"] == "candidate_worse"
    assert esc["sequential"]["p_value"] < ALPHA
    assert {"comparison": "ab", "metric": "escalation"}.items() <= rep["decisions"][0].items()
    code, text, _ = run_cli(capsys, "ab", str(db))
    assert code == 1 and "stop: the candidate is worse on escalation" in text


def test_ab_without_a_difference_exits_0_and_without_feedback_says_so(tmp_path, capsys):
    db = tmp_path / "same.db"
    rows = _ab_rows(400, 0.2, 0.2, seed=1)  # A/A: the same behaviour in both arms
    _write_log(db, rows)
    code, out, err = run_cli(capsys, "ab", str(db))
    assert code == 0, err
    assert "no feedback table" in out and "escalation rate" in out


def test_shadow_agreement_and_paired_differences(tmp_path, capsys):
    db = tmp_path / "shadow.db"
    pairs = [("the bike costs 20 dollars", "the bike costs 20 dollars"),  # exact, F1 1
             ("the bike costs 20 dollars", "The bike  costs 20 dollars"),  # exact after normalising
             ("the bike costs 20 dollars", "the bike costs 25 dollars"),  # 4 of 5 tokens: F1 0.8
             ("open from 9 to 5", "closed on sundays")]  # F1 0  # fmt: skip
    rows = []
    for k in range(10):
        for i, (live, shadow) in enumerate(pairs):
            n = k * 4 + i
            rows.append({"id": f"l{n}", "ts": 10.0 * n, "arm": "live", "route": "student", "answer": live,
                         "latency_ms": 100.0})  # fmt: skip
            rows.append({"id": f"s{n}", "ts": 10.0 * n + 1, "arm": "shadow", "shadow_of": f"l{n}",
                         "route": "fallback" if i == 3 else "student", "answer": shadow, "latency_ms": 150.0})  # fmt: skip
    rows.append({"id": "orphan", "ts": 999.0, "arm": "shadow", "shadow_of": "gone", "route": "student"})
    rows.append({"id": "failed", "ts": 999.5, "arm": "shadow", "shadow_of": "l0", "status": 504})
    _write_log(db, rows)
    code, out, err = run_cli(capsys, "ab", str(db), "--json")
    assert code == 0, err  # 40 pairs: too few for the always-valid test to decide anything
    sh = json.loads(out)["shadow"]
    assert json.loads(out)["ab"] is None
    assert (sh["copies"], sh["pairs"], sh["unmatched"], sh["failed_copies"]) == (42, 40, 1, 1)
    assert sh["agreement"]["exact_match"]["mean"] == pytest.approx(0.5)
    assert sh["agreement"]["token_f1"]["mean"] == pytest.approx((1 + 1 + 0.8 + 0) / 4)
    esc = sh["differences"]["escalation"]
    assert esc["estimate"] == pytest.approx(0.25) and esc["mcnemar"]["only_shadow"] == 10
    assert sh["differences"]["latency_ms"]["estimate"] == pytest.approx(50.0)


def test_bad_input_exits_2(tmp_path, capsys):
    assert run_cli(capsys, "ab", str(tmp_path / "missing.db"))[0] == 2
    junk = tmp_path / "junk.db"
    junk.write_text("not sqlite at all" * 100)
    code, _, err = run_cli(capsys, "ab", str(junk))
    assert code == 2 and "not a distilltune request log" in " ".join(err.split())
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE requests (id TEXT, ts REAL, route TEXT)")
    con.close()
    code, _, err = run_cli(capsys, "ab", str(old))
    assert code == 2 and "predates serve --candidate" in " ".join(err.split())
    live_only = tmp_path / "live.db"
    _write_log(live_only, [{"id": "a", "ts": 1.0, "arm": "live", "route": "student"}])
    code, _, err = run_cli(capsys, "ab", str(live_only))
    assert code == 2 and "no candidate or shadow rows" in " ".join(err.split())
    assert run_cli(capsys, "ab", str(live_only), "--alpha", "1.5")[0] == 2
