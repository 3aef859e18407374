"""The pure core of redaction: which of Presidio's findings in a turn are redacted (and why the
others are not), and consistent pseudonyms over one session's turns.

A finding is kept unless it falls inside a placeholder (so a redacted corpus redacts to itself),
scores below its entity's threshold, is on the allow-list ("Hope", "Grace", "May" are counseling
words before they are names), is a "URL" that is prose ("Hi..how"), or is a DATE_TIME with no
absolute date in it ("today", "every night", "next week" carry the story, not the identity). Of
overlapping findings the pattern one wins over an NER one, then the higher score.
Counts are kept per entity type and reason; no text leaves this module except the redacted turn."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from care_ray.corpus.redact.engine import _MONTH, DEFAULT_ENTITIES, NER_ENTITIES

REDACTED, ALLOWED, BELOW_THRESHOLD, RELATIVE_TIME_KEPT, NOT_A_URL = (
    "redacted",
    "allowed",
    "below_threshold",
    "relative_time_kept",
    "not_a_url",
)
REASONS = (REDACTED, ALLOWED, BELOW_THRESHOLD, RELATIVE_TIME_KEPT, NOT_A_URL)

# Placeholder labels: short enough that the dialogue still reads.
LABELS = {
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "CREDIT_CARD": "CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP",
    "US_SSN": "SSN",
    "DATE_TIME": "DATE",
    "ORGANIZATION": "ORG",
    "STREET_ADDRESS": "ADDRESS",
}
PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_]*_(?:\d+|[0-9a-f]{8})\]")
# A DATE_TIME is redacted only when it names a day on the calendar: digits in a date shape, a
# year, or a month with a day number. "in May", "last night", "a moment" are kept.
ABSOLUTE_DATE = re.compile(
    rf"\d{{1,4}}[/.-]\d{{1,2}}[/.-]\d{{1,4}}|\b(?:19|20)\d{{2}}\b"
    rf"|\b{_MONTH}\.?\s+\d{{1,2}}\b|\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\b",
    re.IGNORECASE,
)
_SPACE = re.compile(r"\s+")


def prose_not_url(surface: str) -> bool:
    """Chat text joins sentences with dots ("Hi..how", "good...th", "two.You"), and Presidio's
    URL pattern reads the word after the dots as a top-level domain (.how, .th, .you are real
    ones). A host has no empty label, and a bare host (no scheme, no www., no path) whose last
    label is capitalised is a missing space after a full stop."""
    if ".." in surface:
        return True
    bare = "://" not in surface and not surface.lower().startswith("www.") and "/" not in surface
    return bare and surface.rsplit(".", 1)[-1][:1].isupper()


def normalize(surface: str) -> str:
    """The form two mentions must share to get one placeholder: case and whitespace folded,
    surrounding punctuation dropped."""
    return _SPACE.sub(" ", surface).strip(" \t\n.,;:!?\"'()").casefold()


@dataclass(frozen=True)
class RedactionPolicy:
    """What to redact and how; picklable, so each Ray worker gets its own copy."""

    entities: tuple[str, ...] = DEFAULT_ENTITIES
    thresholds: dict[str, float] = field(default_factory=dict)
    default_threshold: float = 0.0
    allow: frozenset[str] = frozenset()
    key: bytes | None = None  # set: placeholders are keyed hashes, linked across sessions

    def threshold(self, entity_type: str) -> float:
        return self.thresholds.get(entity_type, self.default_threshold)

    def describe(self, ner_model: str | None) -> dict[str, Any]:
        """How the corpus was redacted, for its manifest (never the allow-list terms or the key)."""
        return {
            "entities": list(self.entities),
            "ner_model": ner_model,
            "thresholds": dict(sorted(self.thresholds.items())),
            "default_threshold": self.default_threshold,
            "allow_list_size": len(self.allow),
            "linked_across_sessions": self.key is not None,
        }


class Pseudonyms:
    """One session's placeholders: the same normalized surface of one type gets the same
    placeholder every time. Numbered in order of first appearance, or, with a key, the first 8
    hex digits of HMAC-SHA256(key, normalized value), which link the value across sessions."""

    def __init__(self, key: bytes | None = None, taken: Iterable[str] = ()):
        self.key = key
        self.assigned: dict[tuple[str, str], str] = {}
        self.originals: dict[str, tuple[str, str]] = {}  # placeholder → (entity type, surface)
        self.numbers: Counter = Counter()
        self.taken = set(taken)  # placeholders already in the text (a second pass): never reused

    def placeholder(self, entity_type: str, surface: str) -> str:
        label = LABELS.get(entity_type, entity_type)
        norm = normalize(surface)
        found = self.assigned.get((label, norm))
        if found is not None:
            return found
        if self.key is not None:
            tag = hmac.new(self.key, norm.encode("utf-8"), hashlib.sha256).hexdigest()[:8]
        else:
            self.numbers[label] += 1
            while f"[{label}_{self.numbers[label]}]" in self.taken:
                self.numbers[label] += 1
            tag = str(self.numbers[label])
        made = f"[{label}_{tag}]"
        self.assigned[(label, norm)] = made
        self.originals.setdefault(made, (entity_type, surface))
        return made


def _overlaps(a: Any, b: Any) -> bool:
    return a.start < b.end and b.start < a.end


@dataclass
class _Span:
    start: int
    end: int


def choose_findings(text: str, results: Iterable[Any], policy: RedactionPolicy, counts: Counter):
    """The findings to redact, non-overlapping and in text order; `counts[(type, reason)]` gets
    one per finding considered."""
    protected = [_Span(*m.span()) for m in PLACEHOLDER.finditer(text)]
    candidates = []
    for r in results:
        while r.entity_type == "URL" and r.end > r.start and text[r.end - 1] in ".,;:!?)'\"":
            r.end -= 1  # Presidio's URL pattern takes the full stop that ends the sentence
        if r.entity_type not in policy.entities or any(_overlaps(r, p) for p in protected):
            continue
        surface = text[r.start : r.end]
        if r.score < policy.threshold(r.entity_type):
            counts[(r.entity_type, BELOW_THRESHOLD)] += 1
        elif normalize(surface) in policy.allow:
            counts[(r.entity_type, ALLOWED)] += 1
        elif r.entity_type == "URL" and prose_not_url(surface):
            counts[(r.entity_type, NOT_A_URL)] += 1
        elif r.entity_type == "DATE_TIME" and not ABSOLUTE_DATE.search(surface):
            counts[(r.entity_type, RELATIVE_TIME_KEPT)] += 1
        else:
            candidates.append(r)
    kept: list[Any] = []
    # a pattern finding (a phone, an e-mail) outranks an NER guess over part of it
    by_strength = sorted(
        candidates,
        key=lambda r: (r.entity_type in NER_ENTITIES, -r.score, -(r.end - r.start), r.start),
    )
    for r in by_strength:
        if not any(_overlaps(r, k) for k in kept):
            kept.append(r)
    kept.sort(key=lambda r: r.start)
    for r in kept:
        counts[(r.entity_type, REDACTED)] += 1
    return kept


def find_in_session(
    texts: list[str], analyzer: Any, policy: RedactionPolicy, counts: Counter
) -> list[list[Any]]:
    """Per turn, the findings to redact. A name, place or organisation the model found once is
    redacted wherever else it appears in the session (whole words, any case): an NER model's
    guess depends on the sentence, and a name caught in one turn must not be read in the next."""
    from presidio_analyzer import RecognizerResult

    found = [
        choose_findings(
            text,
            analyzer.analyze(text=text, language="en", entities=list(policy.entities)),
            policy,
            counts,
        )
        for text in texts
    ]
    names: dict[tuple[str, str], bool] = {}  # (type, normalized) → was it ever written lowercase
    for text, kept in zip(texts, found, strict=True):
        for r in kept:
            surface = text[r.start : r.end]
            if r.entity_type in NER_ENTITIES and normalize(surface):
                key = (r.entity_type, normalize(surface))
                names[key] = names.get(key, False) or surface == surface.lower()
    for (entity, norm), lowercase_seen in sorted(names.items()):
        pattern = re.compile(
            r"(?<!\w)" + r"\s+".join(map(re.escape, norm.split())) + r"(?!\w)", re.IGNORECASE
        )
        for text, kept in zip(texts, found, strict=True):
            taken = kept + [_Span(*m.span()) for m in PLACEHOLDER.finditer(text)]
            for m in pattern.finditer(text):
                # "Night" found in "Christmas Night" is not "every night": a capitalised find
                # spreads to its capitalised (or upper-case) mentions only
                if m.group(0) == m.group(0).lower() and not lowercase_seen:
                    continue
                if not any(_overlaps(_Span(*m.span()), k) for k in taken):
                    kept.append(RecognizerResult(entity, m.start(), m.end(), 1.0))
                    counts[(entity, REDACTED)] += 1
            kept.sort(key=lambda r: r.start)
    return found


def anonymize_turn(text: str, kept: list[Any], anonymizer: Any, pseudonyms: Pseudonyms) -> str:
    """One turn's text with its findings replaced by the session's placeholders."""
    from presidio_anonymizer.entities import OperatorConfig

    if not kept:
        return text
    operators = {
        t: OperatorConfig("custom", {"lambda": lambda s, t=t: pseudonyms.placeholder(t, s)})
        for t in {r.entity_type for r in kept}
    }
    # the findings are final (counted, placeholders assigned): no merging of neighbours
    return anonymizer.anonymize(
        text=text, analyzer_results=kept, operators=operators, merge_entities_with_spaces=False
    ).text


# An NER model reads context, and replacing a name changes the context of its neighbours: the
# detection runs again on its own output until nothing more is found, so that redacting a redacted
# session changes nothing. Two passes settle every case seen; a third is the bound.
FIXPOINT_PASSES = 3


def _redact_once(
    session: dict[str, Any],
    analyzer: Any,
    anonymizer: Any,
    policy: RedactionPolicy,
    pseudonyms: Pseudonyms,
    counts: Counter,
) -> dict[str, Any]:
    texts = [t["text"] for t in session["turns"]]
    pseudonyms.taken |= {m.group(0) for text in texts for m in PLACEHOLDER.finditer(text)}
    found = find_in_session(texts, analyzer, policy, counts)
    for text, kept in zip(texts, found, strict=True):
        for r in kept:  # numbered in order of appearance (the anonymizer replaces from the end)
            pseudonyms.placeholder(r.entity_type, text[r.start : r.end])
    turns = [
        {**t, "text": anonymize_turn(text, kept, anonymizer, pseudonyms)}
        for t, text, kept in zip(session["turns"], texts, found, strict=True)
    ]
    return {**session, "turns": turns}


def redact_session(
    session: dict[str, Any], analyzer: Any, anonymizer: Any, policy: RedactionPolicy
) -> tuple[dict[str, Any], Counter, Pseudonyms]:
    """The session with every turn's text redacted (roles, ids, labels untouched) — a fixpoint of
    the detection (FIXPOINT_PASSES) —, the counts per (entity type, reason) and the placeholders
    it used. A later pass adds only what it redacts to the counts: the findings it keeps were
    counted by the first."""
    pseudonyms = Pseudonyms(policy.key)
    counts: Counter = Counter()
    current = _redact_once(session, analyzer, anonymizer, policy, pseudonyms, counts)
    for _ in range(FIXPOINT_PASSES - 1):
        more: Counter = Counter()
        again = _redact_once(current, analyzer, anonymizer, policy, pseudonyms, more)
        if again == current:
            break
        counts.update({k: n for k, n in more.items() if k[1] == "redacted"})
        current = again
    return current, counts, pseudonyms


def counts_table(counts: Counter) -> dict[str, dict[str, int]]:
    """{entity type: {reason: n}} for a manifest."""
    table: dict[str, dict[str, int]] = {}
    for (entity, reason), n in sorted(counts.items()):
        table.setdefault(entity, {})[reason] = n
    return table
