"""`care-ray redact` (issue 24): planted PII in real ESConv sessions is found (patterns with no
model; names and places with a small NER trained here), placeholders are consistent within a
session and linked across sessions only with a key, counseling words and relative time survive,
redaction is idempotent, counts reconcile, and bad input is one line. The NER trained here is a
toy that has seen the planted names in other sentences: its recall is plumbing evidence, not a
claim about a real model."""

from __future__ import annotations

import html
import json
import random
import re
import socket
import stat
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.corpus.redact import (
    RedactionPolicy,
    build_analyzer,
    build_anonymizer,
    evaluate_labels,
    redact_session,
)
from care_ray.corpus.redact.core import PLACEHOLDER, normalize
from care_ray.corpus.redact.engine import DEFAULT_ENTITIES, NER_ENTITIES

runner = CliRunner()

CLIENTS = ["Jessica Miller", "Daniel Park", "Maria Lopez", "Kevin Brown"]
COUNSELORS = ["Laura Chen", "Peter Novak", "Susan Reed", "Omar Haddad"]
THIRD = ["Tom Becker", "Tom Becker", "Nina Alvarez", "Frank Olsen"]  # sessions 0 and 1 share Tom
CITIES = ["Chicago", "Denver", "Boston", "Seattle"]
PATTERN_PII = {
    "PHONE_NUMBER": ["(415) 555-0132", "415-555-0199", "+44 20 7946 0958", "415.555.0123"],
    "EMAIL_ADDRESS": ["jane.doe@example.com", "help@counsel.org", "mk77@mail.net", "x.y@z.io"],
    "URL": [
        "https://www.example.org/help?x=1",
        "http://forum.example.com/t/42",
        "www.support-line.org",
        "https://example.net/a/b",
    ],
    "CREDIT_CARD": ["4111 1111 1111 1111", "5500 0000 0000 0004", "4111-1111-1111-1111"] * 2,
    "IBAN_CODE": ["GB82 WEST 1234 5698 7654 32", "DE89 3704 0044 0532 0130 00"] * 2,
    "IP_ADDRESS": ["192.168.10.24", "10.0.0.7", "172.16.254.1", "8.8.4.4"],
    "US_SSN": ["536-22-8841", "371-44-9012", "219-09-9999", "457-55-5462"],
    "DATE_TIME": ["March 3, 2021", "12/05/2023", "3rd of May", "July 14, 1998"],
    "STREET_ADDRESS": ["42 Maple Street", "7 Oak Avenue", "1600 Pennsylvania Avenue", "9 Elm Road"],
}
KEEP_WORDS = ["Hope", "Grace", "today", "a moment", "every night", "next week", "last night"]
ALLOW = "hope\ngrace\n# a comment\nMay\n"


def planted_turns(i: int) -> list[tuple[str, str]]:
    """The turns planted in session i: every PII kind, names repeated, counseling words around."""
    p = {k: v[i] for k, v in PATTERN_PII.items()}
    c, s, t, city = CLIENTS[i], COUNSELORS[i], THIRD[i], CITIES[i]
    return [
        ("client", f"My name is {c}. My brother {t} keeps calling me at {p['PHONE_NUMBER']}."),
        ("counselor", f"Hi {c}, I am {s}. Write to {p['EMAIL_ADDRESS']} or read {p['URL']} ."),
        ("client", f"{t} said it began on {p['DATE_TIME']}, when I moved from {city} to "
         f"{p['STREET_ADDRESS']}. Last night was bad."),
        ("client", f"Hope is all I have today. Grace helps every night. My card is "
         f"{p['CREDIT_CARD']} and my IBAN is {p['IBAN_CODE']}."),
        ("counselor", f"Let us take a moment. Keep your SSN {p['US_SSN']} and the IP "
         f"{p['IP_ADDRESS']} private. Talk to {t} next week."),
        ("client", f"Thank you {s}. I will tell {t} about {city}."),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def planted(esconv_corpus, tmp_path_factory) -> Path:
    """Four real ESConv sessions with the planted turns woven in, as a corpus."""
    from care_ray.corpus.ingest.writer import CorpusWriter
    from care_ray.corpus.reader import iter_sessions

    out = tmp_path_factory.mktemp("planted") / "corpus"
    writer = CorpusWriter(out)
    first = [s for _, s in zip(range(4), iter_sessions(esconv_corpus), strict=False)]
    for i, session in enumerate(sorted(first, key=lambda s: s["session_id"])):
        turns = [dict(t) for t in session["turns"][:8]]
        for j, (role, text) in enumerate(planted_turns(i)):
            turns.insert(min(len(turns), 1 + 2 * j), {"role": role, "text": text})
        writer.add_input(session["source"])
        writer.add_session({**session, "turns": turns}, 1, "test")
    writer.close()
    return out


def sessions_of(corpus: Path) -> list[dict]:
    from care_ray.corpus.reader import iter_sessions

    return sorted(iter_sessions(corpus), key=lambda s: s["session_id"])


# A toy NER: names and cities of this file (and others) in template sentences it never sees at
# redaction time. Not a real model; it shows the NER path works end to end.
NAME_POOL = [*CLIENTS, *COUNSELORS, *THIRD, "Anna Weber", "Lucas Gray", "Emma Stone", "Ivan Petrov"]
CITY_POOL = [*CITIES, "Austin", "Portland", "Miami", "Dallas", "Toronto", "Madrid"]
TEMPLATES = [
    "I talked to {n} yesterday about {c}.",
    "{n} lives in {c} now.",
    "Yes, {n} called me from {c} again.",
    "We met {n} when we were in {c}.",
    "Did {n} ever go back to {c}?",
    "My friend {n} thinks {c} is too far.",
]


NEGATIVES = [
    "Hope is all I have today.",
    "Let us take a moment.",
    "Last night was bad.",
    "Hello, how are you feeling this Christmas?",
    "I feel so lonely every night.",
    "Call me at (312) 555-0101 tomorrow.",
    "I understand, that sounds really hard.",
    "Can you tell me more about your job?",
    "My sister and my friend do not talk to me.",
    "I will try to sleep better next week.",
]


@pytest.fixture(scope="module")
def toy_ner(tmp_path_factory) -> Path:
    import spacy
    from spacy.training import Example

    # thinc draws its initial weights from numpy's global state, which earlier tests move: without
    # a fixed seed the toy model's span boundaries (e.g. "Grace helps" as one PERSON) vary by run
    spacy.util.fix_random_seed(0)
    rng = random.Random(0)
    nlp = spacy.blank("en")
    ner = nlp.add_pipe("ner")
    ner.add_label("PERSON")
    ner.add_label("GPE")
    data = []
    for k in range(60):
        n, c, tpl = rng.choice(NAME_POOL), rng.choice(CITY_POOL), TEMPLATES[k % len(TEMPLATES)]
        text = tpl.format(n=n, c=c)
        spans = [(text.index(n), text.index(n) + len(n), "PERSON")]
        spans.append((text.index(c), text.index(c) + len(c), "GPE"))
        data.append((text, {"entities": spans}))
    data += [(s, {"entities": []}) for s in NEGATIVES for _ in range(2)]
    optimizer = nlp.initialize()
    for _ in range(12):
        rng.shuffle(data)
        for text, ann in data:
            nlp.update([Example.from_dict(nlp.make_doc(text), ann)], sgd=optimizer, drop=0.1)
    path = tmp_path_factory.mktemp("toy-ner") / "model"
    nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def engines(toy_ner):
    return {
        "pattern": (build_analyzer(None), build_anonymizer()),
        "ner": (build_analyzer(toy_ner), build_anonymizer()),
    }


def policy(ner: bool, **kw) -> RedactionPolicy:
    entities = (
        DEFAULT_ENTITIES if ner else tuple(e for e in DEFAULT_ENTITIES if e not in NER_ENTITIES)
    )
    allow = frozenset(normalize(x) for x in ALLOW.splitlines() if x and not x.startswith("#"))
    return RedactionPolicy(entities=entities, allow=allow, **kw)


def redact_all(sessions, engines, kind, **kw):
    analyzer, anonymizer = engines[kind]
    return [redact_session(s, analyzer, anonymizer, policy(kind == "ner", **kw)) for s in sessions]


def text_of(session) -> str:
    return "\n".join(t["text"] for t in session["turns"])


def test_pattern_entities_are_all_recalled_with_no_model(planted, engines, no_network):
    for i, (red, counts, _) in enumerate(redact_all(sessions_of(planted), engines, "pattern")):
        text = text_of(red)
        for entity, values in PATTERN_PII.items():
            assert values[i] not in text, (entity, i)
            assert counts[(entity, "redacted")] >= 1, (entity, i)
        assert CLIENTS[i] in text  # no model: names stay (and the manifest says so)
    assert no_network == []


def test_names_and_places_with_the_toy_ner_and_consistent_placeholders(planted, engines):
    found = total = 0
    for i, (red, _, pseudonyms) in enumerate(redact_all(sessions_of(planted), engines, "ner")):
        text = text_of(red)
        for name in (CLIENTS[i], COUNSELORS[i], THIRD[i], CITIES[i]):
            planted_n = PLANTED_TEXT[i].count(name)
            total += planted_n
            found += planted_n - text.count(name)
        # every occurrence of the third party maps to one placeholder in the session
        tom = [
            p for p, (e, s) in pseudonyms.originals.items() if normalize(s) == normalize(THIRD[i])
        ]
        assert len(tom) == 1 and text.count(tom[0]) == PLANTED_TEXT[i].count(THIRD[i])
        assert re.fullmatch(r"\[PERSON_\d+\]", tom[0])
    recall = found / total
    print(f"toy NER name/place recall on the planted corpus: {recall:.0%} ({found}/{total})")
    assert recall >= 0.9


PLANTED_TEXT = ["\n".join(t for _, t in planted_turns(i)) for i in range(4)]


def test_a_key_links_the_same_name_across_sessions_and_no_key_does_not(planted, engines, tmp_path):
    sessions = sessions_of(planted)[:2]  # both mention Tom Becker
    key = b"k" * 32

    def tom(results):
        return [
            next(p for p, (e, s) in ps.originals.items() if normalize(s) == "tom becker")
            for _, _, ps in results
        ]

    linked = tom(redact_all(sessions, engines, "ner", key=key))
    assert linked[0] == linked[1] and re.fullmatch(r"\[PERSON_[0-9a-f]{8}\]", linked[0])
    other_key = tom(redact_all(sessions, engines, "ner", key=b"o" * 32))
    assert other_key[0] != linked[0]
    independent = tom(redact_all(sessions, engines, "ner"))
    assert all(re.fullmatch(r"\[PERSON_\d+\]", p) for p in independent)


def test_allow_words_relative_time_and_roles_survive(planted, engines):
    for s, (red, _, _) in zip(
        sessions_of(planted), redact_all(sessions_of(planted), engines, "ner"), strict=True
    ):
        assert [t["role"] for t in red["turns"]] == [t["role"] for t in s["turns"]]
        assert {k: v for k, v in red.items() if k != "turns"} == {
            k: v for k, v in s.items() if k != "turns"
        }
        text = text_of(red)
        for word in KEEP_WORDS:
            assert word.lower() in text.lower(), word


def test_relative_time_is_kept_and_counted_absolute_dates_go(engines):
    from presidio_analyzer import RecognizerResult

    from care_ray.corpus.redact.core import choose_findings

    text = "Every night since March 3, 2021 and today I cry."
    results = [
        RecognizerResult("DATE_TIME", 0, 11, 0.85),
        RecognizerResult("DATE_TIME", 18, 31, 0.85),
        RecognizerResult("DATE_TIME", 36, 41, 0.85),
    ]
    counts: Counter = Counter()
    kept = choose_findings(text, results, policy(True), counts)
    assert [text[r.start : r.end] for r in kept] == ["March 3, 2021"]
    assert counts == {("DATE_TIME", "redacted"): 1, ("DATE_TIME", "relative_time_kept"): 2}
    counts.clear()
    choose_findings(text, results, policy(True, thresholds={"DATE_TIME": 0.9}), counts)
    assert counts == {("DATE_TIME", "below_threshold"): 3}


def test_dots_in_chat_text_are_not_urls(engines):
    analyzer, anonymizer = engines["pattern"]
    text = "Hi..how are you? I need.Tel me more at www.support-line.org or help.org/x today"
    session = {"session_id": "s", "turns": [{"role": "client", "text": text}]}
    red, counts, _ = redact_session(session, analyzer, anonymizer, policy(False))
    assert red["turns"][0]["text"] == (
        "Hi..how are you? I need.Tel me more at [URL_1] or [URL_2] today"
    )
    assert counts[("URL", "not_a_url")] == 2 and counts[("URL", "redacted")] == 2


class FindsTomOnce:
    """An analyzer stub standing for an NER model that catches "Tom" in one sentence only."""

    def analyze(self, text, language, entities):
        from presidio_analyzer import RecognizerResult

        i = text.find("Tom said")
        return [RecognizerResult("PERSON", i, i + 3, 0.85)] if i >= 0 else []


def test_a_name_found_once_is_redacted_in_every_turn(engines):
    turns = ["Tom said hi.", "I told Tom and TOM, and fed the tom cat."]
    session = {"session_id": "s", "turns": [{"role": "client", "text": t} for t in turns]}
    red, counts, _ = redact_session(session, FindsTomOnce(), engines["ner"][1], policy(True))
    assert [t["text"] for t in red["turns"]] == [
        "[PERSON_1] said hi.",
        "I told [PERSON_1] and [PERSON_1], and fed the tom cat.",
    ]
    assert counts == {("PERSON", "redacted"): 3}


def test_redacting_twice_changes_nothing(planted, engines):
    """Placeholders are never re-detected, and the detection runs to a fixpoint on its own output
    (an NER model reads context, and a replaced name changes its neighbours' context): a second
    pass changes nothing and redacts nothing, with patterns alone and with the model."""
    for kind in ("pattern", "ner"):
        once = [r for r, _, _ in redact_all(sessions_of(planted), engines, kind)]
        twice = redact_all(once, engines, kind)
        assert [r for r, _, _ in twice] == once, kind
        assert all(
            n == 0 for _, c, _ in twice for (_, reason), n in c.items() if reason == "redacted"
        )


def test_evaluate_matches_a_hand_count(tmp_path):
    # three labelled lines; by hand: PHONE 2 gold, 2 found exactly; EMAIL 1 gold, found;
    # PERSON (no model) 1 gold, 0 found; URL: 1 gold found but with a different end (overlap
    # only), and one predicted URL inside the e-mail? no: the e-mail wins the overlap.
    lines = [
        ("Call (415) 555-0132 or mail a.b@example.com", [(5, 19, "PHONE_NUMBER"), (28, 43, "EMAIL_ADDRESS")]),
        ("Anna said 415-555-0199 works", [(0, 4, "PERSON"), (10, 22, "PHONE_NUMBER")]),
        ("see https://example.org/x for more", [(4, 23, "URL")]),
    ]  # fmt: skip
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        "".join(
            json.dumps(
                {"text": t, "entities": [{"start": s, "end": e, "type": k} for s, e, k in spans]}
            )
            + "\n"
            for t, spans in lines
        )
    )
    report = evaluate_labels(labels, build_analyzer(None), policy(False))["per_entity"]
    assert report["PHONE_NUMBER"] == {
        "gold": 2, "predicted": 2, "recall_exact": 1.0, "recall_overlap": 1.0,
        "precision_exact": 1.0, "precision_overlap": 1.0,
    }  # fmt: skip
    assert report["EMAIL_ADDRESS"]["recall_exact"] == 1.0
    assert report["PERSON"]["gold"] == 1 and report["PERSON"]["recall_overlap"] == 0.0
    assert report["PERSON"]["precision_exact"] is None
    assert report["URL"]["recall_exact"] == 0.0 and report["URL"]["recall_overlap"] == 1.0
    assert report["URL"]["precision_overlap"] == 1.0
    r = runner.invoke(app, ["redact", "--evaluate", str(labels)])
    assert r.exit_code == 0, r.output
    assert "PHONE_NUMBER" in r.output and "100%" in r.output
    saved = json.loads((tmp_path / "labels.evaluation.json").read_text())
    assert saved["per_entity"] == report


def one_line_error(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.output
    return lines[0]


def test_bad_input_is_one_line(planted, tmp_path):
    base = ["redact", "--sessions", str(planted), "--out", str(tmp_path / "out")]
    assert "no such folder" in one_line_error(
        runner.invoke(app, [*base, "--ner-model", str(tmp_path / "nope")])
    )
    (tmp_path / "notspacy").mkdir()
    assert "not a spaCy pipeline" in one_line_error(
        runner.invoke(app, [*base, "--ner-model", str(tmp_path / "notspacy")])
    )
    assert "--allow" in one_line_error(runner.invoke(app, [*base, "--allow", str(tmp_path / "x")]))
    (tmp_path / "short.key").write_text("abc\n")
    assert "at least 16" in one_line_error(
        runner.invoke(app, [*base, "--key-file", str(tmp_path / "short.key")])
    )
    assert "ENTITY=SCORE" in one_line_error(runner.invoke(app, [*base, "--threshold", "PERSON"]))
    assert "unknown FOO" in one_line_error(runner.invoke(app, [*base, "--entities", "PERSON,FOO"]))
    (tmp_path / "t.yaml").write_text("PERSON: 0.7\nURL: high\n")
    assert "not a number" in one_line_error(
        runner.invoke(app, [*base, "--thresholds", str(tmp_path / "t.yaml")])
    )
    assert not (tmp_path / "out").exists()


def test_thresholds_come_from_flags_over_a_yaml_file(tmp_path):
    from care_ray.corpus.redact import parse_thresholds

    (tmp_path / "t.yaml").write_text("PERSON: 0.7\nurl: 0.4\n")
    assert parse_thresholds(["PERSON=0.6"], tmp_path / "t.yaml") == {"PERSON": 0.6, "URL": 0.4}


def test_the_cli_redacts_a_corpus_with_ray_data(planted, engines, tmp_path, toy_ner, no_network):
    from care_ray.corpus.reader import validate_corpus

    key = tmp_path / "key"
    key.write_text("a secret key of more than sixteen bytes\n")
    allow = tmp_path / "allow.txt"
    allow.write_text(ALLOW)
    out, mapping = tmp_path / "red", tmp_path / "private" / "mapping.jsonl"
    args = ["redact", "--sessions", str(planted), "--allow", str(allow), "--key-file", str(key)]
    r = runner.invoke(
        app,
        [*args, "--out", str(out), "--ner-model", str(toy_ner), "--write-mapping", str(mapping)],
    )
    assert r.exit_code == 0, r.output
    assert "warning: writing the original" in r.output and "4 sessions written" in r.output
    for name in (*CLIENTS, "(415) 555-0132", "jane.doe@example.com"):
        assert name not in r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["input_records"]
        == manifest["sessions_written"] + manifest["records_quarantined"]
        == 4
    )
    red = manifest["redaction"]
    assert red["redacted"] and red["linked_across_sessions"] and red["allow_list_size"] == 3
    assert red["ner_model"] == str(toy_ner) and red["note"] is None
    assert red["by_entity"]["PHONE_NUMBER"]["redacted"] >= 4
    assert validate_corpus(out)["ok"]
    assert stat.S_IMODE(mapping.stat().st_mode) == 0o600
    rows = [json.loads(x) for x in mapping.read_text().splitlines()]
    assert {"session_id", "placeholder", "entity_type", "original"} == set(rows[0])
    texts = {s["session_id"]: text_of(s) for s in sessions_of(out)}
    for row in rows:
        assert row["original"] not in PLACEHOLDER.sub("", texts[row["session_id"]])
        assert row["placeholder"] in texts[row["session_id"]]
    # the written corpus redacts to itself with pattern recognizers (the Ray path is the same
    # code per session; a second Ray run would only add start-up time)
    analyzer, anonymizer = engines["pattern"]
    for s in sessions_of(out):
        assert redact_session(s, analyzer, anonymizer, policy(False))[0] == s
    assert all(PLACEHOLDER.search(t) for t in texts.values())
    assert no_network == []
    # what is made from it says so: the analysis records how, and the report shows it
    from care_ray.cli import app as cli_app

    analysis, report = tmp_path / "analysis", tmp_path / "report"
    ran = CliRunner().invoke(cli_app, ["analyze", "--sessions", str(out), "--out", str(analysis)])
    assert ran.exit_code == 0, ran.output
    said = json.loads((analysis / "manifest.json").read_text())["corpus_redaction"]
    assert said.startswith("redacted (") and "PERSON" in said and "keyed hash" in said
    page = CliRunner().invoke(
        cli_app, ["report", "--analysis", str(analysis), "--out", str(report)]
    )
    assert page.exit_code == 0, page.output
    assert said in html.unescape((report / "report.html").read_text())


def _is_local(host: str) -> bool:
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    return address.is_loopback or address.is_private


@pytest.fixture
def no_network(monkeypatch):
    """Any outbound connection attempt is recorded and refused, as in test_model_paths.py, except
    to this machine's own addresses (Ray's driver talks to its local GCS and raylet over TCP)."""
    attempts: list = []
    real_connect = socket.socket.connect

    def watch(self, address, *a, **kw):
        if isinstance(address, tuple) and not _is_local(str(address[0])):
            attempts.append(address)
            raise OSError("network disabled by the test")
        return real_connect(self, address, *a, **kw)

    monkeypatch.setattr(socket.socket, "connect", watch)
    monkeypatch.setattr(socket.socket, "connect_ex", watch)
    return attempts
