import json

import pyarrow.dataset as ds

from care_ray.corpus.ingest import ingest_files
from care_ray.corpus.ingest.esconv import esconv_session_id
from care_ray.corpus.reader import export_sessions_jsonl, iter_sessions, validate_corpus


def _by_id(corpus):
    return {s["session_id"]: s for s in iter_sessions(corpus)}


def test_all_1496_conversations_accounted_for(esconv_corpus):
    m = json.loads((esconv_corpus / "manifest.json").read_text())
    assert m["input_records"] == 1496
    assert m["records_written"] + m["records_quarantined"] == 1496
    # The public data is clean: every conversation is a valid session.
    assert m["sessions_written"] == 1496 and m["quarantine_rows"] == 0
    assert ds.dataset(esconv_corpus / "sessions", partitioning="hive").count_rows() == 1496
    assert (esconv_corpus / "sessions" / "source=esconv").is_dir()
    assert validate_corpus(esconv_corpus)["ok"]


def test_split_file_sample_keeps_exact_turns_labels_and_strategies(esconv_corpus, esconv_dir):
    raw = json.loads((esconv_dir / "train.json").read_text().splitlines()[0])
    s = _by_id(esconv_corpus)[esconv_session_id(raw["dialog"])]
    assert len(s["turns"]) == len(raw["dialog"])
    for turn, src in zip(s["turns"], raw["dialog"], strict=True):
        assert turn["role"] == {"usr": "client", "sys": "counselor"}[src["speaker"]]
        assert turn["text"] == src["text"].strip()
        assert turn["strategy"] == src.get("strategy")
    seeker = raw["survey_score"]["seeker"]
    assert s["labels"]["empathy"] == float(seeker["empathy"])
    assert s["labels"]["relevance"] == float(seeker["relevance"])
    assert s["metadata"]["problem_type"] == raw["problem_type"]
    assert s["metadata"]["split"] == "train"


def test_failed_file_turn_shape_and_feedback(esconv_corpus, esconv_dir):
    raw = json.loads((esconv_dir / "FailedESConv.json").read_text())[0]
    s = _by_id(esconv_corpus)[esconv_session_id(raw["dialog"])]
    assert [t["text"] for t in s["turns"]] == [d["content"].strip() for d in raw["dialog"]]
    assert [t["role"] for t in s["turns"]][:4] == ["client", "client", "counselor", "counselor"]
    # FailedESConv spells "Questions"; the corpus uses strategy.json's "Question"
    assert s["turns"][3]["strategy"] == "Question"
    feedback = [
        float(d["annotation"]["feedback"]) for d in raw["dialog"] if "feedback" in d["annotation"]
    ]
    assert [t["rating"] for t in s["turns"] if t["rating"] is not None] == feedback
    assert s["metadata"]["split"] == "failed"


def test_sessions_jsonl_round_trips(esconv_corpus, tmp_path):
    jsonl = tmp_path / "sessions.jsonl"
    assert export_sessions_jsonl(esconv_corpus, jsonl) == 1496
    m = ingest_files("sessions-jsonl", [jsonl], tmp_path / "again")
    assert m["sessions_written"] == 1496 and m["records_quarantined"] == 0
    before, after = _by_id(esconv_corpus), _by_id(tmp_path / "again")
    assert before.keys() == after.keys()
    some = sorted(before)[:50]
    assert [before[k] for k in some] == [after[k] for k in some]


def test_validate_command_flags_a_broken_corpus(esconv_corpus, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from care_ray.cli import app

    ok = CliRunner().invoke(app, ["validate", str(esconv_corpus)])
    assert ok.exit_code == 0 and json.loads(ok.output)["sessions"] == 1496
    broken = tmp_path / "broken"
    shutil.copytree(esconv_corpus, broken)
    part = next((broken / "sessions" / "source=esconv").glob("*.parquet"))
    shutil.copy(part, part.with_name("copy-" + part.name))  # every session of that part twice
    bad = CliRunner().invoke(app, ["validate", str(broken)])
    assert bad.exit_code == 1
    summary = json.loads(bad.output)
    assert not summary["ok"] and any("duplicate session_id" in p for p in summary["problems"])
