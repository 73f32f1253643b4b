"""Other readings of a text, for the checks an obfuscated request would otherwise slip past.

A blocked-topic regex or an injection heuristic matches words. Writing the words differently keeps
the request readable to a model while hiding it from the matcher: full-width or Cyrillic look-alike
letters (``ｈａｃｋ``, ``hасk``), leetspeak (``h4ck 1nt0``), letters spaced or dotted apart
(``s t o c k``, ``I.g.n.o.r.e``), invisible characters between letters, or the whole instruction in
base64. ``readings`` undoes each of these, so the guard can run its word-level checks on the
text as a model would understand it. PII redaction does not use these readings: it has its own
canonical view (``textview``), which keeps offsets into the original.
"""

from __future__ import annotations

import base64
import binascii
import re

from distilltune.policy.textview import view_of

# Latin look-alikes that NFKC leaves alone (Cyrillic and Greek lower and upper case).
_CONFUSABLES = str.maketrans(
    "аеорсхуіѕԁјһӏԛԝοαεικνρτυАВЕКМНОРСТХІЅЈΑΒΕΗΙΚΜΝΟΡΤΥΧ",
    "aeopcxyisdjhlqwoaeikvptuABEKMHOPCTXISJABEHIKMNOPTYX",
)
_LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "|": "l"}
)
_TOKEN = re.compile(r"[A-Za-z0-9@$|]+")
_SPACED = re.compile(r"(?<![^\W_])(?:[^\W_][ .\-_*·]){2,}[^\W_](?![^\W_])")
_B64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{16,}={0,2}(?![A-Za-z0-9+/=])")


def _unleet(text: str) -> str:
    """Leet digits and symbols as letters, inside word-like tokens only.

    A token is rewritten when it has letters and no more leet characters than letters plus one:
    ``h4ck``, ``1nt0``, ``m3d1cat10n`` are words; ``2024``, ``E1403`` or ``ACME-123456`` are not.
    """

    def fix(m: re.Match) -> str:
        tok = m.group(0)
        letters = sum(c.isalpha() for c in tok)
        leet = sum(c in "013457@$|" for c in tok)
        return tok.translate(_LEET) if letters and 0 < leet <= letters + 1 else tok

    return _TOKEN.sub(fix, text)


def _unspace(text: str) -> str:
    """``s t o c k`` → ``stock``, ``I.g.n.o.r.e`` → ``Ignore``; then one space between words."""
    joined = _SPACED.sub(lambda m: re.sub(r"[ .\-_*·]", "", m.group(0)), text)
    return re.sub(r"[ \t]{2,}", " ", joined)


def _decoded_base64(text: str) -> list[str]:
    out = []
    for m in _B64.finditer(text):
        tok = m.group(0)
        try:
            raw = base64.b64decode(tok + "=" * (-len(tok) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        printable = sum(c.isprintable() or c.isspace() for c in decoded)
        if decoded and printable / len(decoded) > 0.95 and any(c.isalpha() for c in decoded):
            out.append(decoded)
    return out


def readings(text: str) -> list[str]:
    """De-obfuscated readings of ``text`` that differ from it (possibly none)."""
    plain = view_of(text).text.translate(_CONFUSABLES)
    out = [_unspace(_unleet(plain))]
    for decoded in _decoded_base64(text):
        out.append(decoded)
        out.append(_unspace(_unleet(view_of(decoded).text.translate(_CONFUSABLES))))
    return list(dict.fromkeys(r for r in out if r != text))
