import json

import pyarrow as pa
import pytest

from care_ray.common.paths import schemas_dir
from care_ray.contracts.session import (
    ContractError,
    Reason,
    load_contract,
    normalise_session,
    sessions_to_table,
)


def good(**over):
    s = {
        "session_id": "s1",
        "client_id": "c1",
        "language": "zh",
        "source": "test",
        "turns": [
            {"role": "client", "text": "我最近睡不好。"},
            {"role": "counselor", "text": "能多说一点吗？", "strategy": "Question"},
        ],
    }
    s.update(over)
    return s


def test_schema_comes_from_the_file():
    spec = json.loads((schemas_dir() / "session.schema.json").read_text())
    schema = load_contract().schema
    assert schema.names == [f["name"] for f in spec["fields"]]
    assert schema.field("session_id").nullable is False
    turn = schema.field("turns").type.value_type
    assert [turn.field(i).name for i in range(turn.num_fields)] == [
        "role",
        "text",
        "timestamp",
        "strategy",
        "reaction",
        "rating",
    ]
    assert schema.field("labels").type == pa.map_(pa.string(), pa.float64())


def test_chinese_passes_through_untouched():
    s = normalise_session(good())
    table = sessions_to_table([s])
    assert table.column("turns").to_pylist()[0][0]["text"] == "我最近睡不好。"


@pytest.mark.parametrize(
    "record, reason",
    [
        (good(turns=[]), Reason.EMPTY_SESSION),
        (
            good(turns=[{"role": "client", "text": "a"}, {"role": "client", "text": "b"}]),
            Reason.SINGLE_SPEAKER,
        ),
        (
            good(turns=[{"role": "client", "text": "a"}, {"role": "therapist", "text": "b"}]),
            Reason.UNKNOWN_ROLE,
        ),
        (
            good(turns=[{"role": "client", "text": "a"}, {"role": "counselor", "text": "  "}]),
            Reason.EMPTY_TURN,
        ),
        (good(client_wai=[5] * 11 + [6]), Reason.RATING_OUT_OF_RANGE),
        (good(client_wai=[5] * 11 + ["x"]), Reason.BAD_VALUE),
        (good(client_wai=[5] * 3), Reason.BAD_VALUE),
        (good(session_id=None), Reason.MISSING_FIELD),
        (good(started_at="yesterday"), Reason.BAD_VALUE),
        (
            good(
                turns=[
                    {"role": "client", "text": "a"},
                    {"role": "counselor", "text": "b", "strategy": ["Question"]},
                ]
            ),
            Reason.BAD_VALUE,
        ),
    ],
)
def test_each_defect_has_its_reason(record, reason):
    with pytest.raises(ContractError) as e:
        normalise_session(record)
    assert e.value.reason == reason


def test_ratings_and_times_are_canonicalised():
    s = normalise_session(
        good(client_wai=["4"] * 12, started_at="2026-01-02T03:04:05Z", labels={"empathy": "4"})
    )
    assert s["client_wai"] == [4] * 12
    assert s["started_at"].isoformat() == "2026-01-02T03:04:05+00:00"
    assert s["labels"] == {"empathy": 4.0}


def test_esconv_turn_with_non_text_speaker_or_strategy_is_quarantined_not_a_crash(tmp_path):
    from care_ray.corpus.ingest.esconv import read_esconv

    def record(speaker, strategy):
        dialog = [
            {"speaker": "usr", "annotation": {}, "content": "hi"},
            {"speaker": speaker, "annotation": {"strategy": strategy}, "content": "hello"},
        ]
        return {"emotion_type": "anxiety", "problem_type": "job", "dialog": dialog}

    path = tmp_path / "train.json"
    path.write_text(json.dumps([record({"a": 1}, "Question"), record("sys", ["Question"])]))
    reasons = []
    for raw, session in read_esconv([path]):
        error = raw.error
        if session is not None:
            try:
                normalise_session(session)
            except ContractError as e:
                error = e
        reasons.append(error.reason if error else None)
    assert reasons == [Reason.UNKNOWN_ROLE, Reason.BAD_VALUE]
