"""The static review page: the review file in a browser, exporting the same decisions as JSON.

One self-contained HTML file (no network, no server): the items are embedded as JSON inside a
``<script type="application/json">`` block with every ``<``, ``>`` and ``&`` escaped, so no logged
text can close the block; the page's script builds the cards with ``textContent`` only, so no logged
text is ever parsed as HTML. The reviewer picks accept / edit / reject per item, edits the answer,
and "Export decisions" downloads ``decisions.json`` — ``{"decisions": [{id, decision, answer,
note}]}`` — which ``distilltune flywheel ... --decisions decisions.json`` writes into review.jsonl.
The page shows the same fields as the file and carries no other text.
"""

from __future__ import annotations

import json

SHOWN = (
    "id", "decision", "answer", "note", "split", "reasons", "messages", "student_answer", "teacher_answer",
    "teacher_problem", "correction", "citations", "confidence", "request_ids",
)  # fmt: skip

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>distilltune flywheel review: __TITLE__</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:980px;padding:1em 1.5em;color:#1b1f24}
h1{font-size:1.3em}.card{border:1px solid #d0d7de;border-radius:6px;padding:.8em 1em;margin:1em 0}
.meta{color:#57606a;font-size:.9em}.turn{white-space:pre-wrap;margin:.3em 0}
.lbl{font-weight:600;margin-top:.5em}.box{white-space:pre-wrap;background:#f6f8fa;padding:.4em .6em;border-radius:4px}
textarea{width:100%;min-height:5em;font:inherit}.bar{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #d0d7de}
button{font:inherit;padding:.3em 1em}.accept{border-left:4px solid #1a7f37}.reject{border-left:4px solid #cf222e}.edit{border-left:4px solid #9a6700}
</style></head><body>
<h1>Flywheel review: __TITLE__</h1>
<div class="bar"><button id="export">Export decisions</button> <span id="count" class="meta"></span></div>
<div id="items"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
const items = JSON.parse(document.getElementById("data").textContent);
const root = document.getElementById("items");
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text); return e; }
function count() { const n = items.filter(it => it.decision).length;
  document.getElementById("count").textContent = n + " of " + items.length + " decided"; }
items.forEach((it, i) => {
  const card = el("div", "card " + (it.decision || "")); root.appendChild(card);
  card.appendChild(el("div", "meta", it.id + " · " + it.split + " · " + it.reasons.join(", ") +
    " · " + it.request_ids.length + " request(s)" + (it.confidence === null ? "" : " · confidence " + it.confidence.toFixed(2))));
  it.messages.forEach(m => card.appendChild(el("div", "turn", m.role + ": " + m.content)));
  [["Student", it.student_answer], ["Teacher" + (it.teacher_problem ? " (" + it.teacher_problem + ")" : ""), it.teacher_answer],
   ["User correction", it.correction], ["Citations", (it.citations || []).join(", ")]].forEach(([k, v]) => {
    if (v) { card.appendChild(el("div", "lbl", k)); card.appendChild(el("div", "box", v)); } });
  const choice = el("div", "lbl", "Decision: ");
  ["accept", "edit", "reject"].forEach(d => { const lab = el("label"); const r = el("input");
    r.type = "radio"; r.name = "d" + i; r.value = d; r.checked = it.decision === d;
    r.onchange = () => { it.decision = d; card.className = "card " + d; count(); };
    lab.appendChild(r); lab.appendChild(document.createTextNode(" " + d + "  ")); choice.appendChild(lab); });
  card.appendChild(choice);
  card.appendChild(el("div", "lbl", "Answer to train on"));
  const ta = el("textarea"); ta.value = it.answer || "";
  ta.oninput = () => { it.answer = ta.value; if (it.decision === "accept") { it.decision = "edit";
    card.querySelector("input[value=edit]").checked = true; card.className = "card edit"; count(); } };
  card.appendChild(ta);
  card.appendChild(el("div", "lbl", "Note")); const note = el("input"); note.value = it.note || "";
  note.style.width = "100%"; note.oninput = () => { it.note = note.value; }; card.appendChild(note);
});
count();
document.getElementById("export").onclick = () => {
  const out = {decisions: items.filter(it => it.decision).map(it =>
    ({id: it.id, decision: it.decision, answer: it.answer, note: it.note || ""}))};
  const a = el("a"); a.href = URL.createObjectURL(new Blob([JSON.stringify(out, null, 2)], {type: "application/json"}));
  a.download = "decisions.json"; document.body.appendChild(a); a.click(); a.remove();
};
</script></body></html>
"""


def _escape_json(obj) -> str:
    """JSON safe inside a script block: no ``</script>``, no ``<!--``, no HTML entity surprises."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render_page(items: list[dict], title: str) -> str:
    data = [{k: it.get(k) for k in SHOWN} for it in items]
    safe_title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _PAGE.replace("__TITLE__", safe_title).replace("__DATA__", _escape_json(data))
