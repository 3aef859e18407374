"""Real exports in, without surprises (issue 9), and an ingest CLI that teaches (issue 16, ingest part).

Every export here is written by the test: utterance-per-row CSV and JSON lines, English and Chinese."""

import csv
import json
import re
import shlex
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.corpus.ingest import (
    FormatUnknown,
    TurnsMapping,
    infer_format,
    ingest_files,
    mapping_from_spec,
)
from care_ray.corpus.ingest.mapping import MappingError
from care_ray.corpus.reader import iter_sessions, validate_corpus

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"

# (session, speaker, text, counselor code, client code); quality flag and topic per session
EN = {
    "e1": [
        ("patient", "I can't sleep before exams.", "", "n/a"),
        ("therapist", "What goes through your mind then?", "Open question", ""),
        ("patient", "That I will fail.", "", "Change talk"),
        ("therapist", "That sounds frightening.", "reflection", "N/A"),
    ],
    "e2": [
        ("patient", "My sister and I fight a lot.", "", ""),
        ("therapist", "What do the fights look like?", "Open Question", ""),
        ("patient", "Shouting, mostly.", "", "sustain talk"),
    ],
}
ZH = {
    "z1": [
        ("来访者", "最近工作压力很大，晚上睡不着。", "", "无"),
        ("咨询师", "能说说压力来自哪里吗？", "提问", ""),
        ("来访者", "领导总是临时加任务。", "", "改变话语"),
        ("咨询师", "听起来你很辛苦。", "情感反映", ""),
    ],
    "z2": [
        ("来访者", "我和父母总是吵架。", "", ""),
        ("咨询师", "吵架之后你有什么感受？", "开放式提问", ""),
        ("来访者", "很内疚。", "", "维持话语"),
    ],
}
FLAGS = {
    "e1": ("high", "exams"),
    "e2": ("low", "family"),
    "z1": ("high", "工作"),
    "z2": ("low", "家庭"),
}
EN_ROLES = ["client_values=patient", "counselor_values=therapist"]
ZH_ROLES = ["client_values=来访者", "counselor_values=咨询师"]


def rows_of(sessions, blank_at=None):
    rows = []
    for sid, turns in sessions.items():
        for i, (who, text, code, client_code) in enumerate(turns):
            quality, topic = FLAGS[sid]
            rows.append(
                {
                    "conv_id": sid,
                    "speaker": who,
                    "utterance": "   " if (sid, i) == blank_at else text,
                    "turn_no": str(i + 1),
                    "quality_flag": quality,
                    "topic": topic,
                    "therapist_code": code,
                    "patient_code": client_code,
                }
            )
    return rows


def write_export(path, rows):
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        path.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
    return path


def maps(*pairs):
    return [a for p in pairs for a in ("--map", p)]


BASE = maps("session=conv_id", "role=speaker", "text=utterance", "order=turn_no")
CASES = [
    pytest.param(EN, ".csv", EN_ROLES, id="en-csv"),
    pytest.param(ZH, ".jsonl", ZH_ROLES, id="zh-jsonl"),
    pytest.param(ZH, ".csv", ZH_ROLES, id="zh-csv"),
    pytest.param(EN, ".jsonl", EN_ROLES, id="en-jsonl"),
]


def ingest(tmp_path, export, *extra, out="corpus"):
    return runner.invoke(app, ["ingest", str(export), "--out", str(tmp_path / out), *extra])


def manifest(tmp_path, out="corpus"):
    return json.loads((tmp_path / out / "manifest.json").read_text(encoding="utf-8"))


def by_id(corpus):
    return {s["session_id"]: s for s in iter_sessions(corpus)}


# --- issue 9.1: a text column given as labels fails up front; nothing written exits non-zero ------


@pytest.mark.parametrize("sessions, ext, roles", CASES)
def test_a_text_column_mapped_as_labels_is_refused_before_anything_is_written(
    tmp_path, sessions, ext, roles
):
    export = write_export(tmp_path / f"export{ext}", rows_of(sessions))
    r = ingest(tmp_path, export, *BASE, *maps(*roles, "labels=quality_flag"))
    assert r.exit_code == 2, r.output
    msg = r.output.strip()
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert (
        "'quality_flag'" in msg
        and ("'high'" in msg or "'low'" in msg)
        and "--map metadata=quality_flag" in msg
    )
    assert not (tmp_path / "corpus").exists()
    # the fix the message names works, and keeps the flag
    fixed = ingest(tmp_path, export, *BASE, *maps(*roles, "metadata=quality_flag"))
    assert fixed.exit_code == 0, fixed.output
    assert {
        sid: s["metadata"]["quality_flag"] for sid, s in by_id(tmp_path / "corpus").items()
    } == {sid: FLAGS[sid][0] for sid in sessions}


def test_a_stray_text_value_in_a_numeric_column_is_a_record_defect_not_a_mapping_error(tmp_path):
    rows = rows_of(EN)
    for r in rows:
        r["score"] = "4" if r["conv_id"] == "e1" else "four"
    rows += [
        {**r, "conv_id": f"{r['conv_id']}-{k}", "score": "3"} for k in range(3) for r in rows_of(EN)
    ]  # mostly numbers
    r = ingest(
        tmp_path, write_export(tmp_path / "x.csv", rows), *BASE, *maps(*EN_ROLES, "labels=score")
    )
    assert r.exit_code == 0, r.output
    m = manifest(tmp_path)
    assert m["quarantined_by_reason"] == {"bad_value": 1} and m["sessions_written"] == 1 + 6


@pytest.mark.parametrize("ext", [".csv", ".jsonl"])
def test_when_nothing_is_written_the_command_fails_with_top_reasons_and_an_example_each(
    tmp_path, ext
):
    rows = [
        r for r in rows_of(ZH) if r["speaker"] == "来访者"
    ]  # client turns only: every session single-speaker
    rows += [
        {**rows_of(EN)[0], "conv_id": "e9"},
        {**rows_of(EN)[1], "conv_id": "e9", "speaker": "supervisor"},
    ]
    export = write_export(tmp_path / f"only-clients{ext}", rows)
    r = ingest(
        tmp_path,
        export,
        *BASE,
        *maps("client_values=来访者,patient", "counselor_values=咨询师,therapist"),
    )
    assert r.exit_code == 1
    err = r.output[r.output.index("error: nothing was written") :]
    assert re.search(
        r"single_speaker ×2, e\.g\. only-clients\.\w+:\d+\.\.only-clients\.\w+:\d+ \(2 rows\): "
        r"all 2 turns are client turns",
        err,
    ), err
    assert re.search(r"unknown_role ×1, e\.g\. .*'supervisor'", err), err
    assert err.index("single_speaker") < err.index("unknown_role")  # most frequent first
    # fixed, the same command (same --out, default --mode create) replaces the empty corpus
    write_export(export, rows_of(ZH))
    again = ingest(
        tmp_path,
        export,
        *BASE,
        *maps("client_values=来访者,patient", "counselor_values=咨询师,therapist"),
    )
    assert again.exit_code == 0, again.output
    assert manifest(tmp_path)["sessions_written"] == 2


def test_an_empty_input_is_nothing_written_too(tmp_path):
    export = tmp_path / "empty.csv"
    export.write_text("conv_id,speaker,utterance\n", encoding="utf-8")
    r = ingest(tmp_path, export, *maps("session=conv_id", "role=speaker", "text=utterance"))
    assert r.exit_code == 1 and "the inputs hold no records" in r.output


# --- issue 9.2: an empty utterance costs the turn, not the conversation ----------------------------


@pytest.mark.parametrize("sessions, ext, roles", CASES[:2])
def test_blank_turns_are_dropped_and_counted_per_session_in_corpus_and_manifest(
    tmp_path, sessions, ext, roles
):
    first, second = list(sessions)
    rows = rows_of(sessions, blank_at=(first, 2))
    rows.append(
        {**rows[0], "utterance": "", "turn_no": "99"}
    )  # a second blank message at the end of the first session
    export = write_export(tmp_path / f"export{ext}", rows)
    r = ingest(tmp_path, export, *BASE, *maps(*roles))
    assert r.exit_code == 0, r.output
    got = by_id(tmp_path / "corpus")
    expected_texts = [t[1] for i, t in enumerate(sessions[first]) if i != 2]
    assert [t["text"] for t in got[first]["turns"]] == expected_texts
    assert got[first]["metadata"]["dropped_turns"] == "2"
    assert "dropped_turns" not in (got[second]["metadata"] or {})
    m = manifest(tmp_path)
    n_rows = len(rows)
    assert (
        m["input_records"] == m["records_written"] == n_rows and m["records_quarantined"] == 0
    )  # dropped turns are not records
    assert m["turns_dropped"] == 2 and m["sessions_with_dropped_turns"] == 1
    assert m["turns_written"] == n_rows - 2 == sum(len(s["turns"]) for s in got.values())
    assert "dropped turns:  2 empty, from 1 session" in r.output
    assert validate_corpus(tmp_path / "corpus")["ok"]
    # the old behaviour, on request
    q = ingest(tmp_path, export, *BASE, *maps(*roles), "--empty-turns", "quarantine", out="q")
    assert q.exit_code == 0, q.output
    assert manifest(tmp_path, "q")["quarantined_by_reason"] == {"empty_turn": 1} and set(
        by_id(tmp_path / "q")
    ) == {second}


def test_blank_turns_in_sessions_jsonl_are_dropped_too_and_survive_export(tmp_path):
    session = {
        "session_id": "s1",
        "client_id": "c1",
        "language": "zh",
        "source": "zh-export",
        "turns": [
            {"role": "client", "text": "我睡不好。"},
            {"role": "counselor", "text": ""},
            {"role": "counselor", "text": "能多说一点吗？"},
        ],
    }
    (tmp_path / "s.jsonl").write_text(
        json.dumps(session, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    m = ingest_files(None, [tmp_path / "s.jsonl"], tmp_path / "c")
    assert (
        m["format"] == "sessions-jsonl" and m["turns_dropped"] == 1 and m["sessions_written"] == 1
    )
    assert by_id(tmp_path / "c")["s1"]["metadata"] == {"dropped_turns": "1"}
    with pytest.raises(ValueError, match="--empty-turns must be one of drop, quarantine"):
        ingest_files(None, [tmp_path / "s.jsonl"], tmp_path / "d", empty_turns="keep")


# --- issue 9.3: values that mean "no label" are no label --------------------------------------------


@pytest.mark.parametrize("sessions, ext, roles", CASES[:2])
def test_null_label_values_are_stored_as_no_label(tmp_path, sessions, ext, roles):
    rows = rows_of(sessions)
    for r in rows:
        r["rating"] = "NA" if r["turn_no"] == "1" else "4"
        r["satisfaction"] = "none" if r["conv_id"] in ("e2", "z2") else "3.5"
    export = write_export(tmp_path / f"export{ext}", rows)
    extra = maps(
        *roles,
        "strategy=therapist_code",
        "reaction=patient_code",
        "rating=rating",
        "labels=satisfaction",
    )
    r = ingest(
        tmp_path,
        export,
        *BASE,
        *extra,
        *(["--null-values", "n/a,none,na,无"] if sessions is ZH else []),
    )
    assert r.exit_code == 0, r.output
    turns = (
        ds.dataset(tmp_path / "corpus" / "sessions", partitioning="hive")
        .to_table(columns=["turns"])
        .column("turns")
        .combine_chunks()
        .flatten()
    )
    strategies = {s for s in turns.field("strategy").to_pylist() if s is not None}
    reactions = {s for s in turns.field("reaction").to_pylist() if s is not None}
    # independent expectation: every code written, less blanks and the null spellings
    nulls = {"", "n/a", "none", "na", "无"}
    assert strategies == {
        c for t in sessions.values() for _, _, c, _ in t if c.strip().casefold() not in nulls
    }
    assert reactions == {
        c for t in sessions.values() for _, _, _, c in t if c.strip().casefold() not in nulls
    }
    assert not any(s.casefold() in nulls for s in strategies | reactions)
    assert turns.field("rating").to_pylist().count(None) == len(
        sessions
    )  # the first turn of each session
    labels = {sid: s["labels"] for sid, s in by_id(tmp_path / "corpus").items()}
    assert sorted(v is None for v in labels.values()) == [False, True]


def test_a_given_null_values_list_replaces_the_defaults(tmp_path):
    export = write_export(tmp_path / "e.csv", rows_of(EN))
    r = ingest(
        tmp_path, export, *BASE, *maps(*EN_ROLES, "reaction=patient_code"), "--null-values", "n/a"
    )
    assert r.exit_code == 0, r.output
    reactions = [t["reaction"] for s in iter_sessions(tmp_path / "corpus") for t in s["turns"]]
    assert "Change talk" in reactions and "n/a" not in reactions and "N/A" not in reactions
    bad = ingest(
        tmp_path,
        write_export(tmp_path / "s.jsonl", [{"session_id": "x", "turns": []}]),
        "--null-values",
        "x",
        out="s",
    )
    assert (
        bad.exit_code == 2
        and "--null-values/--map-values apply to turns-csv and turns-jsonl" in bad.output
    )


# --- issue 9.4: label vocabularies mapped at ingest -------------------------------------------------


def test_map_values_translates_roles_strategies_and_reactions_and_lists_the_unmapped(tmp_path):
    rows = rows_of(EN) + rows_of(ZH)
    for r in rows:
        r["speaker"] = {"patient": "Pt", "来访者": "来访者"}.get(r["speaker"], r["speaker"])
    export = write_export(tmp_path / "mixed.csv", rows)
    (tmp_path / "codes.yaml").write_text(
        yaml.safe_dump(
            {
                "speaker": {"Pt": "client", "来访者": "client"},  # keyed by the input column
                "strategy": {
                    "Open question": "Question",
                    "Open Question": "Question",
                    "提问": "Question",
                    "开放式提问": "Question",
                    "reflection": "Reflection of feelings",
                    "情感反映": "Reflection of feelings",
                },
                "patient_code": {"Change talk": "change", "改变话语": "change"},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    r = ingest(
        tmp_path,
        export,
        *BASE,
        *maps(
            "counselor_values=therapist,咨询师", "strategy=therapist_code", "reaction=patient_code"
        ),
        "--map-values",
        str(tmp_path / "codes.yaml"),
        "--null-values",
        "n/a,无",
    )
    assert r.exit_code == 0, r.output
    got = by_id(tmp_path / "corpus")
    assert len(got) == 4 and all(
        t["role"] in ("client", "counselor") for s in got.values() for t in s["turns"]
    )
    strategies = {t["strategy"] for s in got.values() for t in s["turns"] if t["strategy"]}
    assert strategies == {"Question", "Reflection of feelings"}
    m = manifest(tmp_path)
    # what the file does not cover, counted by turn (independently from the rows written above)
    expected = {}
    for row in rows:
        if row["patient_code"] and row["patient_code"] not in (
            "Change talk",
            "改变话语",
            "n/a",
            "N/A",
            "无",
        ):
            expected[row["patient_code"]] = expected.get(row["patient_code"], 0) + 1
    assert m["unmapped_values"] == {"reaction": expected}
    reactions = {t["reaction"] for s in got.values() for t in s["turns"] if t["reaction"]}
    assert reactions == {"change", *expected}
    assert "unmapped reaction: " in r.output and "'sustain talk' 1" in r.output


def test_map_values_file_mistakes_are_one_line(tmp_path):
    export = write_export(tmp_path / "e.csv", rows_of(EN))
    (tmp_path / "v.yaml").write_text("topic: {a: b}\n", encoding="utf-8")
    r = ingest(
        tmp_path,
        export,
        *BASE,
        *maps(*EN_ROLES, "strategy=therapist_code"),
        "--map-values",
        str(tmp_path / "v.yaml"),
    )
    assert (
        r.exit_code == 2
        and "'topic' is not role, strategy, reaction or a column mapped to one" in r.output
    )
    (tmp_path / "v.yaml").write_text("role: {Pt: doctor}\n", encoding="utf-8")
    r = ingest(tmp_path, export, *BASE, *maps(*EN_ROLES), "--map-values", str(tmp_path / "v.yaml"))
    assert r.exit_code == 2 and "role values must map to client or counselor" in r.output


# --- issue 9.5 + 16: the summary, and columns no key kept ------------------------------------------


def test_the_ingest_ends_with_a_human_summary_then_the_manifest_path(tmp_path):
    rows = rows_of(EN, blank_at=("e1", 1)) + [
        {**rows_of(EN)[0], "conv_id": "e3"}
    ]  # e3: a single client turn
    export = write_export(tmp_path / "e.csv", rows)
    r = ingest(tmp_path, export, *BASE, *maps(*EN_ROLES, "strategy=therapist_code"))
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1] == f"manifest: {tmp_path / 'corpus' / 'manifest.json'}"
    text = "\n".join(lines)
    m = manifest(tmp_path)
    assert (
        f"written:        {m['sessions_written']} sessions ({m['records_written']} of "
        f"{m['input_records']} input records" in text
    )
    assert "quarantined:    1 input records in 1 row: single_speaker 1" in text
    assert "dropped turns:  1 empty" in text
    assert (
        "not kept:       quality_flag, topic, patient_code — map them as metadata to keep them"
        in text
    )
    assert m["columns_not_kept"] == ["quality_flag", "topic", "patient_code"]
    assert not text.lstrip().startswith("{")  # not the JSON any more
    assert all(t not in text for _, t, _, _ in EN["e1"])  # never transcript text
    j = ingest(tmp_path, export, *BASE, *maps(*EN_ROLES), "--json", out="j")
    assert j.exit_code == 0
    start = j.output.index("{\n")
    assert json.loads(j.output[start : j.output.rindex("}") + 1])["sessions_written"] == 2


# --- issue 16: --help is enough; unknown keys; format inference; YAML like --map ---------------------


def help_text():
    r = runner.invoke(app, ["ingest", "--help"], terminal_width=200)
    assert r.exit_code == 0
    return r.output


def test_help_lists_every_mapping_key_once_with_the_role_defaults_and_the_new_options():
    text = help_text()
    keys = list(TurnsMapping.model_fields)
    assert len(keys) == 21
    for key in keys:
        described = [
            ln for ln in text.splitlines() if re.match(rf"^{key}\s{{2,}}\S", ln.strip(" │"))
        ]
        assert len(described) == 1, key
        assert TurnsMapping.model_fields[key].description in described[0]
    assert re.search(r"client_values\s+.*default: client\)", text) and re.search(
        r"counselor_values\s+.*default: counselor\)", text
    )
    for option in ("--empty-turns", "--null-values", "--map-values", "--json", "--format"):
        assert option in text


def help_example() -> list[str]:
    text = help_text()
    lines = text[text.index("care-ray ingest export.csv") :].splitlines()
    block = lines[: next(i for i, ln in enumerate(lines) if not ln.strip(" │"))]
    cmd = " ".join(ln.strip(" │").rstrip("\\").strip() for ln in block)
    return shlex.split(cmd)[1:]  # without the program name


def test_the_example_in_help_maps_a_typical_export_on_its_own(tmp_path):
    args = help_example()
    assert args[0] == "ingest" and "--map" in args
    write_export(tmp_path / "export.csv", rows_of(EN))
    r = runner.invoke(
        app, [str(tmp_path / a) if a in ("export.csv", "corpus") else a for a in args]
    )
    assert r.exit_code == 0, r.output
    got = by_id(tmp_path / "corpus")
    assert {
        sid: (s["metadata"]["quality_flag"], s["metadata"]["topic"]) for sid, s in got.items()
    } == {sid: FLAGS[sid] for sid in EN}
    turns = [t for sid in EN for t in got[sid]["turns"]]
    assert [t["strategy"] for t in turns] == [c or None for t in EN.values() for _, _, c, _ in t]
    assert [t["reaction"] for t in turns] == [
        None if c.casefold() in ("", "n/a") else c for t in EN.values() for _, _, _, c in t
    ]
    assert "not kept" not in r.output


def test_the_readme_ingest_example_is_a_valid_mapping_with_metadata_strategy_and_reaction():
    readme = README.read_text(encoding="utf-8")
    para = readme[readme.index("Turn-per-row exports take a column mapping") :]
    block = para[para.index("```bash") + 7 : para.index("```", para.index("```bash") + 7)]
    args = shlex.split(block.replace("\\\n", " "))
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--map"]
    spec = dict(p.split("=", 1) for p in pairs)
    mapping = mapping_from_spec(spec)
    assert mapping.metadata and mapping.strategy and mapping.reaction
    for option in ("--null-values", "--map-values", "--empty-turns"):
        assert option in args


@pytest.mark.parametrize(
    "key, nearest",
    [("counsellor_values", "counselor_values"), ("speaker", "role"), ("topic", "metadata")],
)
def test_an_unknown_map_key_is_an_error_naming_the_nearest_valid_key(tmp_path, key, nearest):
    export = write_export(tmp_path / "e.csv", rows_of(EN))
    r = ingest(tmp_path, export, *BASE, *maps(f"{key}=topic"))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert f"unknown mapping key {key!r}" in r.output and f"--map {nearest}=topic" in r.output
    assert not (tmp_path / "corpus").exists()
    (tmp_path / "m.yaml").write_text(
        f"session: conv_id\nrole: speaker\ntext: utterance\n{key}: topic\n", encoding="utf-8"
    )
    y = ingest(tmp_path, export, "--mapping", str(tmp_path / "m.yaml"))
    assert y.exit_code == 2 and f"unknown mapping key {key!r}" in y.output


def test_the_mapping_yaml_accepts_what_map_accepts(tmp_path):
    export = write_export(tmp_path / "z.jsonl", rows_of(ZH))
    (tmp_path / "m.yaml").write_text(
        "session: conv_id\nrole: speaker\ntext: utterance\norder: turn_no\n"
        "client_values: 来访者\n"  # a scalar where a list is expected
        "counselor-values: 咨询师\n"  # a dash, as on the command line
        "metadata: quality_flag, topic\n"  # a comma-separated string
        "default_language: zh\n",
        encoding="utf-8",
    )
    by_yaml = ingest(tmp_path, export, "--mapping", str(tmp_path / "m.yaml"), out="y")
    by_map = ingest(
        tmp_path,
        export,
        *BASE,
        *maps(*ZH_ROLES, "metadata=quality_flag,topic", "default_language=zh"),
        out="m",
    )
    assert by_yaml.exit_code == 0 and by_map.exit_code == 0, by_yaml.output + by_map.output
    assert by_id(tmp_path / "y") == by_id(tmp_path / "m")
    assert by_id(tmp_path / "y")["z1"]["metadata"] == {"quality_flag": "high", "topic": "工作"}
    assert mapping_from_spec({"session": "a", "role": "b", "text": "c", "labels": "x"}).labels == [
        "x"
    ]


def test_the_format_is_inferred_from_the_file(tmp_path, esconv_dir):
    csv_export = write_export(tmp_path / "e.csv", rows_of(EN))
    turns_jsonl = write_export(tmp_path / "z.jsonl", rows_of(ZH))
    sessions_jsonl = tmp_path / "s.jsonl"
    sessions_jsonl.write_text(
        json.dumps(
            {
                "session_id": "s",
                "client_id": "c",
                "language": "en",
                "source": "x",
                "turns": [{"role": "client", "text": "hi"}, {"role": "counselor", "text": "hello"}],
            }
        )
        + "\n"
    )
    tsv = tmp_path / "e.tsv"
    with open(tsv, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter="\t").writerows(csv.reader(open(csv_export, encoding="utf-8")))
    assert infer_format([csv_export]) == infer_format([tsv]) == "turns-csv"
    assert (
        infer_format([turns_jsonl]) == "turns-jsonl"
        and infer_format([sessions_jsonl]) == "sessions-jsonl"
    )
    assert (
        infer_format([esconv_dir])
        == infer_format([esconv_dir / "train.json"])
        == infer_format([esconv_dir / "FailedESConv.json"])
        == "esconv"
    )
    # a CSV without --format is read as a CSV (it used to be read as ESConv: every row malformed_record)
    r = ingest(tmp_path, csv_export, *BASE, *maps(*EN_ROLES))
    assert (
        r.exit_code == 0
        and manifest(tmp_path)["format"] == "turns-csv"
        and manifest(tmp_path)["sessions_written"] == 2
    )
    t = ingest(tmp_path, tsv, *BASE, *maps(*EN_ROLES), out="tsv")
    assert t.exit_code == 0 and by_id(tmp_path / "tsv") == by_id(tmp_path / "corpus")
    assert (
        ingest(tmp_path, sessions_jsonl, out="s").exit_code == 0
        and manifest(tmp_path, "s")["format"] == "sessions-jsonl"
    )
    # a turn-per-row file without a mapping, an unknown file, and mixed inputs: one line saying what to pass
    no_map = ingest(tmp_path, turns_jsonl, out="n")
    assert no_map.exit_code == 2 and "--map session=COLUMN" in no_map.output
    (tmp_path / "notes.txt").write_text("just some text\n")
    unknown = ingest(tmp_path, tmp_path / "notes.txt", out="u")
    assert (
        unknown.exit_code == 2
        and "cannot tell the format of notes.txt" in unknown.output
        and "--format" in unknown.output
    )
    with pytest.raises(FormatUnknown, match="different formats"):
        infer_format([csv_export, sessions_jsonl])


def test_turn_rows_may_omit_keys_a_jsonl_export_leaves_out(tmp_path):
    rows = rows_of(EN)
    for r in rows:  # partial records: codes only where they apply
        for k in ("therapist_code", "patient_code"):
            if not r[k]:
                del r[k]
    export = write_export(tmp_path / "partial.jsonl", rows)
    r = ingest(
        tmp_path,
        export,
        *BASE,
        *maps(*EN_ROLES, "strategy=therapist_code", "reaction=patient_code"),
    )
    assert r.exit_code == 0, r.output
    assert manifest(tmp_path)["sessions_written"] == 2
    with pytest.raises(MappingError, match=r"lacks: \['nope'\]"):
        ingest_files(
            "turns-jsonl",
            [export],
            tmp_path / "x",
            mapping=mapping_from_spec(
                {"session": "conv_id", "role": "speaker", "text": "utterance", "strategy": "nope"}
            ),
        )
