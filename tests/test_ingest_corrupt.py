"""A corrupted copy of ESConv: every defect kind mixed into good records."""

import json

import pyarrow.dataset as ds
import pytest

from care_ray.corpus.ingest import ingest_files
from care_ray.corpus.reader import iter_sessions


@pytest.fixture(scope="module")
def corrupted(esconv_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("corrupt")
    lines = (esconv_dir / "train.json").read_text(encoding="utf-8").splitlines()[:40]
    convs = [json.loads(x) for x in lines]
    bad = {}

    def mutate(i, fn, reason):
        c = json.loads(lines[i])
        fn(c)
        lines[i] = json.dumps(c, ensure_ascii=False)
        bad[i] = reason

    mutate(3, lambda c: c.update(dialog=[]), "empty_session")
    mutate(
        5,
        lambda c: c.update(dialog=[t for t in c["dialog"] if t["speaker"] == "usr"]),
        "single_speaker",
    )
    mutate(7, lambda c: c["dialog"][2].update(speaker="bot"), "unknown_role")
    mutate(9, lambda c: c["dialog"][4].update(text="   "), "empty_turn")
    mutate(11, lambda c: c["survey_score"]["seeker"].update(empathy="7"), "rating_out_of_range")
    mutate(13, lambda c: c["survey_score"]["seeker"].update(relevance="high"), "bad_value")
    mutate(15, lambda c: c.pop("dialog"), "missing_field")
    lines[17] = lines[17][: len(lines[17]) // 2]  # a truncated line in the middle of the file
    bad[17] = "malformed_record"
    lines.insert(30, lines[20])  # the same conversation twice
    body = "\n".join(lines).encode("utf-8")
    # invalid UTF-8 inside line 25 (0-based 24): a lone continuation byte in a turn
    raw_lines = body.split(b"\n")
    raw_lines[24] = raw_lines[24].replace(b"the", b"th\xff", 1)
    bad[24] = "invalid_utf8"
    (d / "train.json").write_bytes(b"\n".join(raw_lines) + b"\n")

    failed = json.loads((esconv_dir / "FailedESConv.json").read_text())[:6]
    failed[2]["dialog"][0]["speaker"] = "narrator"
    failed[4]["dialog"][1]["annotation"]["feedback"] = (
        "9" if "feedback" in failed[4]["dialog"][1]["annotation"] else "9"
    )
    (d / "FailedESConv.json").write_text(json.dumps(failed, ensure_ascii=False))
    out = tmp_path_factory.mktemp("corrupt-out")
    manifest = ingest_files(
        "esconv", [d], out, empty_turns="quarantine"
    )  # the default drops blank turns instead
    return {"out": out, "manifest": manifest, "bad": bad, "n_train": 41, "convs": convs}


def test_every_bad_record_quarantined_with_its_reason(corrupted):
    q = ds.dataset(corrupted["out"] / "quarantine").to_table().to_pylist()
    got = {r["origin"]: r["reason"] for r in q}
    expected = {f"train.json:{i + 1}": reason for i, reason in corrupted["bad"].items()}
    expected["train.json:31"] = "duplicate_session_id"
    expected["FailedESConv.json[2]"] = "unknown_role"
    expected["FailedESConv.json[4]"] = "rating_out_of_range"
    assert got == expected
    assert all(r["raw"] for r in q)
    assert corrupted["manifest"]["quarantined_by_reason"]["empty_session"] == 1


def test_every_good_record_written_and_counts_reconcile(corrupted):
    m = corrupted["manifest"]
    assert m["input_records"] == 41 + 6
    assert m["records_written"] + m["records_quarantined"] == m["input_records"]
    assert m["sessions_written"] == 41 + 6 - 12
    written = list(iter_sessions(corrupted["out"]))
    assert len(written) == m["sessions_written"]
    assert len({s["session_id"] for s in written}) == len(written)
