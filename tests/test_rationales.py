"""The review loop on the real engine: the tiny Llama drafts rationales (mechanics only: it writes
noise) for ESConv sessions and Chinese sessions written here, the run is killed and resumed, the
drafts go out to a review file, come back edited as a reviewer would, and sft-data and finetune
train on the reviewed text."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from care_ray.contracts.rubric import load_rubric
from care_ray.rationales.draft import (
    DraftConfig,
    DraftPromptBuilders,
    build_drafts_table,
    draft_corpus,
    draft_flags,
)
from care_ray.rationales.review import (
    ReviewError,
    export_review,
    import_reviews,
    read_review_file,
)
from care_ray.rationales.tables import read_drafts
from care_ray.scoring.prompts import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(
    max_model_len=1024,
    max_new_tokens=96,
    max_rationale_chars=80,
    max_quotes=1,
    max_quote_chars=40,
    progress=False,
)
ZH_TURNS = [
    ("client", "我最近总是睡不着，一想到工作就很焦虑。"),
    ("counselor", "听起来这种焦虑已经影响到你的睡眠了，能多说说工作上的情况吗？"),
    ("client", "领导总是临时加任务，我觉得自己怎么做都不够好。"),
    ("counselor", "我们可以一起想想，哪些事情是你能掌控的。"),
    ("client", "好的，我希望下周能按时睡觉，不再带着电脑上床。"),
]


def test_draft_flags_fire_on_a_quote_not_in_the_transcript_and_a_different_score():
    assert draft_flags(4, 4, 'I said "sleep before midnight".', 1.0) == []
    assert draft_flags(4, 4, "…", 0.5) == ["quote_not_found"]
    assert draft_flags(4, 2, "…", 1.0) == ["score_mismatch"]
    assert draft_flags(4, 4, "I would give this 2/5.", 1.0) == ["score_mismatch"]
    assert draft_flags(4, 4, "我给 2 分。", None) == ["score_mismatch", "no_quotes"]


def test_planted_drafts_are_flagged_when_joined_with_their_ratings():
    dialogue = "I keep worrying about my exams.\nWhat would you like to change?"
    items = pa.table(
        {
            "session_id": ["s1", "s1"],
            "item_id": pa.array([3, 4], pa.int32()),
            "dimension": ["bond", "goal"],
            "rubric_id": ["wai-sr-client-en-v1"] * 2,
            "score": [4.0, 4.0],
            "rationale": ["I felt heard.", "We set goals."],
            "quotes": [["worrying about my exams"], ["we will fix your sleep tonight"]],
            "quote_found": [1.0, 0.0],
        }
    )
    ratings = pa.table(
        {
            "session_id": ["s1", "s1"],
            "item_id": pa.array([3, 4], pa.int32()),
            "rating": [4, 4],
            "rating_label": ["client_wai"] * 2,
            "language": ["en"] * 2,
        }
    )
    drafts = build_drafts_table(items, ratings).to_pylist()
    assert drafts[0]["flags"] == [] and drafts[1]["flags"] == ["quote_not_found"]
    assert "worrying about my exams" in dialogue


def test_draft_prompts_carry_the_rating_and_share_the_transcript_prefix(tiny_model):
    from care_ray.scoring.prompts import PromptBuilders

    builders = DraftPromptBuilders(
        PromptBuilders(
            load_tokenizer(str(tiny_model)),
            max_model_len=1024,
            max_new_tokens=SMALL["max_new_tokens"],
        )
    )
    turns = [{"role": r, "text": t} for r, t in ZH_TURNS]
    zh = load_rubric(language="zh")
    four = builders.for_rating("zh", 4)
    two = builders.for_rating("zh", 2)
    _, prompts4, ids4 = four.item_prompts(turns, [zh.item(1)])
    _, prompts2, ids2 = two.item_prompts(turns, [zh.item(3)])
    assert "4 分（经常）" in prompts4[0] and "2 分（有时）" in prompts2[0]
    assert zh.item(1).text in prompts4[0]
    # the transcript and everything before it are the same tokens whatever the rating
    transcript_end = prompts4[0].index(ZH_TURNS[-1][1]) + len(ZH_TURNS[-1][1])
    assert prompts4[0][:transcript_end] == prompts2[0][:transcript_end]
    common = next(i for i, (a, b) in enumerate(zip(ids4[0], ids2[0], strict=False)) if a != b)
    assert common >= len(four._ids(prompts4[0][:transcript_end])) - 1
    assert four.budget == two.budget
    en = builders.for_rating("en", 5).item_prompts(turns, [load_rubric().item(1)])[1][0]
    assert "rated the following statement 5 out of 5 (Always)" in en


@pytest.fixture(scope="module")
def corpus(esconv_corpus, tmp_path_factory) -> Path:
    """3 ESConv sessions with both labels and feedback, and 2 Chinese sessions with client_wai."""
    from care_ray.corpus.ingest import ingest_files
    from care_ray.corpus.reader import iter_sessions

    work = tmp_path_factory.mktemp("rationales-corpus")
    esconv = [
        s
        for s in iter_sessions(esconv_corpus)
        if s["labels"]
        and {"empathy", "relevance"} <= set(s["labels"])
        and len(((s["metadata"] or {}).get("seeker_question1") or "").split()) >= 6
    ][:3]
    zh = [
        {
            "session_id": f"zh-{k}",
            "client_id": f"zh-client-{k}",
            "source": "zh-test",
            "language": "zh",
            "turns": [{"role": r, "text": t} for r, t in ZH_TURNS],
            "client_wai": [(k + i) % 5 + 1 for i in range(12)],
        }
        for k in range(2)
    ]
    lines = []
    for s in esconv + zh:
        s = {k: v for k, v in s.items() if v is not None}
        lines.append(json.dumps(s, ensure_ascii=False, default=str))
    (work / "sessions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ingest_files("sessions-jsonl", [work / "sessions.jsonl"], work / "corpus")
    return work / "corpus"


def _pairs(folder: Path) -> list[tuple[str, int]]:
    if not folder.exists():
        return []
    t = ds.dataset(folder).to_table(columns=["session_id", "item_id"])
    return list(zip(t["session_id"].to_pylist(), t["item_id"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def drafted(corpus, tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    """`care-ray rationales draft` killed after its first committed file, then resumed."""
    work = tmp_path_factory.mktemp("drafts")
    out = work / "drafts"
    options = work / "draft.yaml"
    options.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in SMALL.items()))
    cmd = [
        sys.executable, "-m", "care_ray", "rationales", "draft", "--sessions", str(corpus),
        "--teacher", str(tiny_model), "--out", str(out), "--config", str(options),
        "--ray-address", "local",
    ]  # fmt: skip
    env = {**os.environ, "CARE_RAY_SESSIONS_PER_BLOCK": "1"}
    p = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not list((out / "items").glob("part-*.parquet")):
            if p.poll() is not None:
                pytest.fail(f"draft ended before it could be killed: {p.stderr.read().decode()}")
            time.sleep(0.2)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    before = set(_pairs(out / "items")) | set(_pairs(out / "errors"))
    assert 0 < len(before) < 60
    manifest = draft_corpus(
        DraftConfig(sessions=str(corpus), model=str(tiny_model), out=str(out), **SMALL)
    )
    assert manifest["pairs_done_before"] >= len(before)
    return out, manifest


@pytest.mark.slow
def test_drafts_cover_every_rated_pair_once_with_its_rating(drafted, corpus):
    from care_ray.corpus.reader import iter_sessions

    out, m = drafted
    assert m["kind"] == "care-ray rationale drafts"
    assert m["items_in"] == 60 and m["items_scored"] + m["items_errors"] == 60
    after = _pairs(out / "items") + _pairs(out / "errors")
    assert len(after) == len(set(after)) == 60  # exactly once, across the kill
    drafts = read_drafts(str(out)).to_pylist()
    assert len(drafts) == m["drafts"] == m["items_scored"]
    sessions = {s["session_id"]: s for s in iter_sessions(corpus)}
    rubric = load_rubric()
    for d in drafts:
        s = sessions[d["session_id"]]
        if s["client_wai"] is not None:
            assert (d["rating"], d["rating_label"]) == (
                s["client_wai"][d["item_id"] - 1],
                "client_wai",
            )
            assert d["language"] == "zh"
        else:
            label = "empathy" if rubric.item(d["item_id"]).dimension == "bond" else "relevance"
            assert (d["rating"], d["rating_label"]) == (round(s["labels"][label]), label)
        assert d["flags"] == draft_flags(
            d["rating"], d["teacher_score"], d["rationale"], d["quote_found"]
        )
    flagged = sum(1 for d in drafts if d["flags"])
    assert m["flagged"] == flagged and m["flagged_share"] == pytest.approx(
        flagged / len(drafts), abs=1e-4
    )
    assert set(m["length_chars_by_dimension"]) == {"goal", "task", "bond"}
    assert not (out / "sessions").exists() or not list((out / "sessions").glob("*.parquet"))


@pytest.mark.slow
def test_a_rerun_with_another_label_map_is_refused(drafted, corpus, tiny_model):
    out, _ = drafted
    with pytest.raises(ValueError, match="label_map"):
        draft_corpus(
            DraftConfig(
                sessions=str(corpus), model=str(tiny_model), out=str(out),
                label_map={"empathy": "bond,goal,task"}, **SMALL,
            )
        )  # fmt: skip


def _reviewed(rows: list[dict], corpus: Path) -> list[dict]:
    """What reviewers A and B do in the JSON-lines file: accept, edit with a real quote, reject,
    and edit a Chinese draft; A also rates four drafts for the cross-check."""
    from care_ray.corpus.reader import iter_sessions

    sessions = {s["session_id"]: s for s in iter_sessions(corpus)}
    en = [r for r in rows if not r["session_id"].startswith("zh-")]
    zh = [r for r in rows if r["session_id"].startswith("zh-")]
    quote = next(t["text"] for t in sessions[en[1]["session_id"]]["turns"] if t["role"] == "client")
    quote = " ".join(quote.split()[:6])
    en[0].update(decision="accept", reviewer="A")
    en[1].update(
        decision="edit", reviewer="A", edited_text=f'I told them "{quote}" and felt heard.'
    )
    en[2].update(decision="reject", reviewer="A", comment="argues for another score")
    zh[0].update(
        decision="edit",
        reviewer="B",
        edited_text="我说过“我希望下周能按时睡觉”，我们一起定了这个目标。",
    )
    for r, scores in zip(en[:4], [(5, 4, 4), (4, 4, 3), (2, 3, 3), (1, 2, 2)], strict=True):
        r.update(
            reviewer="A", faithfulness=scores[0], relevance=scores[1], informativeness=scores[2]
        )
    return en[:4] + zh[:1]


@pytest.mark.slow
def test_export_edit_import_then_sft_data_and_finetune_use_the_reviewed_text(
    drafted, corpus, tiny_model, tmp_path
):
    import polars as pl

    from care_ray.training.sft_data import SFTOptions, make_sft_data, read_examples

    out, m = drafted
    jsonl = tmp_path / "review.jsonl"
    info = export_review(str(out), jsonl)
    assert info["rows"] == m["drafts"]
    rows = [row for _, row in read_review_file(jsonl)]
    first = json.loads(jsonl.read_text(encoding="utf-8").splitlines()[0])
    assert first["decision"] == "" and first["statement"] and isinstance(first["quotes"], list)
    # the excerpt shows each quote's turn, or says the quote is not in the transcript
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        excerpt = " ".join(row["excerpt"].split()).casefold()
        for q in row["quotes"]:
            assert " ".join(q.split()).casefold() in excerpt
        assert row["quotes"] or row["excerpt"] == "[the draft quotes nothing]"
    # a second reviewer rates a sample in a spreadsheet (CSV)
    csv = tmp_path / "sample.csv"
    export_review(str(out), csv, sample=6, seed=1)
    sample = pl.read_csv(csv, infer_schema=False)
    assert sample.height == 6 and "faithfulness" in sample.columns

    reviewed = _reviewed(
        [json.loads(x) for x in jsonl.read_text(encoding="utf-8").splitlines()], corpus
    )
    (tmp_path / "reviewed.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reviewed), encoding="utf-8"
    )
    rated = {r["review_id"] for r in reviewed[:4]}
    second = pl.DataFrame(
        [
            {
                "review_id": rid,
                "reviewer": "C",
                "faithfulness": f,
                "relevance": 4,
                "informativeness": 3,
            }
            for rid, f in zip(sorted(rated), [5, 4, 3, 1], strict=True)
        ]
    )
    second.write_csv(tmp_path / "second.csv")

    # a bad file changes nothing, and says every problem with its line
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"review_id": "nope#1", "decision": "accept", "reviewer": "A"}) + "\n"
        + json.dumps({"review_id": rows[0]["review_id"], "decision": "maybe", "reviewer": "A"}) + "\n"
        + json.dumps({"review_id": rows[1]["review_id"], "decision": "edit", "reviewer": "A"}) + "\n"
    )  # fmt: skip
    with pytest.raises(ReviewError) as e:
        import_reviews(str(out), [bad])
    assert "3 problem(s)" in str(e.value) and "bad.jsonl:1" in str(e.value)
    assert "bad.jsonl:2: decision must be accept, edit or reject" in str(e.value)
    assert "bad.jsonl:3: decision edit needs the edited_text" in str(e.value)
    assert not (out / "reviews.parquet").exists()

    summary = import_reviews(str(out), [tmp_path / "reviewed.jsonl", tmp_path / "second.csv"])
    assert summary["by_reviewer"] == {
        "A": {"accept": 1, "edit": 1, "reject": 1},
        "B": {"accept": 0, "edit": 1, "reject": 0},
    }
    assert summary["pending"] == m["drafts"] - 4
    pair = summary["quality_ratings"]["agreement"][0]
    assert pair["reviewers"] == ["A", "C"] and pair["drafts"] == 4
    assert pair["relevance"]["n"] == 4 and -1 <= pair["faithfulness"]["weighted_kappa"] <= 1
    assert json.loads((out / "review.json").read_text())["pending"] == summary["pending"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["review"]["by_reviewer"] == summary["by_reviewer"]
    assert manifest["drafts"] == m["drafts"]  # the draft run's own counts stay

    sft = tmp_path / "sft"
    opts = SFTOptions(folds=2, seed=3)
    manifest = make_sft_data(corpus, sft, opts, rationales_dir=out)
    examples = read_examples(sft).to_pylist()
    by_pair = {(e["session_id"], e["item_id"]): e for e in examples}
    edited = [r for r in reviewed if r["decision"] == "edit"]
    for r in edited:
        e = by_pair[(r["session_id"], r["item_id"])]
        assert e["rationale_source"] == "reviewed"
        assert json.loads(e["target"])["rationale"] == r["edited_text"]
    en_edit = next(r for r in edited if not r["session_id"].startswith("zh-"))
    target = json.loads(by_pair[(en_edit["session_id"], en_edit["item_id"])]["target"])
    assert target["quotes"] and target["quotes"][0] in en_edit["edited_text"]
    rejected = next(r for r in reviewed if r["decision"] == "reject")
    assert by_pair[(rejected["session_id"], rejected["item_id"])]["rationale_source"] != "reviewed"
    sources = manifest["rationales"]["by_source"]
    assert sources["reviewed"] == 3 and "template" not in sources
    assert {e["rationale_source"] for e in examples} <= {"reviewed", "feedback"}

    # and a fine-tune trains on them (the loop in-process: Ray Train's part is test_training's)
    from care_ray.training.config import load_finetune_config
    from care_ray.training.worker import FoldTraining, WorkerEnv

    cfg = load_finetune_config(
        REPO / "configs" / "finetune-tiny-cpu.yaml",
        {
            "model": str(tiny_model),
            "data": str(sft),
            "output_dir": str(tmp_path / "ft"),
            "storage_path": str(tmp_path / "ft"),
            "epochs": 1,
            "scaling": {"num_workers": 1},
            "effective_batch_size": 4,
        },
    )
    reports: list[dict] = []
    training = FoldTraining(cfg, 0, WorkerEnv(report=lambda m, folder, name: reports.append(m)))
    reviewed_ids = {(r["session_id"], r["item_id"]) for r in edited}
    trained_on = {(e.session_id, e.item_id) for e in training.train + training.held_out}
    assert reviewed_ids <= trained_on  # the reviewed targets are in the fold's data
    result = training.run()
    assert result["steps"] == training.steps_per_epoch > 0 and len(reports) == 1


def test_drafting_needs_ratings_and_a_draft_question(esconv_corpus, tiny_model, tmp_path):
    from care_ray.rationales.draft import draft_rubric

    with pytest.raises(ValueError, match="nothing to draft"):
        draft_corpus(
            DraftConfig(
                sessions=str(esconv_corpus), model=str(tiny_model), out=str(tmp_path / "x"),
                label_map={"no_such_label": "bond"}, items="bond", **SMALL,
            )
        )  # fmt: skip
    rubric = load_rubric()
    bare = rubric.model_copy(
        update={"prompt": rubric.prompt.model_copy(update={"draft_question": None})}
    )
    with pytest.raises(ValueError, match="no prompt.draft_question"):
        draft_rubric(bare, 3)
    assert not (tmp_path / "x").exists()
