"""SFT examples: same prompts as scoring, real/proxy targets, client-disjoint stratified folds."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.contracts.output import parse_item_output, quote_found_share
from care_ray.contracts.rubric import load_rubric
from care_ray.corpus.folds import FoldError, assign_folds, stratum_labels
from care_ray.corpus.reader import iter_sessions
from care_ray.scoring.prompts import PromptBuilder, full_dialogue, load_tokenizer
from care_ray.training.sft_data import (
    SFTDataError,
    SFTOptions,
    build_examples,
    make_sft_data,
    parse_label_map,
    read_examples,
)


def _wai_sessions(n_clients: int = 30, per_client: int = 3, seed: int = 0) -> list[dict]:
    """CounselingWAI-shaped sessions: several sessions per client, client_wai, expert rationales
    that quote the dialogue (items 1..6 only, so the template fallback is exercised too)."""
    rng = random.Random(seed)
    out = []
    for c in range(n_clients):
        level = rng.choice([1, 2, 3, 4, 4, 5, 5, 5])
        for k in range(per_client):
            wai = [max(1, min(5, level + rng.choice([-1, 0, 0, 1]))) for _ in range(12)]
            wai[11] = None if k == 0 else wai[11]  # a missing item rating
            turns = [
                {
                    "role": "client",
                    "text": f"I keep worrying about my exams, session {k} of client {c}.",
                },
                {
                    "role": "counselor",
                    "text": "What would you like to be different by the end of the month?",
                },
                {
                    "role": "client",
                    "text": "I would like to sleep before midnight and stop checking my notes.",
                },
            ]
            meta = {
                f"rationale_{i}": f'I said "I would like to sleep before midnight" and we agreed on it (item {i}).'
                for i in range(1, 7)
            }
            out.append(
                {
                    "session_id": f"c{c}-s{k}",
                    "client_id": f"c{c}",
                    "language": "en",
                    "source": "wai",
                    "turns": turns,
                    "client_wai": wai,
                    "labels": None,
                    "metadata": meta,
                }
            )
    return out


def test_client_wai_targets_rationales_and_client_disjoint_folds():
    sessions = _wai_sessions()
    opts = SFTOptions(target="score+rationale", folds=5, seed=7, missing_rationale="template")
    table = build_examples(sessions, opts)
    rows = table.to_pylist()
    # one example per rated item: 30 clients × 3 sessions × 12 items, minus the 30 missing ratings
    assert len(rows) == 30 * 3 * 12 - 30
    by_key = {(r["session_id"], r["item_id"]): r for r in rows}
    s = sessions[4]
    for item_id in range(1, 13):
        r = by_key[(s["session_id"], item_id)]
        out = parse_item_output(r["target"])  # valid against the engine's output schema
        assert out["score"] == r["score"] == s["client_wai"][item_id - 1]
        assert r["proxy_label"] is False and r["label_name"] == "client_wai"
        if item_id <= 6:
            assert r["rationale_source"] == "reference"
            assert out["rationale"] == s["metadata"][f"rationale_{item_id}"]
            assert out["quotes"] == ["I would like to sleep before midnight"]
        else:
            assert r["rationale_source"] == "template"
            assert quote_found_share(out["quotes"], full_dialogue(s["turns"])) == 1.0
    folds_of_client = defaultdict(set)
    for r in rows:
        folds_of_client[r["client_id"]].add(r["fold"])
    assert all(len(f) == 1 for f in folds_of_client.values()), "a client appears in two folds"
    assert sorted({r["fold"] for r in rows}) == [0, 1, 2, 3, 4]
    assert opts.stats["rationale_reference"] == 30 * 3 * 6


def test_esconv_proxy_labels_map_to_dimensions_and_are_marked(esconv_corpus):
    sessions = list(iter_sessions(esconv_corpus))
    table = build_examples(sessions, SFTOptions(folds=5, seed=123, missing_rationale="template"))
    rows = table.to_pylist()
    labelled = {
        s["session_id"]: s
        for s in sessions
        if s["labels"] and "empathy" in s["labels"] and "relevance" in s["labels"]
    }
    assert {r["session_id"] for r in rows} == set(
        labelled
    )  # the 204 unrated sessions yield nothing
    assert len(rows) == 12 * len(labelled)
    assert all(r["proxy_label"] for r in rows)
    rubric = load_rubric()
    dim = {i.id: i.dimension for i in rubric.items}
    sources = Counter()
    for r in rows[:1200]:
        s = labelled[r["session_id"]]
        expected_label = "empathy" if dim[r["item_id"]] == "bond" else "relevance"
        assert r["label_name"] == expected_label
        assert r["score"] == round(s["labels"][expected_label])
        out = parse_item_output(r["target"])
        feedback = (s["metadata"] or {}).get("seeker_question1", "")
        if r["rationale_source"] == "feedback":
            assert out["rationale"] == feedback.strip()
        else:
            assert r["rationale_source"] == "template" and len(feedback.split()) < 4
            assert f"{s['labels'][expected_label]:g}/5" in out["rationale"]
        assert quote_found_share(out["quotes"], full_dialogue(s["turns"])) == 1.0
        sources[r["rationale_source"]] += 1
    assert sources["feedback"] and sources["template"]


def test_targets_without_a_rationale_are_skipped_and_counted_unless_asked_otherwise():
    sessions = _wai_sessions()
    opts = SFTOptions(folds=5, seed=7)  # the default: no template rationales
    rows = build_examples(sessions, opts).to_pylist()
    assert {r["rationale_source"] for r in rows} == {"reference"}
    assert len(rows) == 30 * 3 * 6
    assert opts.stats["targets_without_rationale_skipped"] == 30 * 3 * 6 - 30
    with pytest.raises(SFTDataError, match="item 7 has no rationale"):
        build_examples(sessions, SFTOptions(folds=5, seed=7, missing_rationale="error"))
    bare = [dict(s, metadata=None) for s in sessions]
    with pytest.raises(SFTDataError, match="care-ray rationales draft.*--target score"):
        build_examples(bare, SFTOptions(folds=5, seed=7))
    # score-only training needs no rationale
    assert build_examples(bare, SFTOptions(target="score", folds=5, seed=7)).num_rows == 1050


def test_rationale_table_reviewed_first_drafts_only_when_asked():
    sessions = _wai_sessions()
    s = sessions[4]
    rating = s["client_wai"][6]
    table = {
        (s["session_id"], 7): {  # reviewed: used
            "rating": rating,
            "status": "reviewed",
            "text": "I said I would like to sleep.",
            "quotes": ["I would like to sleep before midnight"],
            "flags": ["score_mismatch"],
        },
        (s["session_id"], 8): {  # a flagged draft: only with drafts=all
            "rating": s["client_wai"][7],
            "status": "draft",
            "text": "draft eight",
            "quotes": [],
            "flags": ["no_quotes"],
        },
        (s["session_id"], 9): {  # an unflagged draft: with drafts=unflagged or all
            "rating": s["client_wai"][8],
            "status": "draft",
            "text": "draft nine",
            "quotes": [],
            "flags": [],
        },
        (s["session_id"], 10): {  # explains another rating: never
            "rating": s["client_wai"][9] % 5 + 1,
            "status": "reviewed",
            "text": "other",
            "quotes": [],
            "flags": [],
        },
        (s["session_id"], 11): {  # rejected: never
            "rating": s["client_wai"][10],
            "status": "rejected",
            "text": None,
            "quotes": [],
            "flags": [],
        },
        # a reference rationale in the corpus wins over the table
        (s["session_id"], 1): {
            "rating": s["client_wai"][0],
            "status": "reviewed",
            "text": "not this",
            "quotes": [],
            "flags": [],
        },
    }

    def sources(drafts: str) -> dict[int, tuple[str, str]]:
        opts = SFTOptions(folds=5, seed=7, rationale_table=table, drafts=drafts)
        rows = build_examples(sessions, opts).to_pylist()
        return {
            r["item_id"]: (r["rationale_source"], parse_item_output(r["target"])["rationale"])
            for r in rows
            if r["session_id"] == s["session_id"]
        }, opts

    got, opts = sources("none")
    assert got[7] == ("reviewed", "I said I would like to sleep.")
    assert got[1][0] == "reference" and set(got) == {1, 2, 3, 4, 5, 6, 7}
    assert opts.stats["rationale_table_rating_mismatch"] == 1
    got, _ = sources("unflagged")
    assert got[9] == ("draft", "draft nine") and 8 not in got
    got, _ = sources("all")
    assert got[8] == ("draft", "draft eight") and 10 not in got and 11 not in got


def test_folds_are_stratified_on_the_score_distribution(esconv_corpus):
    table = build_examples(
        iter_sessions(esconv_corpus), SFTOptions(folds=5, seed=123, missing_rationale="template")
    )
    per_session = {}
    for r in table.select(["session_id", "fold", "score"]).to_pylist():
        per_session.setdefault(r["session_id"], [r["fold"], []])[1].append(r["score"])
    strata = {sid: round(sum(v[1]) / len(v[1])) for sid, v in per_session.items()}
    overall = Counter(strata.values())
    n = len(strata)
    for fold in range(5):
        in_fold = [strata[s] for s, v in per_session.items() if v[0] == fold]
        assert abs(len(in_fold) - n / 5) <= 3
        share = Counter(in_fold)
        for stratum, count in overall.items():
            assert abs(share[stratum] / len(in_fold) - count / n) < 0.03, (fold, stratum)


def test_rare_strata_are_merged_so_every_fold_can_hold_them():
    y = stratum_labels([1.0, 5.0, 5.0, 4.9, 4.0, 4.2, 3.9, 4.1, 4.4, 2.6, 3.0], n_splits=3)
    counts = Counter(y.tolist())
    assert all(c >= 3 for c in counts.values())
    with pytest.raises(FoldError, match="clients cannot fill"):
        assign_folds(["a", "b"], ["x", "x"], [3.0, 4.0], n_splits=2, seed=0)


def test_score_only_targets_and_identical_prompts_with_scoring_budget(esconv_corpus, tiny_model):
    sessions = [
        s for s in iter_sessions(esconv_corpus) if s["labels"] and "empathy" in s["labels"]
    ][:12]
    rubric = load_rubric()
    tokenizer = load_tokenizer(str(tiny_model))
    builder = PromptBuilder(rubric, tokenizer, max_model_len=512, max_new_tokens=64)
    table = build_examples(
        sessions, SFTOptions(target="score", folds=2, seed=1), prompt_builder=builder
    )
    rows = table.to_pylist()
    assert {r["target"] for r in rows} <= {
        json.dumps({"score": k}, separators=(",", ":")) for k in range(1, 6)
    }
    assert all(r["rationale_source"] == "none" for r in rows)
    # byte-identical to the prompts `care-ray score` builds with the same budget
    scoring = builder.build_item_prompts(
        pa.Table.from_pylist(
            [{"session_id": s["session_id"], "turns": s["turns"]} for s in sessions]
        ),
        rubric.items,
    )
    scoring_prompt = {
        (sid, iid): p
        for sid, iid, p in zip(
            scoring["session_id"].to_pylist(),
            scoring["item_id"].to_pylist(),
            scoring["prompt"].to_pylist(),
            strict=True,
        )
    }
    truncated = 0
    for r in rows:
        rendered = builder.render(r["messages"])
        assert rendered == scoring_prompt[(r["session_id"], r["item_id"])]
        assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= 512 - 64
        truncated += "turns omitted" in rendered
    assert truncated, "the 512-token budget should cut some ESConv sessions"


def test_label_map_parsing_and_errors():
    rubric = load_rubric()
    lm = parse_label_map(["empathy=bond", "relevance = 1,2"], rubric)
    assert lm.items_by_label == {"empathy": (3, 5, 7, 9), "relevance": (1, 2)}
    assert lm.label_of(7) == "empathy" and lm.label_of(4) is None
    with pytest.raises(SFTDataError, match="mapped from both"):
        parse_label_map({"a": "bond", "b": "3"}, rubric)
    with pytest.raises(SFTDataError, match="LABEL="):
        parse_label_map(["empathy"], rubric)


def test_cli_writes_examples_and_manifest(esconv_corpus, tmp_path):
    runner = CliRunner()
    out = tmp_path / "sft"
    res = runner.invoke(
        app,
        [
            "sft-data",
            "--sessions",
            str(esconv_corpus),
            "--out",
            str(out),
            "--folds",
            "3",
            "--max-sessions",
            "60",
            "--items",
            "bond",
            "--label-map",
            "empathy=bond",
        ],
    )
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    table = read_examples(out)
    assert manifest["examples"] == table.num_rows == 4 * manifest["counts"]["sessions_with_targets"]
    assert set(table["dimension"].to_pylist()) == {"bond"}
    assert sorted(manifest["folds"]) == ["0", "1", "2"]
    # user mistakes: one line, exit 2, no traceback
    for bad in (["--label-map", "empathy=warmth"], ["--target", "rationale"], ["--folds", "1"]):
        res = runner.invoke(
            app,
            ["sft-data", "--sessions", str(esconv_corpus), "--out", str(tmp_path / "bad"), *bad],
        )
        assert res.exit_code == 2, (bad, res.output)
        assert "Traceback" not in res.output and res.output.strip().startswith("error:")
    res = runner.invoke(
        app, ["sft-data", "--sessions", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad")]
    )
    assert res.exit_code == 2 and "no sessions corpus" in res.output


def test_make_sft_data_roundtrip(esconv_corpus, tmp_path):
    manifest = make_sft_data(
        esconv_corpus, tmp_path / "sft", SFTOptions(folds=2, max_sessions=20, seed=3)
    )
    table = read_examples(tmp_path / "sft")
    assert table.num_rows == manifest["examples"] == manifest["proxy_label_examples"]
    again = make_sft_data(
        esconv_corpus, tmp_path / "sft2", SFTOptions(folds=2, max_sessions=20, seed=3)
    )
    assert again["folds"] == manifest["folds"]  # deterministic sample and folds
