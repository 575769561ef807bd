"""Safety scanners: PII, prompt injection / jailbreak attempts, toxicity and refusals.

Each scanner is pure: text in, a list of `Finding`s (category and character span) out. They
register by name in `SCANNERS`, and the daemon runs the configured ones on every event's input
and output. Candidates that look like card numbers or IBANs are confirmed by their checksums
(Luhn, ISO 13616 mod 97) and IP addresses by the `ipaddress` module, so digit runs such as
order numbers do not count as PII. Flagged text is stored with the spans replaced by
`[CATEGORY]`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from omnitune.monitor.config import SafetySection

#: Every category a scanner can report: the `category` label's whole value set.
CATEGORIES = (
    "pii_email",
    "pii_phone",
    "pii_card",
    "pii_iban",
    "pii_ip",
    "prompt_injection",
    "toxicity",
    "refusal",
)


@dataclass(frozen=True)
class Finding:
    category: str
    start: int
    end: int


@dataclass(frozen=True)
class Scanner:
    """A named check; `sides` says whether it reads inputs, outputs or both."""

    name: str
    scan: Callable[[str], list[Finding]]
    sides: frozenset[str]


# PII ---------------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# International (+CC ...) or North American / national forms with separators.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w|\.\d)"
    r"|(?<![\w+])\+\d{8,15}(?!\w)"
)
_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"\w+")
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that payment card numbers carry."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def scan_pii(text: str) -> list[Finding]:
    if "@" not in text and _DIGIT.search(text) is None:
        return []  # every PII pattern needs an @ or a digit: most texts end here
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []

    def add(category: str, match: re.Match[str]) -> None:
        start, end = match.span()
        if any(start < t_end and t_start < end for t_start, t_end in taken):
            return
        taken.append((start, end))
        found.append(Finding(category, start, end))

    if "@" in text:
        for match in _EMAIL.finditer(text):
            add("pii_email", match)
    if _DIGIT.search(text) is None:
        return found
    for match in _IBAN.finditer(text):
        if iban_valid(match.group()):
            add("pii_iban", match)
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            add("pii_card", match)
    for match in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        add("pii_ip", match)
    if ":" in text:
        for match in _IPV6.finditer(text):
            try:
                ipaddress.IPv6Address(match.group())
            except ValueError:
                continue
            add("pii_ip", match)
    for match in _PHONE.finditer(text):
        digits = sum(c.isdigit() for c in match.group())
        if 9 <= digits <= 15:
            add("pii_phone", match)
    return found


# Prompt injection / jailbreak ---------------------------------------------------------------

_INJECTION = re.compile(
    "|".join(
        [
            r"\b(?:ignore|disregard|forget|override)\b[\w\s,]{0,30}?\b(?:previous|prior|above|"
            r"earlier|all|your|the|system)\b[\w\s]{0,20}?\b(?:instructions?|prompts?|rules|"
            r"guidelines|directives)\b",
            r"\byou are now\b[\w\s]{0,20}?\b(?:DAN|unfiltered|uncensored|jailbroken|evil)\b",
            r"\bdo anything now\b",
            r"\b(?:developer|god|jailbreak|DAN) mode\b",
            r"\b(?:reveal|show|print|repeat|output|leak)\b[\w\s]{0,20}?\b(?:system|hidden|"
            r"initial|secret)\s+(?:prompt|instructions?|message)\b",
            r"\b(?:pretend|act as if|imagine)\b[\w\s]{0,40}?\b(?:no|without)\s+(?:restrictions|"
            r"rules|filters|limits|guidelines)\b",
            r"\b(?:bypass|disable|turn off|circumvent)\b[\w\s]{0,20}?\b(?:safety|content|"
            r"moderation)\s+(?:filters?|guidelines|polic(?:y|ies)|rules)\b",
            r"\bjailbreak(?:ing|ed)?\b",
        ]
    ),
    re.IGNORECASE,
)


def scan_injection(text: str) -> list[Finding]:
    return [Finding("prompt_injection", *m.span()) for m in _INJECTION.finditer(text)]


# Toxicity --------------------------------------------------------------------------------------


def lexicon_terms(source: Iterable[str] | None = None) -> list[str]:
    """Terms of a lexicon (the shipped one by default): one a line, '#' comments skipped."""
    if source is None:
        text = (
            resources.files("omnitune.monitor")
            .joinpath("assets/toxicity_lexicon.txt")
            .read_text(encoding="utf-8")
        )
        source = text.splitlines()
    return [t.strip().lower() for t in source if t.strip() and not t.lstrip().startswith("#")]


def lexicon_scanner(terms: list[str]) -> Callable[[str], list[Finding]]:
    # Longest first, so that "piece of trash" wins over "trash".
    alternation = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)
    # Most texts contain no term's longest word ("hell" of "go to hell"); a set lookup rules
    # them out before the regex runs.
    words = {max(_WORD.findall(term), key=len) for term in terms}

    def scan(text: str) -> list[Finding]:
        if words.isdisjoint(_WORD.findall(text.lower())):
            return []
        return [Finding("toxicity", *m.span()) for m in pattern.finditer(text)]

    return scan


def classifier_scanner(
    model_path: str, label: str, threshold: float
) -> Callable[[str], list[Finding]]:
    """Toxicity from a local transformers text-classification model (the whole text is flagged)."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=model_path, top_k=None, truncation=True)
    wanted = label.lower()

    def scan(text: str) -> list[Finding]:
        if not text.strip():
            return []
        scores = classify(text)[0]
        score = next((s["score"] for s in scores if s["label"].lower() == wanted), 0.0)
        return [Finding("toxicity", 0, len(text))] if score >= threshold else []

    return scan


# Refusals --------------------------------------------------------------------------------------

_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) (?:sorry|afraid),? but I (?:can(?:no|')t|am unable|won't)|"
    r"I (?:cannot|can't|can not|won't|am unable to|am not able to) (?:help|assist|comply|"
    r"provide|do that|fulfil+)|"
    r"as an AI(?: language model)?,? I (?:cannot|can't|don't|am not able))",
    re.IGNORECASE,
)


#: Every refusal pattern contains one of these; texts without them skip the regex.
_REFUSAL_KEYS = ("sorry", "afraid", "can", "won't", "unable", "not able", "as an ai")


def scan_refusal(text: str) -> list[Finding]:
    lower = text.lower()
    for key in _REFUSAL_KEYS:
        if key in lower:
            return [Finding("refusal", *m.span()) for m in _REFUSAL.finditer(text)]
    return []


# Registry --------------------------------------------------------------------------------------

BOTH = frozenset({"input", "output"})

#: scanner name -> factory taking the safety config section.
SCANNERS: dict[str, Callable[[Any], Scanner]] = {
    "pii": lambda cfg: Scanner("pii", scan_pii, BOTH),
    "prompt_injection": lambda cfg: Scanner(
        "prompt_injection", scan_injection, frozenset({"input"})
    ),
    "toxicity": lambda cfg: Scanner(
        "toxicity",
        classifier_scanner(cfg.toxicity_model, cfg.toxicity_label, cfg.toxicity_threshold)
        if cfg is not None and cfg.toxicity_model
        else lexicon_scanner(lexicon_terms()),
        BOTH,
    ),
    "refusal": lambda cfg: Scanner("refusal", scan_refusal, frozenset({"output"})),
}


def build_scanners(names: list[str], config: SafetySection | None = None) -> list[Scanner]:
    return [SCANNERS[name](config) for name in names]


def scan(text: str, scanners: list[Scanner], side: str) -> list[Finding]:
    """Every finding of the scanners that read `side` ('input' or 'output')."""
    if not text:
        return []
    found: list[Finding] = []
    for scanner in scanners:
        if side in scanner.sides:
            found.extend(scanner.scan(text))
    return found


def redact(text: str, findings: list[Finding]) -> str:
    """`text` with each finding's span replaced by `[CATEGORY]` (overlaps merged)."""
    if not findings:
        return text
    spans = sorted((f.start, f.end, f.category) for f in findings)
    pieces, cursor = [], 0
    for start, end, category in spans:
        if start < cursor:
            cursor = max(cursor, end)
            continue
        pieces.append(text[cursor:start])
        pieces.append(f"[{category.upper()}]")
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)
