"""`care-ray baseline`: TF-IDF → ridge, cross-fitted on client-disjoint folds. Checked on small
synthetic corpora with a planted signal (learned), no signal (r near 0), and a client-identity
leak (a model that saw the client would exploit it; a client-disjoint one cannot)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.corpus.ingest import ingest_files
from care_ray.evaluation.baseline import analyze_text, count_ngrams, session_texts

FILLER = (
    "today work family sleep friend talk feel week home money plan think time help school "
    "mother father job tired worry night morning call message weekend"
).split()
ZH_FILLER = list("我们今天工作家里睡觉朋友说话感觉周末钱计划时间学校妈妈爸爸累担心晚上早上")
N_CLIENTS = 60
TRUTH = ["--truth", "labels.empathy=bond", "--truth", "labels.relevance=goal,task"]
runner = CliRunner()


def _words(rng: np.random.Generator, n: int = 2) -> str:
    """Short filler turns: with 120 sessions, a planted word must be a fair share of a text for
    ridge to find it among the n-grams that only fit noise."""
    return " ".join(rng.choice(FILLER, n))


def _session(sid: str, client: str, turns: list[tuple[str, str]], labels, language="en") -> dict:
    return {
        "session_id": sid,
        "client_id": client,
        "counselor_id": "k1",
        "session_index": 1,
        "language": language,
        "source": "unit",
        "turns": [{"role": r, "text": t} for r, t in turns],
        "client_wai": None,
        "counselor_wai": None,
        "labels": labels,
        "metadata": {},
    }


def english_sessions(seed: int = 7, labelled: bool = True) -> list[dict]:
    """Two sessions per client. empathy follows a planted client word (5 with "grateful", 1
    without); relevance is a per-client constant named by a client-only word (a leak only a model
    that saw the client could use), unrelated to anything shared between clients."""
    rng = np.random.default_rng(seed)
    out = []
    relevance = rng.integers(1, 6, N_CLIENTS)
    for c in range(N_CLIENTS):
        for k in range(2):
            grateful = bool(rng.random() < 0.5)
            client_text = _words(rng) + (" grateful" if grateful else "") + f" clientword{c}"
            labels = (
                {"empathy": 5.0 if grateful else 1.0, "relevance": float(relevance[c])}
                if labelled
                else None
            )
            out.append(
                _session(
                    f"s{c:03d}-{k}",
                    f"c{c:03d}",
                    [("client", client_text), ("counselor", _words(rng)), ("client", _words(rng))],
                    labels,
                )
            )
    return out


def _corpus(root: Path, sessions: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    jsonl = root / "sessions.jsonl"
    jsonl.write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sessions), encoding="utf-8"
    )
    manifest = ingest_files("sessions-jsonl", [jsonl], root / "corpus")
    assert manifest["sessions_written"] == len(sessions)
    return root / "corpus"


def _baseline(*args: str) -> dict:
    result = runner.invoke(app, ["baseline", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{") :])


def _scores(out: Path) -> dict[str, dict]:
    rows = pq.read_table(out / "sessions").to_pylist()
    return {r["session_id"]: r for r in rows}


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> tuple[Path, list[dict], Path]:
    root = tmp_path_factory.mktemp("baseline-en")
    sessions = english_sessions()
    corpus = _corpus(root, sessions)
    out = root / "baseline"
    _baseline("--sessions", str(corpus), "--out", str(out), *TRUTH)
    return corpus, sessions, out


def test_a_planted_word_is_learned_and_no_signal_gives_r_near_zero(english):
    _, sessions, out = english
    scores = _scores(out)
    assert len(scores) == len(sessions)
    empathy = [s["labels"]["empathy"] for s in sessions]
    bond = [scores[s["session_id"]]["bond"] for s in sessions]
    assert stats.pearsonr(bond, empathy).statistic > 0.8
    assert all(1 <= b <= 5 for b in bond)
    # relevance is only knowable from the client's own word: held out by client, it is noise
    relevance = [s["labels"]["relevance"] for s in sessions]
    goal = [scores[s["session_id"]]["goal"] for s in sessions]
    assert abs(stats.pearsonr(goal, relevance).statistic) < 0.3
    assert goal == [scores[s["session_id"]]["task"] for s in sessions]  # one model, two dims


def test_every_session_is_predicted_by_a_model_that_never_saw_its_client(english):
    _, sessions, out = english
    scores = _scores(out)
    client_of = {s["session_id"]: s["client_id"] for s in sessions}
    folds = pq.read_table(out / "folds.parquet").to_pylist()
    fold_of = {r["session_id"]: r["fold"] for r in folds}
    assert fold_of == {sid: r["fold"] for sid, r in scores.items()}
    folds_of_client: dict[str, set[int]] = {}
    for sid, fold in fold_of.items():
        folds_of_client.setdefault(client_of[sid], set()).add(fold)
    assert all(len(f) == 1 for f in folds_of_client.values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "care-ray baseline scores"
    counts = manifest["counts"]
    assert counts["sessions_read"] == counts["labelled"] + counts["skipped_no_truth"]
    assert counts["predicted"] == counts["labelled"] == len(sessions)
    n_per_fold = manifest["folds"]["sessions_per_fold"]
    for fit in manifest["fits"]:  # trained on every other fold, tested on its own
        assert fit["n_test"] == n_per_fold[str(fit["fold"])]
        assert fit["n_train"] == len(sessions) - fit["n_test"]
        assert fit["alpha"] in manifest["settings"]["alphas"]
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["fingerprint"] == manifest["fingerprint"]


def test_given_folds_are_the_folds_used(english, tmp_path):
    corpus, sessions, _ = english
    given = {s["session_id"]: int(s["client_id"][1:]) % 3 for s in sessions}
    folds_dir = tmp_path / "sft"
    folds_dir.mkdir()
    pq.write_table(
        pa.table({"session_id": list(given), "fold": pa.array(list(given.values()), pa.int32())}),
        folds_dir / "folds.parquet",
    )
    out = tmp_path / "baseline"
    summary = _baseline(
        "--sessions", str(corpus), "--out", str(out), *TRUTH, "--folds", str(folds_dir)
    )
    assert summary["folds"] == str(folds_dir / "folds.parquet")
    assert {sid: r["fold"] for sid, r in _scores(out).items()} == given
    written = pq.read_table(out / "folds.parquet").to_pylist()
    assert {r["session_id"]: r["fold"] for r in written} == given
    # a rerun into the same folder on that folder's own folds.parquet reads it before replacing it
    _baseline("--sessions", str(corpus), "--out", str(out), *TRUTH, "--folds", str(out))
    assert {sid: r["fold"] for sid, r in _scores(out).items()} == given


def test_evaluate_reads_the_scores_and_agrees_with_scipy(english, tmp_path):
    corpus, sessions, out = english
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--scores",
            str(out),
            "--sessions",
            str(corpus),
            *TRUTH,
            "--folds",
            str(out),
            "--resamples",
            "50",
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    scores = _scores(out)
    for dim, label in (("bond", "empathy"), ("goal", "relevance"), ("task", "relevance")):
        predicted = [scores[s["session_id"]][dim] for s in sessions]
        observed = [s["labels"][label] for s in sessions]
        expected = stats.pearsonr(predicted, observed).statistic
        assert metrics["dimensions"][dim]["pearson"] == pytest.approx(expected, abs=1e-9)
        assert metrics["dimensions"][dim]["n"] == len(sessions)
    assert metrics["folds"]["n_folds"] == 5


def test_score_predicts_every_session_of_an_unlabelled_corpus_once(english, tmp_path):
    corpus, _, _ = english
    unlabelled = english_sessions(seed=99, labelled=False)
    for s in unlabelled:
        s["session_id"] = "new-" + s["session_id"]
    target = _corpus(tmp_path / "unlabelled", unlabelled)
    out = tmp_path / "triage"
    summary = _baseline(
        "--sessions",
        str(corpus),
        "--out",
        str(out),
        *TRUTH,
        "--score",
        str(target),
        "--batch-size",
        "25",
    )
    table = pq.read_table(out / "sessions")
    ids = table["session_id"].to_pylist()
    assert sorted(ids) == sorted(s["session_id"] for s in unlabelled)
    assert len(set(ids)) == len(ids)
    assert summary["scored"]["sessions_scored"] == len(unlabelled)
    assert summary["scored"]["parts"] == len(list((out / "sessions").glob("part-*.parquet"))) > 1
    assert summary["scored"]["sessions_also_in_training"] == 0
    assert table["fold"].null_count == table.num_rows
    # the planted word still works on sessions the models never saw
    grateful = ["grateful" in s["turns"][0]["text"] for s in unlabelled]
    bond = dict(zip(ids, table["bond"].to_pylist(), strict=True))
    r = stats.pearsonr([bond[s["session_id"]] for s in unlabelled], grateful).statistic
    assert r > 0.8


def _error(*args: str) -> str:
    result = runner.invoke(app, ["baseline", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_input_is_one_line(english, tmp_path):
    corpus, sessions, _ = english
    out = str(tmp_path / "out")
    msg = _error("--sessions", str(corpus), "--out", out, "--truth", "labels.warmth=bond")
    assert "warmth" in msg and "empathy, relevance" in msg
    msg = _error("--sessions", str(corpus), "--out", out)  # client_wai: none rated
    assert "client_wai" in msg and f"{len(sessions)} sessions" in msg
    partial = tmp_path / "partial.parquet"
    pq.write_table(
        pa.table(
            {
                "session_id": [s["session_id"] for s in sessions[:100]],
                "fold": pa.array([i % 5 for i in range(100)], pa.int32()),
            }
        ),
        partial,
    )
    msg = _error("--sessions", str(corpus), "--out", out, *TRUTH, "--folds", str(partial))
    assert f"{len(sessions) - 100} of the {len(sessions)} labelled sessions" in msg
    msg = _error("--sessions", str(corpus), "--out", out, *TRUTH, "--n-folds", "200")
    assert "60 clients cannot fill 200" in msg
    msg = _error("--sessions", str(corpus), "--out", out, *TRUTH, "--alpha", "0")
    assert "--alpha" in msg


def test_chinese_is_read_by_characters(tmp_path):
    assert analyze_text("我很好 ok fine") == [
        "我",
        "很",
        "好",
        "ok",
        "fine",
        "我 很",
        "很 好",
        "好 ok",
        "ok fine",
    ]
    rng = np.random.default_rng(5)
    sessions = []
    for c in range(N_CLIENTS):
        praised = bool(rng.random() < 0.5)
        # no spaces, as Chinese is written: a word analyzer would see one token per sentence
        text = (
            "".join(rng.choice(ZH_FILLER, 3))
            + ("棒" if praised else "")
            + "".join(rng.choice(ZH_FILLER, 3))
        )
        sessions.append(
            _session(
                f"z{c:03d}",
                f"zc{c:03d}",
                [("client", text), ("counselor", "".join(rng.choice(ZH_FILLER, 12)))],
                {"empathy": 5.0 if praised else 1.0},
                language="zh",
            )
        )
    corpus = _corpus(tmp_path, sessions)
    table = pq.read_table(corpus / "sessions")
    vectorizer, counts = count_ngrams(session_texts(table["turns"], "client"))
    assert counts.shape[0] == len(sessions)
    assert "棒" in vectorizer.vocabulary_
    assert all(len(f.replace(" ", "")) <= 2 for f in vectorizer.vocabulary_)
    out = tmp_path / "baseline"
    _baseline(
        "--sessions", str(corpus), "--out", str(out), "--truth", "labels.empathy=bond",
        "--text", "client",
    )  # fmt: skip
    scores = _scores(out)
    bond = [scores[s["session_id"]]["bond"] for s in sessions]
    assert stats.pearsonr(bond, [s["labels"]["empathy"] for s in sessions]).statistic > 0.8
    assert all(scores[s["session_id"]]["goal"] is None for s in sessions)


def test_client_wai_fits_one_model_per_dimension_on_the_item_means(tmp_path):
    """Bond items follow the planted word, Goal and Task items do not: one model per dimension."""
    rng = np.random.default_rng(3)
    sessions = english_sessions(seed=3)
    bond_items = (3, 5, 7, 9)  # WAI-SR, written out here so the test does not share the code's map
    for s in sessions:
        grateful = "grateful" in s["turns"][0]["text"]
        s["client_wai"] = [
            (5 if grateful else 1) if i in bond_items else int(rng.integers(1, 6))
            for i in range(1, 13)
        ]
        s["labels"] = None
    corpus = _corpus(tmp_path, sessions)
    out = tmp_path / "baseline"
    _baseline("--sessions", str(corpus), "--out", str(out))
    scores = _scores(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["targets"]) == {"client_wai.goal", "client_wai.task", "client_wai.bond"}
    bond = [scores[s["session_id"]]["bond"] for s in sessions]
    observed = [5.0 if "grateful" in s["turns"][0]["text"] else 1.0 for s in sessions]
    assert stats.pearsonr(bond, observed).statistic > 0.8
    goal = [scores[s["session_id"]]["goal"] for s in sessions]
    assert goal != [scores[s["session_id"]]["task"] for s in sessions]
