"""`care-ray cards` on a corpus with planted counselors: one weak on Task, one weak on Bond, one
improving over time and one with only two sessions, among ten ordinary ones. Model-free (the
clients' own client_wai ratings) and with a scores folder written by hand in the `care-ray score`
layout (sessions/ + items/ with rationales and quotes); plus one card and the index in chromium."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from care_ray.cli import app

ITEM_DIMENSION = {
    1: "task",
    2: "task",
    3: "bond",
    4: "goal",
    5: "bond",
    6: "goal",
    7: "bond",
    8: "goal",
    9: "bond",
    10: "task",
    11: "goal",
    12: "task",
}
DIMENSIONS = ("goal", "task", "bond")
PLANTED = "<script>alert('planted')</script> let us skip the homework"
LOW_WORDS = {
    "goal": "goals never concrete vague aims",
    "task": "activities mismatch homework pointless",
    "bond": "cold mechanical dismissive tone",
}
# counselor → number of sessions, per-dimension level (None: ordinary), rising over time
PLANTS = {
    "weak_task": (8, {"task": 1.6}, False),
    "weak_bond": (8, {"bond": 1.6}, False),
    "improver": (10, {}, True),
    "two": (2, {}, False),
}


def _sessions(seed: int = 3) -> tuple[list[dict], dict[str, dict[int, int]]]:
    rng = np.random.default_rng(seed)
    plan = {f"c{i:02d}": (6, {}, False) for i in range(1, 11)} | PLANTS
    sessions, ratings = [], {}
    for counselor, (n, levels, rising) in plan.items():
        for k in range(n):
            sid = f"{counselor}-s{k}"
            items = {}
            for item, dim in ITEM_DIMENSION.items():
                level = 1.4 + 0.38 * k if rising else levels.get(dim, 3.9)
                items[item] = int(np.clip(round(level + rng.normal(0, 0.4)), 1, 5))
            ratings[sid] = items
            counselor_text = (
                PLANTED if counselor == "weak_task" and k == 0 else f"what would help you {k}?"
            )
            sessions.append(
                {
                    "session_id": sid,
                    "client_id": f"{counselor}-client{k % 3}",
                    "counselor_id": counselor,
                    "session_index": k // 3 + 1,
                    "started_at": f"2024-{k + 1:02d}-05T10:00:00Z",
                    "language": "en",
                    "source": "clinic",
                    "turns": [
                        {"role": "client", "text": "I feel tired and work is hard."},
                        {"role": "counselor", "text": "Tell me more about work."},
                        {"role": "client", "text": "My manager keeps adding tasks."},
                        {"role": "counselor", "text": counselor_text},
                        {"role": "client", "text": "Maybe, I am not sure."},
                        {"role": "counselor", "text": "That sounds heavy."},
                    ],
                    "client_wai": [items[i] for i in range(1, 13)],
                }
            )
    return sessions, ratings


def _scores(root: Path, sessions: list[dict], ratings: dict[str, dict[int, int]]) -> Path:
    run = root / "scores"
    (run / "sessions").mkdir(parents=True)
    (run / "items").mkdir()
    rows, per_session = [], []
    for s in sessions:
        sid, items = s["session_id"], ratings[s["session_id"]]
        per_session.append(
            {
                "session_id": sid,
                **{
                    d: float(np.mean([v for i, v in items.items() if ITEM_DIMENSION[i] == d]))
                    for d in DIMENSIONS
                },
            }
        )
        quote = s["turns"][3]["text"]
        for item, score in items.items():
            dim = ITEM_DIMENSION[item]
            rows.append(
                {
                    "session_id": sid,
                    "item_id": item,
                    "dimension": dim,
                    "score": float(score),
                    "scores": [score],
                    "rationale": f"The counselor {LOW_WORDS[dim]} so I rated it low"
                    if score <= 2
                    else "It went fine overall and I felt heard",
                    "quotes": [quote],
                    "quote_found": 1.0,
                    "model": "synthetic",
                    "adapter": None,
                    "rubric_id": "wai-sr-en",
                    "n_items_selected": 12,
                    "truncated": False,
                }
            )
    pl.DataFrame(per_session).write_parquet(run / "sessions" / "part-0.parquet")
    pl.DataFrame(rows).write_parquet(run / "items" / "part-0.parquet")
    return run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from care_ray.corpus.ingest import ingest_files

    root = tmp_path_factory.mktemp("cards")
    sessions, ratings = _sessions()
    jsonl = root / "sessions.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    ingest_files("sessions-jsonl", [jsonl], root / "corpus")
    return {"root": root, "corpus": root / "corpus", "scores": _scores(root, sessions, ratings)}


def _cards(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["cards", *args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def model_free(corpus) -> Path:
    out = corpus["root"] / "cards-free"
    code, output = _cards("--sessions", str(corpus["corpus"]), "--out", str(out), "--workers", "1")
    assert code == 0, output
    assert "(client_wai)" in output
    return out


@pytest.fixture(scope="module")
def scored(corpus) -> Path:
    out = corpus["root"] / "cards-scored"
    code, output = _cards(
        "--sessions", str(corpus["corpus"]), "--scores", str(corpus["scores"]), "--out", str(out)
    )
    assert code == 0, output
    assert "(scores)" in output
    return out


def _card(out: Path, counselor: str) -> str:
    from care_ray.report.cards import file_name

    return (out / "cards" / file_name(counselor)).read_text(encoding="utf-8")


def test_model_free_cards_name_the_planted_weaknesses_and_trend(model_free):
    table = pl.read_parquet(model_free / "cards.parquet")
    ids = table.get_column("counselor_id").to_list()
    assert "two" not in ids and len(ids) == 13
    assert not list((model_free / "cards").glob("two-*"))
    row = {r["counselor_id"]: r for r in table.iter_rows(named=True)}
    assert row["weak_task"]["task_is_weakest"] and row["weak_task"]["task_is_below"]
    assert row["weak_bond"]["bond_is_weakest"] and row["weak_bond"]["bond_is_below"]
    for dim in DIMENSIONS:
        assert row["improver"][f"{dim}_slope_lo"] > 0
        assert row["c01"][f"{dim}_pooled_lo"] < row["c01"][f"{dim}_pooled_mean"]
        assert row["weak_task"][f"{dim}_n"] == 8
    assert "weakest dimension, relative to the population, is Task" in _card(
        model_free, "weak_task"
    )
    assert "weakest dimension, relative to the population, is Bond" in _card(
        model_free, "weak_bond"
    )
    improver = _card(model_free, "improver")
    assert "rising" in improver and "clients' own answers" in improver
    strong = _card(model_free, "c01")
    assert "Strengths, then the weakest dimension" in strong
    assert strong.index("Strengths") < strong.index("Your trend")
    index = (model_free / "index.html").read_text(encoding="utf-8")
    positions = [index.index(f">{c}</a>") for c in sorted(ids)]
    assert positions == sorted(positions) and ">two</a>" not in index


def test_scored_cards_quote_moments_with_dialogue_and_escape(scored):
    table = pl.read_parquet(scored / "cards.parquet")
    weak = table.filter(pl.col("counselor_id") == "weak_task").row(0, named=True)
    assert weak["task_is_weakest"] and weak["n_low_items"] > 0
    assert {m["dimension"] for m in weak["moments"]} == {"task"}
    html = _card(scored, "weak_task")
    assert "model&#39;s estimates" in html or "model's estimates" in html
    assert "the single answer the model found most likely" in html  # decoded scores only
    assert "activities mismatch homework pointless" in html  # the rationale
    assert "&lt;script&gt;alert(" in html and "<script>" not in html
    assert 'class="quoted"' in html and "My manager keeps adding tasks." in html  # the dialogue
    assert "challenge 1" in html


def test_no_quotes_shows_counts_only(corpus):
    out = corpus["root"] / "cards-noquotes"
    code, output = _cards(
        "--sessions",
        str(corpus["corpus"]),
        "--scores",
        str(corpus["scores"]),
        "--out",
        str(out),
        "--no-quotes",
        "--counselor",
        "weak_task",
    )
    assert code == 0, output
    html = _card(out, "weak_task")
    assert "counts only" in html
    assert "homework" not in html and "rated it low" not in html and "manager" not in html
    table = pl.read_parquet(out / "cards.parquet")
    assert table.height == 1 and "moments" not in table.columns


def test_reuses_an_analysis_and_sorts_by_score_only_when_asked(corpus, model_free):
    out = corpus["root"] / "cards-again"
    code, output = _cards(
        "--sessions",
        str(corpus["corpus"]),
        "--analysis",
        str(model_free / "analysis"),
        "--out",
        str(out),
        "--sort-by-score",
        "--workers",
        "1",
    )
    assert code == 0, output
    assert not (out / "analysis").exists()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "Mean pooled score" in index
    assert index.index(">weak_task</a>") > index.index(">c01</a>")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--counselor", "weak_tsk"], "did you mean 'weak_task'"),
        (["--counselor", "two"], "has 2 session(s)"),
        (["--scores", "/nonexistent/scores"], "scores not found"),
        (["--analysis", "/nonexistent/an"], "analysis not found"),
    ],
)
def test_bad_input_is_one_line(corpus, model_free, args, expected):
    extra = [] if "--analysis" in args else ["--analysis", str(model_free / "analysis")]
    code, output = _cards(
        "--sessions", str(corpus["corpus"]), "--out", str(corpus["root"] / "bad"), *extra, *args
    )
    assert code == 2
    assert expected in output and len(output.strip().splitlines()) == 1, output


def test_missing_corpus_is_one_line(tmp_path):
    code, output = _cards("--sessions", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert code == 2 and "corpus not found" in output and len(output.strip().splitlines()) == 1


def test_labels_when_the_corpus_has_no_client_ratings(corpus):
    from care_ray.corpus.ingest import ingest_files

    root = corpus["root"]
    sessions, ratings = _sessions()
    for s in sessions:
        del s["client_wai"]
        items = ratings[s["session_id"]]
        s["labels"] = {"empathy": float(np.mean([items[i] for i in (3, 5, 7, 9)]))}
    jsonl = root / "labels.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    ingest_files("sessions-jsonl", [jsonl], root / "labels-corpus")
    out = root / "cards-labels"
    code, output = _cards("--sessions", str(root / "labels-corpus"), "--out", str(out))
    assert code == 0, output
    assert "(labels)" in output
    row = pl.read_parquet(out / "cards.parquet").filter(pl.col("counselor_id") == "weak_bond")
    assert row.item(0, "empathy_is_below")
    html = _card(out, "weak_bond")
    assert "Empathy" in html and "session labels" in html


def test_the_process_pool_writes_the_same_cards(corpus, model_free, monkeypatch, tmp_path):
    from care_ray.analytics.cards import CardsConfig, build_cards
    from care_ray.report import cards as report_cards

    cfg = CardsConfig(
        sessions=corpus["corpus"], analysis=model_free / "analysis", out=tmp_path / "pool"
    )
    data = build_cards(cfg)
    monkeypatch.setattr(report_cards, "IN_PROCESS_BELOW", 0)
    monkeypatch.setattr(report_cards, "CHUNK", 4)
    index = report_cards.write_cards(data, cfg.out, quotes=True, sort_by_score=False, workers=2)
    written = sorted(p.name for p in (tmp_path / "pool" / "cards").glob("*.html"))
    assert written == sorted(p.name for p in (model_free / "cards").glob("*.html"))
    assert index.read_text(encoding="utf-8").count("<tr>") == len(written) + 1


def test_card_and_index_in_chromium(scored, tmp_path):
    from browser import chromium_page

    from care_ray.report.cards import file_name

    with chromium_page(tmp_path) as (page, log):
        page.goto((scored / "index.html").resolve().as_uri(), wait_until="load")
        link = page.locator("a", has_text="weak_task")
        assert link.count() == 1
        link.click()
        page.wait_for_load_state("load")
        assert page.url.endswith(file_name("weak_task"))
        plots = page.locator("figure svg.plot")
        assert plots.count() == 6  # a histogram and a trend per dimension
        for i in range(plots.count()):
            plot = plots.nth(i)
            caption = page.locator(f"figcaption#{plot.get_attribute('aria-labelledby')}")
            assert caption.count() == 1 and caption.inner_text().strip()
            box = plot.bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 50, box
        for title in ("Where you stand", "Moments from your sessions", "Your trend"):
            assert page.locator("h2", has_text=title).first.is_visible()
        assert page.locator("script").count() == 0
        quote = page.locator("blockquote.quote", has_text="<script>")
        assert quote.count() >= 1 and PLANTED in quote.first.inner_text()
    assert not log.dialogs and not log.errors, (log.dialogs, log.errors)
    assert not [m for m in log.console if m[0] == "error"], log.console
    assert not [u for u in log.requests if not u.startswith(("file:", "data:"))], log.requests


@pytest.mark.slow
def test_cards_from_a_real_engine_run_on_esconv(scored_esconv, esconv_corpus, tmp_path):
    """The cards on what `care-ray score` really wrote (the tiny model through Ray Data + vLLM on
    ESConv): ESConv has no counselor ids, so the six scored sessions are given two helpers."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    run, _ = scored_esconv
    scores = pl.read_parquet(run / "sessions")
    helper = {s: f"helper-{'ab'[i % 2]}" for i, s in enumerate(sorted(scores["session_id"]))}
    corpus = tmp_path / "corpus"
    shutil.copytree(esconv_corpus, corpus)
    for part in (corpus / "sessions").rglob("*.parquet"):
        table = pq.read_table(part)
        ids = table.column("session_id").to_pylist()
        column = pa.array([helper.get(s) for s in ids], pa.string())
        pq.write_table(
            table.set_column(table.schema.get_field_index("counselor_id"), "counselor_id", column),
            part,
        )
    out = tmp_path / "cards"
    code, output = _cards(
        "--sessions", str(corpus), "--scores", str(run), "--out", str(out), "--min-sessions", "2"
    )
    assert code == 0, output
    assert "2 cards (scores)" in output
    cards = pl.read_parquet(out / "cards.parquet").sort("counselor_id")
    assert cards["counselor_id"].to_list() == ["helper-a", "helper-b"]
    assert cards["n_sessions"].to_list() == [3, 3]
    own = scores.with_columns(
        pl.col("session_id").replace_strict(helper).alias("counselor_id")
    ).sort("counselor_id")
    # the run kept the score token's probabilities: the cards use the expected scores (#30)
    for dim in ("goal", "task", "bond"):
        kept = f"{dim}_expected"
        means = own.group_by("counselor_id", maintain_order=True).agg(pl.col(kept).mean())[kept]
        assert np.allclose(cards[f"{dim}_raw_mean"].to_numpy(), means.to_numpy()), dim
    assert "weighted by how likely it found each one" in _card(out, "helper-a")
    # every quoted moment is one of that helper's own low-scored items, from the engine's answers
    items = pl.read_parquet(run / "items")
    for row in cards.iter_rows(named=True):
        for m in row["moments"]:
            assert helper[m["session_id"]] == row["counselor_id"]
            item = items.filter(
                (pl.col("session_id") == m["session_id"]) & (pl.col("item_id") == m["item_id"])
            )
            assert item.height == 1 and item["score"][0] == m["score"] <= 2
    for name in ("helper-a", "helper-b"):
        assert "Where you stand" in _card(out, name)
