"""``distilltune monitor`` on request logs written by the server's own writer (``RequestLog``).

The pipeline tests inject a synthetic embedder (text → vector by topic) so 21 windows run in seconds;
the end-to-end test at the bottom runs the CLI with the real bundled MiniLM on an acme-based task.
"""

from __future__ import annotations

import json
import random
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml

from acme_views import acme_conversations, write_acme_view
from cli_run import run_cli
from distilltune.errors import UserError
from distilltune.monitor import drift, read_log, render_html, run_monitor, summary_lines
from distilltune.serve.requestlog import LogRecord, RequestLog

TESTS = Path(__file__).parent
DIM = 24
T0 = 1_750_000_000.0
HOUR = 3600.0
KNOWN, NEW = range(0, 8), range(8, 11)


class TopicEmbedder:
    """Texts look like ``topic-K item-J ...``: the vector is topic K's centre plus per-text noise."""

    def __init__(self, seed: int = 0):
        self.centres = drift.normalize(np.random.default_rng(seed).normal(size=(11, DIM)))

    def vector(self, text: str) -> np.ndarray:
        topic = int(text.split()[0].removeprefix("topic-"))
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        return self.centres[topic] + 0.5 * rng.normal(size=DIM) / np.sqrt(DIM)

    def encode(self, texts: list[str]) -> np.ndarray:
        return drift.normalize(np.stack([self.vector(t) for t in texts])) if texts else np.zeros((0, DIM))


def knowledge_scorer(emb: TopicEmbedder):
    """Best "retrieval" score: cosine to the nearest documented topic (only the known topics are documented)."""

    def score(texts, vectors):
        return (np.asarray(vectors) @ emb.centres[list(KNOWN)].T).max(axis=1)

    return score


def write_task(root: Path, n_train: int = 300, n_eval: int = 40, seed: int = 0, **monitoring) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True)
    spec = {"name": "synthetic", "system_prompt": "Answer briefly.", "data": {"knowledge": "knowledge"}}
    if monitoring:
        spec["monitoring"] = monitoring
    (root / "task.yaml").write_text(yaml.safe_dump(spec))
    (root / "knowledge").mkdir()
    (root / "knowledge" / "doc.md").write_text("# Doc\n\nSome text.\n")
    for name, n in (("train", n_train), ("eval", n_eval)):
        lines = [
            json.dumps({"messages": [
                {"role": "user", "content": f"topic-{rng.choice(KNOWN)} {name}-{i} question"},
                {"role": "assistant", "content": "An answer."},
            ]})
            for i in range(n)
        ]  # fmt: skip
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def record(
    i: int, ts: float, question: str, route: str = "student", confidence: float = -0.5, **kw
) -> LogRecord:
    return LogRecord(
        id=f"req-{i}", ts=ts, model="student", route=route, status=200,
        prompt=[{"role": "user", "content": question}],
        answer=kw.pop("answer", "The answer is in the docs."), confidence=confidence,
        retrieval_score=kw.pop("retrieval_score", 0.03), latency_ms=kw.pop("latency_ms", 100.0 + i % 50),
        completion_tokens=12, input_action="allow", output_action="allow", **kw,
    )  # fmt: skip


def write_log(path: Path, records: list[LogRecord]) -> Path:
    log = RequestLog(path)
    for r in records:
        log.write(r)
    log.flush()
    log.close()
    return path


def traffic(n_windows: int, per_window: int, drifted_last: bool, seed: int = 0) -> list[LogRecord]:
    """Hourly windows of in-distribution traffic (10 % escalated); the last one half on new topics, escalated."""
    rng = random.Random(seed)
    recs = []
    for w in range(n_windows):
        for j in range(per_window):
            ts = T0 + w * HOUR + (j + 0.5) * HOUR / per_window
            new = drifted_last and w == n_windows - 1 and j % 2 == 0
            topic = rng.choice(NEW if new else KNOWN)
            esc = new or rng.random() < 0.1
            conf = rng.gauss(-1.8 if new else -0.6, 0.2)
            recs.append(record(len(recs), ts, f"topic-{topic} live-{w}-{j} question",
                               "fallback" if esc else "student", conf))  # fmt: skip
    return recs


@pytest.fixture(scope="module")
def drifted_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitor")
    task = write_task(root / "task")
    db = write_log(root / "requests.db", traffic(21, 40, drifted_last=True))
    emb = TopicEmbedder()
    return run_monitor(db, task, HOUR, embedder=emb, knowledge=knowledge_scorer(emb))


INPUT_SIGNALS = {"input_drift", "ood_rate", "knowledge_gap"}


def test_in_distribution_windows_rarely_alert(drifted_report):
    """20 in-distribution windows (calibration at the monitor level): at most 1 fires any alert."""
    windows = drifted_report["windows"]
    assert len(windows) == 21
    fired = [w for w in windows[:20] if w["alerts"]]
    assert len(fired) <= 1, [w["alerts"] for w in fired]
    assert all(w["drift"]["permutations"] == 500 for w in windows)


def test_drifted_window_fires_input_knowledge_and_output_alerts(drifted_report):
    latest = drifted_report["windows"][-1]
    signals = {a["signal"] for a in drifted_report["alerts"]}
    assert drifted_report["status"] == "alert"
    assert signals >= INPUT_SIGNALS
    assert {"escalation_rise", "confidence_drop"} <= signals
    assert latest["drift"]["p_value"] < 0.01
    assert 0.4 <= latest["ood"]["rate"] <= 0.6  # half the window is on new topics
    assert latest["output_drift"]["escalation"]["rate"] >= 0.5  # every new-topic question escalates
    # the biggest out-of-distribution clusters are the new topics, shown with their questions
    top = drifted_report["ood_clusters"][:3]
    assert all(e.startswith(tuple(f"topic-{t} " for t in NEW)) for c in top for e in c["examples"])
    assert sum(c["size"] for c in top) >= 15
    assert drifted_report["knowledge_gaps"] and drifted_report["knowledge"]["n_eval"] == 40


def test_traffic_numbers_match_the_log(drifted_report, tmp_path):
    w = drifted_report["windows"][3]["traffic"]
    assert w["requests"] == 40
    assert sum(w["routes"].values()) == 40
    assert w["escalation_rate"] == pytest.approx(w["routes"].get("fallback", 0) / 40)
    lat = [100.0 + i % 50 for i in range(3 * 40, 4 * 40)]
    assert w["latency_ms"]["p50"] == pytest.approx(np.quantile(lat, 0.5))
    assert w["latency_ms"]["p95"] == pytest.approx(np.quantile(lat, 0.95))
    assert drifted_report["baseline"]["start"] == drifted_report["windows"][0]["start"]
    json.dumps(drifted_report)  # JSON-able as is (no numpy scalars)


def test_guard_reasons_unanswered_refusals_and_small_windows(tmp_path):
    task = write_task(tmp_path / "task", unanswered_rate=0.25, min_requests=10)
    recs = [record(i, T0 + i, f"topic-{i % 8} q{i} question") for i in range(12)]
    recs[0].answer = "I don't know; the context does not cover that."
    recs[1].answer = "I’m not sure about this one."
    recs[2].answer = "Sorry, I do not know."
    recs[3].input_reasons = ["pii:email"]
    recs[4].route, recs[4].input_action, recs[4].input_reasons = (
        "refused_input",
        "refuse",
        ["blocked_topic:legal"],
    )
    recs[4].prompt = [
        {"role": "user", "content": "[withheld: refused by the input guard; 20 chars; sha256 ab]"}
    ]
    small = [record(100 + i, T0 + 1.5 * HOUR + i, f"topic-1 late{i} question") for i in range(3)]
    db = write_log(tmp_path / "r.db", recs + small)
    emb = TopicEmbedder()
    rep = run_monitor(db, task, HOUR, embedder=emb, knowledge=knowledge_scorer(emb))
    first, last = rep["windows"]
    t = first["traffic"]
    assert t["guard_reasons"]["input"] == {"pii:email": 1, "blocked_topic:legal": 1}
    assert t["unanswered"] == 3 and t["unanswered_rate"] == pytest.approx(3 / 11)
    assert t["shares"]["refused"] == pytest.approx(1 / 12)
    assert first["questions"] == 11  # the refused request's withheld text is never embedded
    assert [a["signal"] for a in first["alerts"]] == ["unanswered_rate"]
    # the latest window has 3 requests: no test, no alert, a note saying why; exit status follows it
    assert last["drift"] is None and last["alerts"] == [] and "fewer than min_requests" in last["note"]
    assert rep["status"] == "ok"
    assert "no alerts" in summary_lines(rep)[-1]


def test_task_without_knowledge_skips_knowledge_drift(tmp_path):
    task = write_task(tmp_path / "task")
    recs = traffic(1, 40, drifted_last=True)
    for r in recs:  # a log from before the policy redacted e-mail: the report must not show it
        r.prompt[0]["content"] += " mail bob.smith@example.com"
    db = write_log(tmp_path / "r.db", recs)
    rep = run_monitor(db, task, HOUR, embedder=TopicEmbedder())  # no knowledge scorer
    assert rep["knowledge"] is None and rep["knowledge_gaps"] is None
    assert rep["windows"][0]["knowledge_gap"] is None
    assert {a["signal"] for a in rep["alerts"]} >= {"input_drift", "ood_rate"}
    assert rep["baseline"]["start"] == rep["windows"][0]["start"]  # the only window is the baseline
    assert rep["windows"][0]["output_drift"] is None
    html = render_html(rep)
    assert "Not measured: the task has no knowledge documents" in html
    shown = [e for c in rep["ood_clusters"] for e in c["examples"]]
    assert shown and all(e.endswith(" mail [EMAIL]") for e in shown)
    assert "smith" not in json.dumps(rep) and "smith" not in html
    assert any(line.startswith("ALERT input_drift") for line in summary_lines(rep))


def test_html_page_is_self_contained_and_escapes_logged_text(drifted_report):
    rep = json.loads(json.dumps(drifted_report))
    rep["ood_clusters"][0]["examples"][0] = "<script>alert(1)</script> topic-9"
    html = render_html(rep)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 1
    assert "http://" not in html and "https://" not in html
    for signal in INPUT_SIGNALS:
        assert signal in html


# -- bad input ---------------------------------------------------------------------------------------


def _main(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(capsys, *args)


def test_bad_inputs_fail_cleanly(tmp_path, capsys):
    task = write_task(tmp_path / "task")
    page = tmp_path / "page.html"
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    partial = tmp_path / "partial.db"
    sqlite3.connect(partial).execute("CREATE TABLE requests (id TEXT, ts REAL)").connection.commit()
    empty = write_log(tmp_path / "empty.db", [])
    ok = write_log(tmp_path / "ok.db", [record(0, T0, "topic-1 q question")])
    cases = [
        ((str(tmp_path / "nope.db"),), "request log not found"),
        ((str(junk),), "not a distilltune request log"),
        ((str(other),), "no 'requests' table"),
        ((str(partial),), "lacks: status, route, prompt"),
        ((str(empty),), "holds no requests yet"),
        ((str(ok), "--window", "1x"), "--window '1x'"),
        ((str(ok), "--since", "0h"), "--since '0h'"),
        ((str(ok), "--html", str(tmp_path)), "must be a file path"),
    ]
    for args, message in cases:
        code, _, err = _main(capsys, "monitor", args[0], "--task", str(task), "--html", str(page), *args[1:])
        assert code == 2, (args, err)
        assert message in " ".join(err.split()), (args, err)
        assert "Traceback" not in err
        assert not page.exists()


def test_read_log_skips_nothing_and_keeps_order(tmp_path):
    db = write_log(tmp_path / "r.db", [record(i, T0 + 10 - i, f"topic-0 q{i} question") for i in range(5)])
    reqs = read_log(db)
    assert [r.id for r in reqs] == [f"req-{i}" for i in (4, 3, 2, 1, 0)]
    assert [r.id for r in read_log(db, since_s=2.5)] == ["req-2", "req-1", "req-0"]
    with pytest.raises(UserError, match="not found"):
        read_log(tmp_path / "missing.db")


# -- task card ---------------------------------------------------------------------------------------


def test_monitoring_section_is_optional_and_validated(tmp_path):
    from distilltune.task import load_task

    old = load_task(TESTS / "data" / "tiny-task")
    assert old.spec.monitoring.drift_alpha == 0.05 and old.spec.monitoring.ood_rate == 0.2
    task = write_task(tmp_path / "good", drift_alpha=0.01, latency_p95_ms=900)
    assert load_task(task).spec.monitoring.latency_p95_ms == 900
    for key, value, message in (
        ("drift_alpha", 1.5, "less than 1"),
        ("unanswered_patterns", ["("], "does not compile"),
        ("ood_rat", 0.1, "unknown key"),
    ):
        bad = write_task(tmp_path / key, **{key: value})
        with pytest.raises(UserError) as e:
            load_task(bad)
        text = " ".join(str(p) for p in e.value.problems)
        assert "task.yaml" in text and f"monitoring.{key}" in text and message in text, text


# -- end to end with the bundled MiniLM ----------------------------------------------------------------

NEW_AREAS = [
    "the Acme mobile app on Android", "GPU instances", "the Kubernetes operator", "the Slack integration",
    "the AI writing assistant", "the marketplace for plugins", "Acme Cloud gift cards", "the desktop sync client",
    "the Terraform provider", "the partner reseller program", "the browser extension", "Acme's VPN add-on",
]  # fmt: skip
NEW_TEMPLATES = [
    "How do I set up {}?", "Is {} available on the free plan?", "Why does {} keep crashing?",
    "Can I get a refund for {}?", "where do i downlaod {} ?",
]  # fmt: skip


def test_cli_end_to_end_with_bundled_embeddings(tmp_path, capsys):
    """Replays through the server's log writer: in-distribution traffic exits 0, drifted traffic exits 1."""
    convs = acme_conversations()
    random.Random(0).shuffle(convs)
    task = write_acme_view(tmp_path / "task", convs[:160], convs[160:200])
    live = [c["messages"][0]["content"] for c in convs[200:260]]
    new = [t.format(a) for a in NEW_AREAS for t in NEW_TEMPLATES]
    random.Random(1).shuffle(new)

    calm = write_log(tmp_path / "calm.db", [record(i, T0 + 30 * i, q) for i, q in enumerate(live)])
    mixed = live[:20] + new[:40]  # a product area the knowledge base does not cover, with typos
    drifted = write_log(tmp_path / "drifted.db", [record(i, T0 + 30 * i, q) for i, q in enumerate(mixed)])

    code, out, err = _main(capsys, "monitor", str(calm), "--task", str(task), "--json")
    assert code == 0, out + err
    calm_rep = json.loads(out)
    assert calm_rep["alerts"] == [] and calm_rep["windows"][0]["drift"]["p_value"] >= 0.05
    assert calm_rep["knowledge"]["n_eval"] > 20  # dense scores from the task's knowledge index
    code, out, err = _main(capsys, "monitor", str(drifted), "--task", str(task), "--json",
                           "--html", str(tmp_path / "drifted.html"))  # fmt: skip
    assert code == 1, out + err
    rep = json.loads(out)
    assert "input_drift" in {a["signal"] for a in rep["alerts"]}, rep["alerts"]
    w, calm_w = rep["windows"][0], calm_rep["windows"][0]
    assert w["ood"]["rate"] > 2 * calm_w["ood"]["rate"]
    assert w["knowledge_gap"]["rate"] > 2 * calm_w["knowledge_gap"]["rate"]
    shown = [e for c in rep["ood_clusters"] for e in c["examples"]]
    assert shown and sum(e in new for e in shown) >= 0.8 * len(shown)
    page = (tmp_path / "drifted.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "input_drift" in page
