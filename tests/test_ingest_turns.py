"""A user's own utterance-per-row export, with a column mapping given on the command line."""

import csv
import json
import random
import subprocess
import sys

import pyarrow.dataset as ds
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.corpus.reader import iter_sessions

SESSIONS = {
    "zh-001": [
        ("来访者", "最近工作压力很大，晚上总是睡不着。"),
        ("咨询师", "听起来你这段时间很辛苦，能说说压力来自哪里吗？"),
        ("来访者", "领导总是临时加任务。"),
        ("咨询师", "我们一起定一个小目标，好吗？"),
    ],
    "zh-002": [
        ("来访者", "我和父母总是吵架。"),
        ("咨询师", "吵架之后你通常有什么感受？"),
        ("来访者", "很内疚，也很生气。"),
    ],
    "en-003": [
        ("patient", "I keep missing classes."),
        ("therapist", "What happens on the mornings you miss them?"),
        ("patient", "I just can't get up."),
    ],
}
WAI = {"zh-001": [4, 4, 5, 3, 5, 4, 5, 4, 4, 3, 4, 4], "zh-002": [2] * 12, "en-003": [3] * 12}


def write_csv(path, extra_rows=()):
    rows = []
    for sid, turns in SESSIONS.items():
        for i, (who, text) in enumerate(turns):
            row = {
                "conv": sid,
                "who": who,
                "utterance": text,
                "seq": str(i + 1),
                "client": f"c-{sid[-1]}",
                "counselor": "t-9",
                "overall": "4.5",
            }
            row.update({f"wai{k + 1}": str(v) for k, v in enumerate(WAI[sid])})
            rows.append(row)
    random.Random(7).shuffle(rows)  # exports are not always sorted
    rows += list(extra_rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


MAP = [
    "--map",
    "session=conv",
    "--map",
    "role=who",
    "--map",
    "text=utterance",
    "--map",
    "order=seq",
    "--map",
    "client_values=来访者,patient",
    "--map",
    "counselor_values=咨询师,therapist",
    "--map",
    "client_id=client",
    "--map",
    "counselor_id=counselor",
    "--map",
    "labels=overall",
    "--map",
    "client_wai=" + ",".join(f"wai{k}" for k in range(1, 13)),
    "--map",
    "default_language=zh",
]


def test_turns_csv_ingests_into_the_contract(tmp_path):
    write_csv(tmp_path / "export.csv")
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--format",
            "turns-csv",
            str(tmp_path / "export.csv"),
            "--out",
            str(tmp_path / "c"),
            *MAP,
        ],
    )
    assert result.exit_code == 0, result.output
    sessions = {s["session_id"]: s for s in iter_sessions(tmp_path / "c")}
    assert sorted(sessions) == sorted(SESSIONS)
    for sid, turns in SESSIONS.items():
        s = sessions[sid]
        assert [t["text"] for t in s["turns"]] == [
            t for _, t in turns
        ]  # order restored, Chinese untouched
        assert [t["role"] for t in s["turns"]][:2] == ["client", "counselor"]
        assert s["client_wai"] == WAI[sid]
        assert s["counselor_id"] == "t-9" and s["labels"] == {"overall": 4.5}
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["records_written"] == 10


def test_bad_rows_and_sessions_are_quarantined_and_counted(tmp_path):
    base = {"client": "c", "counselor": "t", "overall": "", **{f"wai{k}": "" for k in range(1, 13)}}
    extra = [
        {"conv": "x-1", "who": "来访者", "utterance": "只有我在说话。", "seq": "1", **base},
        {
            "conv": "x-1",
            "who": "来访者",
            "utterance": "还是我。",
            "seq": "2",
            **base,
        },  # single speaker
        {"conv": "x-2", "who": "来访者", "utterance": "你好", "seq": "1", **base},
        {"conv": "x-2", "who": "督导", "utterance": "我是督导", "seq": "2", **base},  # unknown role
        {
            "conv": "",
            "who": "咨询师",
            "utterance": "没有会话编号",
            "seq": "1",
            **base,
        },  # missing session id
        {
            "conv": "x-3",
            "who": "咨询师",
            "utterance": "顺序不对",
            "seq": "soon",
            **base,
        },  # bad order value
    ]
    write_csv(tmp_path / "export.csv", extra)
    with open(tmp_path / "export.csv", "a", encoding="utf-8") as f:
        f.write('x-4,来访者,"unterminated\n')
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--format",
            "turns-csv",
            str(tmp_path / "export.csv"),
            "--out",
            str(tmp_path / "c"),
            *MAP,
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["input_records"] == m["records_written"] + m["records_quarantined"] == 10 + 7
    assert m["sessions_written"] == 3
    reasons = sorted(
        r["reason"] for r in ds.dataset(tmp_path / "c" / "quarantine").to_table().to_pylist()
    )
    assert reasons == sorted(
        ["single_speaker", "unknown_role", "missing_field", "bad_value", "malformed_record"]
    )


def test_turns_jsonl_uses_the_same_mapping(tmp_path):
    with open(tmp_path / "t.jsonl", "w", encoding="utf-8") as f:
        for sid, turns in SESSIONS.items():
            for i, (who, text) in enumerate(turns):
                f.write(
                    json.dumps(
                        {"conv": sid, "who": who, "utterance": text, "seq": i}, ensure_ascii=False
                    )
                    + "\n"
                )
    result = CliRunner().invoke(
        app,
        [
            "ingest",
            "--format",
            "turns-jsonl",
            str(tmp_path / "t.jsonl"),
            "--out",
            str(tmp_path / "c"),
            "--map",
            "session=conv",
            "--map",
            "role=who",
            "--map",
            "text=utterance",
            "--map",
            "order=seq",
            "--map",
            "client_values=来访者,patient",
            "--map",
            "counselor_values=咨询师,therapist",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(iter_sessions(tmp_path / "c"))) == 3


def test_user_mistakes_get_one_clear_line_not_a_traceback(tmp_path):
    write_csv(tmp_path / "export.csv")
    cmd = [
        sys.executable,
        "-m",
        "care_ray",
        "ingest",
        "--format",
        "turns-csv",
        str(tmp_path / "export.csv"),
        "--out",
        str(tmp_path / "c"),
        "--map",
        "session=conversation_id",
        "--map",
        "role=who",
        "--map",
        "text=utterance",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 2
    assert "conversation_id" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "care_ray",
            "ingest",
            "--format",
            "turns-csv",
            str(tmp_path / "export.csv"),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "session" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "care_ray",
            "ingest",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "not found" in p.stderr and "Traceback" not in p.stderr
