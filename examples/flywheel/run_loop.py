"""After the launch, on acme: serve the demo's student, watch drifted traffic arrive, learn from it.

    make demo                                   # writes demo-output/ (or use any `distilltune demo` output)
    python examples/flywheel/run_loop.py --demo demo-output --work flywheel-demo

Every step is a `distilltune` command a user would type (printed as it runs); the script only plays
the users (traffic and feedback, from ``traffic.py``) and the reviewer (scripted, and labelled so in
the review file's notes and in the summary):

1. serve the demo's student, cascading to its fine-tuned teacher, as the demo's report says;
2. replay in-distribution traffic (the monitor stays quiet) and drifted traffic: questions about
   the Acme mobile app, which the knowledge base does not cover, reworded and with typos, plus a few
   requests and corrections carrying planted PII; users rate answers and send corrections;
3. ``monitor`` on both logs: quiet, then the drift alert;
4. ``flywheel``: harvest, teacher labels, review file and page; a scripted reviewer decides; merge
   into a new task version; retrain with the student's own recipe (its run dir); gate;
5. serve the retrained candidate to half the users (``--split 0.5``), replay, ``ab``.

It writes ``summary.md`` and ``summary.json`` in the work dir (the README quotes the former) and
checks that no planted PII reached any file it did not write itself (the traffic files).
The demo directory is only read. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traffic import MOBILE_FACTS, PLANTED, make_traffic, planted_strings, write_traffic

REPO = Path(__file__).resolve().parents[2]
SCRIPTED = "scripted reviewer (examples/flywheel/run_loop.py), not a person"


class Loop:
    def __init__(self, demo: Path, work: Path, max_tokens: int, concurrency: int):
        self.demo, self.work, self.max_tokens, self.concurrency = demo, work, max_tokens, concurrency
        self.task = demo / "task"
        self.student = demo / "runs" / "student-kd"
        self.teacher = usable_adapter(demo / "runs" / "teacher-lora", work / "demo-models")
        self.retrain_sets = (
            [] if self.teacher.parent.parent == demo else [f"{self.student.name}.teacher={self.teacher}"]
        )
        self.times: dict[str, float] = {}
        self.commands: list[str] = []

    # -- running commands ------------------------------------------------------------------------

    def cli(self, stage: str, *args: str, ok=(0,)) -> int:
        cmd = [sys.executable, "-m", "distilltune", *map(str, args)]
        shown = "distilltune " + " ".join(map(str, args))
        print(f"\n$ {shown}", flush=True)
        self.commands.append(shown)
        t0 = time.perf_counter()
        with open(self.work / "logs" / f"{stage}.log", "ab") as log:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, cwd=REPO, check=False)
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0
        (self.work / "logs" / f"{stage}.out").write_bytes(proc.stdout)
        if proc.returncode not in ok:
            tail = (self.work / "logs" / f"{stage}.log").read_text(errors="replace")[-3000:]
            sys.exit(f"{shown}: exit {proc.returncode}\n{tail}")
        return proc.returncode

    def serve(self, stage: str, db: Path, *extra: str) -> Server:
        return Server(self, stage, db, extra)

    # -- the users --------------------------------------------------------------------------------

    def replay(self, url: str, model: str, rows: list[dict]) -> list[dict]:
        """Send every row once (bounded by the file), ``concurrency`` at a time; what came back, in order."""

        def one(row: dict) -> dict:
            body = {"model": model, "messages": [{"role": "user", "content": row["question"]}],
                    "max_tokens": self.max_tokens, "user": row["user"]}  # fmt: skip
            r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            return {"row": row, "status": r.status_code, "id": r.headers.get("x-request-id"),
                    "route": r.headers.get("x-distilltune-route"), "arm": r.headers.get("x-distilltune-arm"),
                    "answer": r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else None}  # fmt: skip

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, rows))

    def feedback(self, url: str, sent: list[dict], seed: int) -> dict:
        """Users rate: most mobile-app answers down (three with a corrected answer, one carrying PII), some up."""
        rng = random.Random(seed)
        counts: Counter = Counter()
        corrections = 0
        for s in sent:
            if s["status"] != 200 or s["route"] in ("refused_input", "refused_output"):
                continue
            row = s["row"]
            if row["area"] == "mobile" and rng.random() < 0.7:
                fb = {"id": s["id"], "rating": "down"}
                if corrections < 3 and not row["planted_pii"]:
                    fb["correction"] = MOBILE_FACTS[row["topic"]]
                    if corrections == 0:
                        fb["correction"] += f" Questions? Write to {PLANTED['email']}."
                    corrections += 1
            elif row["area"] == "acme" and rng.random() < 0.3:
                fb = {"id": s["id"], "rating": "up"}
            else:
                continue
            r = httpx.post(f"{url}/v1/feedback", json=fb, timeout=60)
            r.raise_for_status()
            counts[fb["rating"]] += 1
            counts["corrections_stored"] += bool((r.json().get("correction") or {}).get("stored"))
        return dict(counts)


class Server:
    """``distilltune serve`` as a subprocess on a free loopback port; stopped (SIGTERM) on exit."""

    def __init__(self, loop: Loop, stage: str, db: Path, extra: tuple[str, ...]):
        self.loop, self.stage, self.db, self.extra = loop, stage, db, extra

    def __enter__(self) -> tuple[str, str]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["serve", self.loop.student, "--task", self.loop.task, "--fallback", self.loop.teacher,
                "--port", str(port), "--log-db", self.db, *self.extra,
                f"limits.max_tokens={self.loop.max_tokens}", f"generation.default_max_tokens={self.loop.max_tokens}"]  # fmt: skip
        shown = "distilltune " + " ".join(map(str, args))
        print(f"\n$ {shown} &", flush=True)
        self.loop.commands.append(shown)
        self.log = open(self.loop.work / "logs" / f"{self.stage}-server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distilltune", *map(str, args)], stdout=self.log, stderr=self.log, cwd=REPO
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"the server exited ({self.proc.returncode}); see {self.log.name}")
            try:
                models = httpx.get(f"{url}/v1/models", timeout=5).json()["data"]
                return url, models[0]["id"]
            except (httpx.HTTPError, KeyError, ValueError):
                time.sleep(1)
        self.__exit__()
        sys.exit("the server did not start within 10 minutes")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def usable_adapter(run: Path, work: Path) -> Path:
    """``run`` itself, or a copy whose adapter names a base that exists.

    A LoRA run records its base model's path. A demo run with a temporary ``DISTILLTUNE_HOME``
    (``benchmarks/demo.py`` measures a first run that way) records a path that is gone afterwards;
    the copy names the base the run's config.yaml asked for instead (the built-in teacher).
    """
    cfg_path = run / "adapter" / "adapter_config.json"
    if not cfg_path.is_file():
        return run
    cfg = json.loads(cfg_path.read_text())
    if Path(cfg["base_model_name_or_path"]).exists() or "/" not in cfg["base_model_name_or_path"]:
        return run
    base = next(
        x.split(":", 1)[1].strip()
        for x in (run / "config.yaml").read_text().splitlines()
        if x.startswith("model:")
    )
    copy = work / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    cfg["base_model_name_or_path"] = base
    (copy / "adapter" / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    print(f"note: {run}'s adapter names a base that no longer exists; using a copy on {base!r}: {copy}")
    return copy


def review(path: Path, sent: list[dict]) -> tuple[Path, Counter]:
    """The scripted reviewer: corrections accepted, mobile-app items answered from the fact sheet,
    in-distribution items accepted when the teacher's answer passed its filters, the rest rejected."""
    by_request = {s["id"]: s["row"] for s in sent if s["id"]}
    decisions, counts = [], Counter()
    for item in (json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()):
        rows = [by_request[r] for r in item["request_ids"] if r in by_request]
        topic = next((r["topic"] for r in rows if r["area"] == "mobile"), None)
        if item["correction"]:
            d = {"decision": "accept", "answer": item["answer"], "note": f"{SCRIPTED}: the user's correction"}
        elif topic:
            d = {
                "decision": "edit",
                "answer": MOBILE_FACTS[topic],
                "note": f"{SCRIPTED}: mobile-app fact sheet",
            }
        elif item["teacher_problem"] is None and item["answer"].strip():
            d = {
                "decision": "accept",
                "answer": item["answer"],
                "note": f"{SCRIPTED}: teacher answer, unread",
            }
        else:
            d = {"decision": "reject", "note": f"{SCRIPTED}: no usable answer"}
        counts[d["decision"]] += 1
        decisions.append({"id": item["id"], **d})
    out = path.parent / "decisions.json"
    out.write_text(json.dumps({"decisions": decisions, "reviewer": SCRIPTED}, indent=1), encoding="utf-8")
    return out, counts


def scan_for_pii(root: Path, skip: Path) -> tuple[int, list[str]]:
    """Every file under ``root`` except the traffic inputs: (files scanned, 'file: string' hits)."""
    needles = [s.encode() for s in planted_strings()]
    files = [p for p in root.rglob("*") if p.is_file() and skip not in p.parents]
    hits = [f"{p}: {n.decode()}" for p in files for n in needles if n in p.read_bytes()]
    return len(files), hits


def git_state() -> dict:
    """The commit the loop ran at, and whether the tree was clean: a summary quoted in the README must say."""

    def git(*a: str) -> str:
        r = subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False)
        return r.stdout.strip()

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": git("rev-parse", "HEAD") or None, "dirty": dirty}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--demo", type=Path, default=REPO / "demo-output", help="a `distilltune demo` output dir (read only)"
    )
    ap.add_argument(
        "--work", type=Path, default=REPO / "flywheel-demo", help="everything this writes goes here"
    )
    ap.add_argument("--max-tokens", type=int, default=48, help="answer cap, as the demo's evaluation")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight during a replay")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--retrain-set", action="append", default=[], metavar="KEY=VALUE",
        help="override in the retraining recipe, passed to flywheel --set (e.g. student-kd.train.max_steps=20)",
    )  # fmt: skip
    return ap.parse_args()


def serve_and_monitor(loop: Loop, work: Path, traffic: dict, seed: int, facts: dict) -> list[dict]:
    """Replay calm and drifted traffic (with feedback) into two logs; monitor each. The drifted sends."""
    t0 = time.perf_counter()
    with loop.serve("serve-calm", work / "calm.db") as (url, model):
        calm = loop.replay(url, model, traffic["calm"])
    with loop.serve("serve-drifted", work / "requests.db") as (url, model):
        drifted = loop.replay(url, model, traffic["drifted"])
        facts["feedback"] = loop.feedback(url, drifted, seed)
    loop.times["serve+replay"] = time.perf_counter() - t0
    facts["routes"] = {
        n: dict(Counter(s["route"] for s in sent)) for n, sent in (("calm", calm), ("drifted", drifted))
    }
    for name, db in (("calm", work / "calm.db"), ("drifted", work / "requests.db")):
        html = work / f"monitor-{name}.html"
        code = loop.cli("monitor", "monitor", db, "--task", loop.task, "--json", "--html", html, ok=(0, 1))
        facts[f"monitor_{name}"] = {
            "exit": code,
            "report": json.loads((work / "logs" / "monitor.out").read_text()),
        }
    return drifted


def flywheel_and_ab(loop: Loop, work: Path, traffic: dict, drifted: list[dict], args, facts: dict) -> Path:
    """Label, review (scripted), merge, retrain, gate; then split traffic and ``ab``. The review dir."""
    rev = work / "review"
    base = [work / "requests.db", "--task", loop.task, "--output", rev]
    loop.cli("label", "flywheel", *base, "--teacher", loop.teacher, "--max-new-tokens", "64")
    decisions, facts["review"] = review(rev / "review.jsonl", drifted)
    sets = [x for s in loop.retrain_sets + args.retrain_set for x in ("--set", s)]
    code = loop.cli("retrain+gate", "flywheel", *base, "--decisions", decisions, "--pipeline", loop.student,
                    *sets, "--current", loop.student, "--max-new-tokens", str(args.max_tokens), ok=(0, 1))  # fmt: skip
    state = json.loads((rev / "state.json").read_text())
    facts["flywheel"], facts["gate_exit"] = state, code

    t0 = time.perf_counter()
    cand = state["retrain"]["candidate"]
    with loop.serve("serve-split", work / "ab.db", "--candidate", cand, "--split", "0.5") as (url, model):
        facts["split_sent"] = Counter(s["arm"] for s in loop.replay(url, model, traffic["split"]))
    loop.times["split serve+replay"] = time.perf_counter() - t0
    loop.cli("ab", "ab", work / "ab.db", "--json", ok=(0, 1))
    facts["ab"] = json.loads((work / "logs" / "ab.out").read_text())
    return rev


def main() -> None:
    args = parse_args()
    demo, work = args.demo.resolve(), args.work.resolve()
    for need in ("task/task.yaml", "runs/student-kd/config.yaml", "runs/teacher-lora"):
        if not (demo / need).exists():
            sys.exit(f"{demo}: not a demo output ({need} missing); run `make demo` first")
    if work.exists():
        shutil.rmtree(work)  # a fresh run: the summary's timings must not include cached steps
    (work / "logs").mkdir(parents=True)
    from flywheel_summary import summarize

    loop = Loop(demo, work, args.max_tokens, args.concurrency)
    t_start, load_start = time.perf_counter(), os.getloadavg()
    traffic = make_traffic(REPO / "examples" / "acme-support", loop.task, args.seed)
    files = write_traffic(work / "traffic", traffic)
    facts: dict = {"traffic": {k: len(v) for k, v in traffic.items()}}
    drifted = serve_and_monitor(loop, work, traffic, args.seed, facts)
    rev = flywheel_and_ab(loop, work, traffic, drifted, args, facts)

    facts["pii_files"], facts["pii_hits"] = scan_for_pii(work, files["calm"].parent)
    facts["harvest_reasons"] = dict(
        Counter(r for x in (rev / "harvest.jsonl").read_text().splitlines() for r in json.loads(x)["reasons"])
    )
    facts |= {"seconds": time.perf_counter() - t_start, "stage_seconds": loop.times, "commands": loop.commands,
              "load_start": load_start, "load_end": os.getloadavg(), "cores": len(os.sched_getaffinity(0)),
              "git": git_state(),
              "demo": str(demo)}  # fmt: skip
    text = summarize(facts)
    (work / "summary.json").write_text(json.dumps(facts, indent=2, default=str), encoding="utf-8")
    (work / "summary.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    if facts["pii_hits"]:
        sys.exit("planted PII found in written files:\n" + "\n".join(facts["pii_hits"]))


if __name__ == "__main__":
    main()
