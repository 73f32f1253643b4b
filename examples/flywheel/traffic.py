"""Deterministic production traffic for the flywheel demo: what users ask after the launch.

Three kinds of questions, all seeded (the same seed gives the same files, byte for byte):

- *in distribution*: acme-support training questions the served model was not trained on (the
  demo trains on a 160-question view of the 546);
- *drifted*: questions about the Acme mobile app, a product area the knowledge base does not
  cover, each asked in several wordings (paraphrases) and some with typos, plus in-distribution
  questions in casual wordings;
- a few *planted PII* cases (an e-mail address, an account id, a card number, a phone number),
  marked ``"planted_pii": true``: the only personal data in the files, there to prove the server
  and the flywheel redact it. Everything else is written without personal data.

Each line: ``{"user", "question", "area", "topic", "planted_pii"}``; ``topic`` names the mobile-app
fact sheet entry (``MOBILE_FACTS``) the scripted reviewer answers from, ``area`` is ``acme`` or
``mobile``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# What the scripted reviewer knows about the new product area (the knowledge base has none of it).
MOBILE_FACTS = {
    "install": "Install the Acme Cloud app from the App Store or Google Play and sign in with your Acme Cloud account.",
    "plans": "The Acme Cloud mobile app is included in every plan, the free plan too, at no extra cost.",
    "offline": "Offline mode keeps files you mark as available offline on the phone; changes sync when it is back online.",
    "notifications": "Turn push notifications on or off in the app under Settings > Notifications.",
    "face_id": "Face ID and fingerprint sign-in are under Settings > Security in the app; your password still works.",
    "tablet": "The app runs on iPad and Android tablets with the same features as on phones.",
    "crash": "If the app crashes, update it to the latest version, then sign out and back in; send the crash report from Settings > Help.",
    "camera": "Camera uploads send new photos to your Acme Cloud storage; turn them on under Settings > Uploads.",
}
MOBILE_QUESTIONS = {
    "install": ["How do I install the Acme Cloud mobile app?", "Where can I download the Acme app for my phone?",
                "Is there an Acme Cloud app for Android?"],
    "plans": ["Is the mobile app included in the free plan?", "Do I have to pay extra for the Acme phone app?",
              "Which plans come with the mobile app?"],
    "offline": ["Can I use the mobile app without internet?", "How does offline mode work in the Acme app?",
                "Will files I edit offline on my phone sync later?"],
    "notifications": ["How do I turn off push notifications in the app?", "The Acme app keeps sending me alerts, how do I stop them?",
                      "Can I get a phone notification when an invoice is ready?"],
    "face_id": ["Can I log in to the mobile app with Face ID?", "Does the Acme app support fingerprint login?",
                "How do I enable biometric sign-in on my phone?"],
    "tablet": ["Does the Acme app work on an iPad?", "Is there a tablet version of the mobile app?",
               "Can I use the Acme Cloud app on my Android tablet?"],
    "crash": ["Why does the mobile app keep crashing?", "The Acme app closes right after I open it, what can I do?",
              "The phone app freezes on the loading screen, how do I fix it?"],
    "camera": ["Can the mobile app upload my photos automatically?", "How do I turn on camera uploads in the Acme app?",
               "Does the phone app back up pictures from my camera roll?"],
}  # fmt: skip
CASUAL = ["{q}", "quick question: {l}", "hi, {l}", "{q} thanks!", "can you tell me {l}", "hey there - {l}"]
# The only personal data in the traffic (also checked for in every file the loop writes).
PLANTED = {
    "email": "lena.voss@example.net",
    "account": "ACME-482913",
    "card": "4111 1111 1111 1111",
    "phone": "415-555-0199",
}
PII_WRAPS = [
    "My email is {email}. {q}",
    "Account {account} here. {q}",
    "I was charged twice on card {card}. {q}",
    "Please call me back on {phone}. {q}",
]


def planted_strings() -> list[str]:
    """Every form of the planted PII that must not appear in anything the loop writes."""
    out = [*list(PLANTED.values()), "lena.voss", PLANTED["card"].replace(" ", ""), "4155550199"]
    return sorted(set(out))


def typo(text: str, rng: random.Random) -> str:
    """One keyboard slip in one longer word: swapped, dropped or doubled letter."""
    words = text.split()
    long = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) > 4]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    kind = rng.choice(("swap", "drop", "double"))
    if kind == "swap":
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    elif kind == "drop":
        w = w[:j] + w[j + 1 :]
    else:
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


def casual(question: str, rng: random.Random) -> str:
    """The same question in a casual wording (a paraphrase of its form)."""
    lower = question[0].lower() + question[1:]
    return rng.choice(CASUAL).format(q=question, l=lower)


def acme_unseen(acme: Path, served_task: Path) -> list[str]:
    """acme training questions outside the served task's train and eval views (in distribution, unseen)."""

    def questions(path: Path) -> list[str]:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(x)["messages"][0]["content"] for x in lines if x.strip()]

    seen = set(questions(served_task / "train.jsonl")) | set(questions(served_task / "eval.jsonl"))
    seen |= set(questions(acme / "eval.jsonl"))  # the eval set stays held out, in any view
    return [q for q in dict.fromkeys(questions(acme / "train.jsonl")) if q not in seen]


def _row(user: int, question: str, area: str, topic: str | None = None, pii: bool = False) -> dict:
    return {"user": f"u{user:04d}", "question": question, "area": area, "topic": topic, "planted_pii": pii}


def make_traffic(acme: Path, served_task: Path, seed: int = 0) -> dict[str, list[dict]]:
    """``calm`` (in distribution), ``drifted`` and ``split`` (for the A/B run) traffic, seeded."""
    rng = random.Random(seed)
    unseen = acme_unseen(acme, served_task)
    rng.shuffle(unseen)
    calm = [_row(i, q, "acme") for i, q in enumerate(unseen[:40])]

    mobile = [(t, q) for t, qs in MOBILE_QUESTIONS.items() for q in qs]
    drifted = []
    for k, (topic, q) in enumerate(mobile):  # 24 questions; each also asked again, reworded
        drifted.append(_row(100 + k, typo(q, rng) if k % 3 == 2 else q, "mobile", topic))
        drifted.append(_row(200 + k, casual(q, rng), "mobile", topic))
    for k, q in enumerate(unseen[40:56]):  # in-distribution questions, casually worded
        drifted.append(_row(300 + k, typo(casual(q, rng), rng) if k % 4 == 0 else casual(q, rng), "acme"))
    for k, wrap in enumerate(PII_WRAPS):  # the planted cases ride on mobile-app questions
        topic, q = mobile[(5 * k + 3) % len(mobile)]
        drifted.append(_row(400 + k, wrap.format(q=q, **PLANTED), "mobile", topic, pii=True))
    rng.shuffle(drifted)

    split = [_row(500 + k, casual(q, rng), "mobile", t) for k, (t, q) in enumerate(rng.sample(mobile, 20))]
    split += [_row(600 + k, q, "acme") for k, q in enumerate(unseen[56:76])]
    rng.shuffle(split)
    return {"calm": calm, "drifted": drifted, "split": split}


def write_traffic(out_dir: Path, traffic: dict[str, list[dict]]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in traffic.items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths
