"""The short summary of one run of ``run_loop.py`` (``summary.md``), from the facts it collected.

Every number is read from what the commands wrote (monitor and ab JSON, the flywheel's state.json,
the logs' routes); nothing is estimated here.
"""

from __future__ import annotations


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def _window(rep: dict) -> dict:
    w = rep["windows"][-1]
    return {
        "p": (w.get("drift") or {}).get("p_value"),
        "ood": (w.get("ood") or {}).get("rate"),
        "gap": (w.get("knowledge_gap") or {}).get("rate"),
        "esc": w["traffic"].get("escalation_rate"),
        "n": w["traffic"].get("requests"),
    }


def _monitor_lines(facts: dict) -> list[str]:
    out = []
    for name in ("calm", "drifted"):
        m = facts[f"monitor_{name}"]
        w = _window(m["report"])
        alerts = ", ".join(a["signal"] for a in m["report"]["alerts"]) or "none"
        p = "n/a" if w["p"] is None else f"{w['p']:.3f}"
        out.append(
            f"- monitor, {name} replay ({w['n']} requests): exit {m['exit']}, alerts: {alerts}; "
            f"MMD p = {p}, out-of-distribution {_pct(w['ood'])}, knowledge gaps {_pct(w['gap'])}, "
            f"escalated {_pct(w['esc'])}"
        )
    clusters = facts["monitor_drifted"]["report"].get("ood_clusters") or []
    if clusters:
        c = clusters[0]
        out.append(
            f'  - top new cluster ({c["size"]} questions): {", ".join(c["terms"])}; e.g. "{c["examples"][0]}"'
        )
    return out


def _gate_lines(state: dict, code: int) -> list[str]:
    g = state.get("gate")
    if not g:
        return ["- gate: did not run"]
    out = [f"- gate: **{'promote' if g['promote'] else 'keep the current model'}** (exit {code})"]
    for part, score in (("eval", "primary score"), ("failures", "token F1 vs the reviewed answers")):
        c = g[part]
        d = c.get("diff") or {}
        ci = f"Δ {d['estimate']:+.3f}, 95 % CI {d['low']:+.3f}..{d['high']:+.3f}" if d else "no interval"
        mean = "n/a" if c["mean_a"] is None else f"{c['mean_a']:.3f} vs {c['mean_b']:.3f}"
        out.append(
            f"  - {part} ({c['n_items']} items, {score}): candidate vs current {mean}; {ci}: {c['verdict']}"
        )
    return out


def _ab_lines(ab: dict) -> list[str]:
    arms = ab["ab"]["arms"]
    out = []
    for arm in ("live", "candidate"):
        a = arms[arm]
        esc, lat = a["escalation"]["mean"], a["latency_ms"].get("p50")
        out.append(
            f"- ab, {arm} arm: {a['requests']} requests, escalated {_pct(esc)}, "
            f"latency p50 {'n/a' if lat is None else f'{lat:.0f} ms'}"
        )
    decided = [d for d in ab["decisions"] if d["decision"] != "continue"]
    out.append(
        "- ab stopping rule (always-valid p-values): "
        + (", ".join(f"{d['metric']} {d['decision']}" for d in decided) or "no metric decided yet")
    )
    return out


def summarize(facts: dict) -> str:
    state = facts["flywheel"]
    m, r, rt = state["merge"], facts["review"], state.get("retrain") or {}
    refused: dict = {}
    for x in m["refused"]:
        refused[x["reason"]] = refused.get(x["reason"], 0) + 1
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in facts["stage_seconds"].items())
    fb = facts["feedback"]
    lines = [
        "# Flywheel demo on acme (examples/flywheel/run_loop.py)",
        "",
        f"- commit {(facts.get('git') or {}).get('sha') or 'unknown'}"
        + (" (uncommitted changes)" if (facts.get("git") or {}).get("dirty") else ""),
        f"- {facts['seconds']:.0f} s on {facts['cores']} cores (load {facts['load_start'][0]:.2f} at the start, "
        f"{facts['load_end'][0]:.2f} at the end); {stages}",
        f"- traffic: {facts['traffic']['calm']} in-distribution, {facts['traffic']['drifted']} drifted "
        f"(the Acme mobile app, not in the knowledge base; reworded, typos, 4 with planted PII), "
        f"{facts['traffic']['split']} during the A/B test",
        f"- routes, drifted replay: {facts['routes']['drifted']}",
        *_monitor_lines(facts),
        f"- feedback: {fb.get('down', 0)} thumbs-down, {fb.get('up', 0)} up, "
        f"{fb.get('corrections_stored', 0)} corrections stored (redacted)",
        f"- harvest: {state['harvest']['items']} items ({state['harvest']['heldout']} held out for the gate); "
        f"reasons: {facts['harvest_reasons']}",
        f"- review by a **scripted reviewer** (not a person): {r.get('accept', 0)} accepted, "
        f"{r.get('edit', 0)} edited, {r.get('reject', 0)} rejected",
        f"- merge: task-v{m['version']} with {m['merged_train']} new training conversations, "
        f"{m['heldout']} held-out failures; refused: {refused or 'none'}",
        f"- retrain: the student's own recipe ({rt.get('source', 'n/a')}) on task-v{m['version']}"
        f"{', overrides: ' + ', '.join(rt['overrides']) if rt.get('overrides') else ''}, "
        f"{facts['stage_seconds'].get('retrain+gate', 0):.0f} s with the gate",
        *_gate_lines(state, facts["gate_exit"]),
        *_ab_lines(facts["ab"]),
        f"- planted PII in the {facts['pii_files']} files written: {len(facts['pii_hits'])} found",
        "",
    ]
    return "\n".join(lines)
