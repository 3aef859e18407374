"""`care-ray evaluate`: agreement with the client's own rating (or a proxy label), checked against
scipy/numpy computed here from the same inputs."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.corpus.ingest import ingest_files
from care_ray.evaluation.evaluate import EvaluateError, parse_scorers
from care_ray.evaluation.metrics import bootstrap_agreement, compare_raters, rationale_overlap

# WAI-SR item → dimension, written out here so the test does not share the code's mapping.
ITEMS = {"goal": [4, 6, 8, 11], "task": [1, 2, 10, 12], "bond": [3, 5, 7, 9]}
DIMS = ("goal", "task", "bond")
N = 24


def _strict_json(path: Path) -> dict:
    def refuse(name: str):
        raise AssertionError(f"non-strict JSON constant {name} in {path.name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def _dim_mean(wai: list | None, dim: str) -> float:
    if wai is None:
        return math.nan
    rated = [wai[i - 1] for i in ITEMS[dim] if wai[i - 1] is not None]
    return float(np.mean(rated)) if rated else math.nan


def _session(i: int, rng: np.random.Generator) -> dict:
    client = [int(v) for v in rng.integers(1, 6, 12)]
    if i % 5 == 0:
        client[3] = None  # goal item 4 unrated: goal = mean of the 3 rated items
    if i == 7:
        client = [None] * 12  # rated nothing: no truth for this session
    counselor = (
        None
        if i % 6 == 1
        else [int(min(5, max(1, v + rng.integers(-1, 2)))) if v is not None else 3 for v in client]
    )
    meta = {"cohort": f"c{i % 3}"}
    if i < 4:
        meta["rationale_1"] = f"I felt the counselor understood my goal number {i} well"
    return {
        "session_id": f"s{i:02d}",
        "client_id": f"c{i:02d}",
        "counselor_id": f"k{i % 3}",
        "session_index": 1,
        "language": "en",
        "source": "unit",
        "turns": [
            {"role": "client", "text": "I have been feeling low."},
            {"role": "counselor", "text": "Tell me more about that."},
        ],
        "client_wai": client,
        "counselor_wai": counselor,
        "labels": {"empathy": float(rng.integers(1, 6)), "relevance": float(rng.integers(1, 6))},
        "metadata": meta,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(11)
    sessions = [_session(i, rng) for i in range(N)]
    work = tmp_path_factory.mktemp("eval-corpus")
    jsonl = work / "sessions.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    manifest = ingest_files("sessions-jsonl", [jsonl], work / "corpus")
    assert manifest["sessions_written"] == N
    return work / "corpus", sessions


def _truth(sessions: list[dict]) -> dict[str, dict[str, float]]:
    return {d: {s["session_id"]: _dim_mean(s["client_wai"], d) for s in sessions} for d in DIMS}


def _predicted(sessions: list[dict], seed: int = 3) -> dict[str, dict[str, float]]:
    """Predictions that track the truth with noise; a few sessions unscored in one dimension."""
    rng = np.random.default_rng(seed)
    truth = _truth(sessions)
    out = {}
    for d in DIMS:
        out[d] = {}
        for sid, t in truth[d].items():
            base = 3.0 if math.isnan(t) else t
            out[d][sid] = float(np.clip(base + rng.normal(0, 0.8), 1, 5))
    out["task"]["s03"] = None
    return out


def _write_scores(
    folder: Path, predicted: dict[str, dict[str, float]], extra: list[str] = ()
) -> Path:
    sids = sorted(predicted["goal"]) + list(extra)
    table = pa.table(
        {
            "session_id": sids,
            **{d: pa.array([predicted[d].get(s, 2.5) for s in sids], pa.float64()) for d in DIMS},
        }
    )
    (folder / "sessions").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / "sessions" / "part-0.parquet")
    return folder


def _evaluate(corpus_dir: Path, scores: Path, out: Path, *extra: str):
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--scores",
            str(scores),
            "--sessions",
            str(corpus_dir),
            "--out",
            str(out),
            *extra,
        ],
    )
    return res


def _expected(pred: dict[str, float], true: dict[str, float], keys=None) -> dict[str, float]:
    keys = [
        k
        for k in sorted(keys if keys is not None else pred)
        if pred.get(k) is not None and not math.isnan(true.get(k, math.nan))
    ]
    p, t = np.array([pred[k] for k in keys]), np.array([true[k] for k in keys])
    return {
        "pearson": stats.pearsonr(p, t).statistic,
        "spearman": stats.spearmanr(p, t).statistic,
        "mse": float(np.mean((p - t) ** 2)),
        "n": len(keys),
    }


@pytest.fixture(scope="module")
def evaluated(corpus, tmp_path_factory):
    corpus_dir, sessions = corpus
    work = tmp_path_factory.mktemp("eval-run")
    predicted = _predicted(sessions)
    scores = _write_scores(work / "scores", predicted, extra=["not-in-corpus"])
    res = _evaluate(corpus_dir, scores, work / "out", "--resamples", "300", "--seed", "7")
    assert res.exit_code == 0, res.output
    return {
        "out": work / "out",
        "predicted": predicted,
        "sessions": sessions,
        "corpus": corpus_dir,
        "scores": scores,
        "work": work,
    }


def test_agreement_matches_scipy_and_numpy(evaluated):
    metrics = _strict_json(evaluated["out"] / "metrics.json")
    truth = _truth(evaluated["sessions"])
    assert metrics["kind"] == "care-ray evaluation" and metrics["truth"]["kind"] == "client_wai"
    assert (
        metrics["n_sessions"] == N - 1 and metrics["n_scored_sessions"] == N + 1
    )  # s07 rated nothing; one scored id is not in the corpus
    for d in DIMS:
        want, got = _expected(evaluated["predicted"][d], truth[d]), metrics["dimensions"][d]
        assert got["n"] == want["n"]
        for s in ("pearson", "spearman", "mse"):
            assert got[s] == pytest.approx(want[s], rel=1e-9), (d, s)
            lo, hi = got[f"{s}_ci"]
            assert lo < got[s] < hi, (d, s, lo, got[s], hi)
    assert metrics["dimensions"]["task"]["n"] == N - 2  # s03 has no predicted task
    pairs = pq.read_table(evaluated["out"] / "pairs.parquet").to_pylist()
    s05 = {r["dimension"]: r for r in pairs if r["session_id"] == "s05"}
    assert s05["goal"]["observed"] == pytest.approx(
        truth["goal"]["s05"]
    )  # mean of its 3 rated goal items
    assert all(r["fold"] is None for r in pairs)
    assert metrics["folds"] is None and metrics["quote_found_share"] is None  # no items/: no quotes
    # references exist (s00-s03) but a sessions/-only run has no rationales: counted as skipped, ROUGE undefined
    assert metrics["rationale_overlap"] == {
        "rouge1": None,
        "rougeL": None,
        "n": 0,
        "skipped": 4,
        "sampled_from": None,
    }


def test_bootstrap_is_reproducible_with_a_seed(evaluated, tmp_path):
    first = pq.read_table(evaluated["out"] / "agreement.parquet")
    again = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "again",
        "--resamples",
        "300",
        "--seed",
        "7",
    )
    other = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "other",
        "--resamples",
        "300",
        "--seed",
        "8",
    )
    assert again.exit_code == 0 and other.exit_code == 0
    assert pq.read_table(tmp_path / "again" / "agreement.parquet").equals(first)
    lo = lambda p: pq.read_table(p / "agreement.parquet").column("pearson_lo").to_pylist()  # noqa: E731
    assert lo(tmp_path / "other") != lo(evaluated["out"])
    assert lo(tmp_path / "other")[0] == pytest.approx(
        lo(evaluated["out"])[0], abs=0.2
    )  # another seed, a similar interval


def test_counselor_baseline_and_model_to_counselor_ratio(evaluated):
    metrics = _strict_json(evaluated["out"] / "metrics.json")
    sessions = evaluated["sessions"]
    truth = _truth(sessions)
    rated = [s["session_id"] for s in sessions if s["counselor_wai"] is not None]
    for d in DIMS:
        counselor = {
            s["session_id"]: _dim_mean(s["counselor_wai"], d)
            for s in sessions
            if s["counselor_wai"] is not None
        }
        # the baseline is measured on the sessions the model was evaluated on
        keys = [k for k in rated if evaluated["predicted"][d].get(k) is not None]
        want, got = _expected(counselor, truth[d], keys), metrics["counselor_baseline"][d]
        assert (
            got["n"] == want["n"]
            and got["pearson"] == pytest.approx(want["pearson"])
            and got["mse"] == pytest.approx(want["mse"])
        )
        gaps = [counselor[k] - truth[d][k] for k in keys if not math.isnan(truth[d][k])]
        assert got["mean_gap"] == pytest.approx(np.mean(gaps))
        model_r = metrics["dimensions"][d]["pearson"]
        ratio = metrics["model_vs_counselor"][d]
        assert (
            (ratio is None)
            if got["pearson"] <= 0
            else ratio == pytest.approx(model_r / got["pearson"])
        )
    assert any(metrics["model_vs_counselor"][d] is not None for d in DIMS)
    agreement = pq.read_table(evaluated["out"] / "agreement.parquet").to_pylist()
    assert {(r["rater"], r["dimension"]) for r in agreement} == {
        (r, d) for r in ("model", "counselor") for d in DIMS
    }


def test_calibration_counts_add_up_and_the_plot_is_svg(evaluated):
    metrics = _strict_json(evaluated["out"] / "metrics.json")
    calibration = pq.read_table(evaluated["out"] / "calibration.parquet").to_pylist()
    pairs = pq.read_table(evaluated["out"] / "pairs.parquet").to_pylist()
    for d in DIMS:
        bins = [b for b in calibration if b["dimension"] == d]
        assert sum(b["n"] for b in bins) == metrics["dimensions"][d]["n"]
        for b in bins:
            inside = [
                p
                for p in pairs
                if p["dimension"] == d
                and b["bin_lo"]
                <= p["predicted"]
                < b["bin_hi"] + (1e-9 if b["bin_hi"] == 5.0 else 0)
            ]
            assert len(inside) == b["n"]
            assert b["observed_mean"] == pytest.approx(np.mean([p["observed"] for p in inside]))
            assert (
                (b["observed_sd"] is None)
                if b["n"] == 1
                else b["observed_sd"]
                == pytest.approx(np.std([p["observed"] for p in inside], ddof=1))
            )
            assert b["bin"] == f"{b['bin_lo']:.1f}–{b['bin_hi']:.1f}"
    root = ET.parse(evaluated["out"] / "calibration.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_folds_from_sft_examples_give_mean_and_sd(evaluated, tmp_path):
    sessions, predicted = evaluated["sessions"], evaluated["predicted"]
    fold_of = {s["session_id"]: i % 3 for i, s in enumerate(sessions)}
    rows = [
        (sid, f) for sid, f in fold_of.items() for _ in range(2)
    ]  # examples repeat a session per item
    pq.write_table(
        pa.table(
            {
                "session_id": [r[0] for r in rows],
                "item_id": list(range(len(rows))),
                "fold": pa.array([r[1] for r in rows], pa.int32()),
            }
        ),
        tmp_path / "examples.parquet",
    )
    res = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "out",
        "--folds",
        str(tmp_path),
        "--resamples",
        "50",
    )
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    truth = _truth(sessions)
    folds = metrics["folds"]
    assert folds["n_folds"] == 3 and folds["source"].endswith("examples.parquet")
    for d in DIMS:
        per_fold = [
            _expected(predicted[d], truth[d], [k for k, f in fold_of.items() if f == fold])
            for fold in range(3)
        ]
        for fold in range(3):
            assert folds["per_fold"][str(fold)][d]["pearson"] == pytest.approx(
                per_fold[fold]["pearson"]
            )
        rs = [m["pearson"] for m in per_fold]
        assert folds["model"][d]["pearson"]["mean"] == pytest.approx(np.mean(rs))
        assert folds["model"][d]["pearson"]["sd"] == pytest.approx(np.std(rs, ddof=1))
        assert folds["model"][d]["mse"]["mean"] == pytest.approx(
            np.mean([m["mse"] for m in per_fold])
        )
        c = folds["counselor"][d]["pearson"]["mean"]
        assert (
            (folds["model_vs_counselor"][d] is None)
            if c <= 0
            else folds["model_vs_counselor"][d] == pytest.approx(np.mean(rs) / c)
        )
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    assert all(r["fold"] == str(fold_of[r["session_id"]]) for r in pairs)
    agreement = pq.read_table(tmp_path / "out" / "agreement.parquet").to_pylist()
    assert sorted({r["fold"] for r in agreement}, key=str) == sorted([None, "0", "1", "2"], key=str)
    assert all(
        (r["pearson_lo"] is None) == (r["fold"] is not None) for r in agreement
    )  # intervals on the overall rows only by default


def test_folds_from_a_metadata_key(evaluated, tmp_path):
    res = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "out",
        "--fold-key",
        "cohort",
        "--resamples",
        "0",
    )
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    assert metrics["folds"]["source"] == "metadata:cohort" and sorted(
        metrics["folds"]["per_fold"]
    ) == ["c0", "c1", "c2"]
    assert metrics["dimensions"]["goal"]["pearson_ci"] == [
        None,
        None,
    ]  # --resamples 0: no intervals
    res = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "per-fold",
        "--fold-key",
        "cohort",
        "--resamples",
        "100",
        "--fold-intervals",
    )
    assert res.exit_code == 0, res.output
    rows = pq.read_table(tmp_path / "per-fold" / "agreement.parquet").to_pylist()
    assert {r["fold"] for r in rows} == {None, "c0", "c1", "c2"}
    assert all(r["mse_lo"] <= r["mse"] <= r["mse_hi"] for r in rows)


def test_label_truth_maps_labels_onto_dimensions(evaluated, tmp_path):
    sessions = evaluated["sessions"]
    res = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "out",
        "--truth",
        "labels.empathy=bond",
        "--truth",
        "labels.relevance=goal,task",
        "--resamples",
        "50",
    )
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    assert metrics["truth"]["dimensions"] == {
        "goal": "labels.relevance",
        "task": "labels.relevance",
        "bond": "labels.empathy",
    }
    for d, label in (("bond", "empathy"), ("goal", "relevance"), ("task", "relevance")):
        truth = {s["session_id"]: s["labels"][label] for s in sessions}
        want = _expected(evaluated["predicted"][d], truth)
        assert metrics["dimensions"][d]["n"] == want["n"]
        assert metrics["dimensions"][d]["pearson"] == pytest.approx(want["pearson"])
        assert metrics["dimensions"][d]["spearman"] == pytest.approx(want["spearman"])
    only = _evaluate(
        evaluated["corpus"],
        evaluated["scores"],
        tmp_path / "one",
        "--truth",
        "labels.empathy",
        "--resamples",
        "0",
    )
    assert only.exit_code == 0, only.output
    assert set(_strict_json(tmp_path / "one" / "metrics.json")["truth"]["dimensions"].values()) == {
        "labels.empathy"
    }


def test_items_only_run_quotes_and_rationales(corpus, tmp_path):
    """Without sessions/, dimension scores come from items/ by queries/session_scores.sql."""
    corpus_dir, sessions = corpus
    rng = np.random.default_rng(5)
    rows = []
    for s in sessions[:10]:
        for dim, items in ITEMS.items():
            for item in items:
                score = int(rng.integers(1, 6))
                quote_found = None if item == 2 else float(rng.choice([0.0, 0.5, 1.0]))
                rationale = (
                    "The counselor understood my goal well"
                    if item == 1
                    else "no reference for this one"
                )
                rows.append(
                    {
                        "session_id": s["session_id"],
                        "item_id": item,
                        "dimension": dim,
                        "score": float(score),
                        "scores": [score],
                        "rationale": rationale,
                        "quote_found": quote_found,
                        "model": "m",
                        "adapter": None,
                        "rubric_id": "r",
                        "n_items_selected": 12,
                        "truncated": False,
                    }
                )
    schema = pa.schema(
        [
            ("session_id", pa.string()),
            ("item_id", pa.int32()),
            ("dimension", pa.string()),
            ("score", pa.float64()),
            ("scores", pa.list_(pa.int8())),
            ("rationale", pa.string()),
            ("quote_found", pa.float64()),
            ("model", pa.string()),
            ("adapter", pa.string()),
            ("rubric_id", pa.string()),
            ("n_items_selected", pa.int32()),
            ("truncated", pa.bool_()),
        ]
    )
    (tmp_path / "scores" / "items").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(rows, schema=schema), tmp_path / "scores" / "items" / "part-0.parquet"
    )
    res = _evaluate(corpus_dir, tmp_path / "scores", tmp_path / "out", "--resamples", "0")
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    assert metrics["predicted_from"].startswith("items/")
    pairs = {
        (r["session_id"], r["dimension"]): r["predicted"]
        for r in pq.read_table(tmp_path / "out" / "pairs.parquet").to_pylist()
    }
    for d in DIMS:
        assert pairs[("s02", d)] == pytest.approx(
            np.mean([r["score"] for r in rows if r["session_id"] == "s02" and r["dimension"] == d])
        )
    evaluated_ids = {sid for sid, _ in pairs}
    found = [
        r["quote_found"]
        for r in rows
        if r["quote_found"] is not None and r["session_id"] in evaluated_ids
    ]
    assert metrics["quote_found_share"] == pytest.approx(np.mean(found))
    task = [
        r["quote_found"]
        for r in rows
        if r["quote_found"] is not None
        and r["session_id"] in evaluated_ids
        and r["dimension"] == "task"
    ]
    assert metrics["quote_found_by_dimension"]["task"] == pytest.approx(np.mean(task))
    refs = [s["metadata"]["rationale_1"] for s in sessions[:4]]
    want = rationale_overlap(refs, ["The counselor understood my goal well"] * 4)
    got = metrics["rationale_overlap"]
    assert (
        got["n"] == 4
        and got["rouge1"] == pytest.approx(want["rouge1"])
        and got["rougeL"] == pytest.approx(want["rougeL"])
    )


def test_large_cells_bootstrap_a_rescaled_subsample():
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 5, 3000)
    p = t + rng.normal(0, 1, 3000)
    full = bootstrap_agreement(p, t, resamples=300, seed=1)
    sub = bootstrap_agreement(p, t, resamples=300, seed=1, max_n=500)
    assert full["ci_n"] == 3000 and sub["ci_n"] == 500
    for s in ("pearson", "spearman", "mse"):
        assert sub[f"{s}_lo"] < sub[s] < sub[f"{s}_hi"]
        width, sub_width = full[f"{s}_hi"] - full[f"{s}_lo"], sub[f"{s}_hi"] - sub[f"{s}_lo"]
        assert sub_width == pytest.approx(width, rel=0.35), (
            s
        )  # rescaled to the full sample's width, not the subsample's


def test_user_errors_exit_2_with_one_line(evaluated, tmp_path):
    corpus_dir, scores = evaluated["corpus"], evaluated["scores"]
    (tmp_path / "empty" / "sessions").mkdir(parents=True)
    _write_scores(tmp_path / "strangers", {d: {"x1": 3.0, "x2": 4.0} for d in DIMS})
    cases = {
        ("--scores", str(tmp_path / "nope")): "scores folder not found",
        ("--scores", str(tmp_path / "empty")): "no scores in",
        ("--scores", str(tmp_path / "strangers")): "is in the corpus",
        ("--truth", "labels.nosuch=bond"): "nosuch",
        ("--truth", "labels.empathy=warmth"): "not a dimension",
        ("--truth", "empathy"): "client_wai or labels.NAME",
        ("--truth", "client_wai", "--truth", "labels.empathy"): "cannot be combined",
        ("--folds", str(tmp_path), "--fold-key", "cohort"): "not both",
        ("--folds", str(tmp_path / "nofolds")): "no folds.parquet",
        ("--fold-key", "nosuchkey"): "nosuchkey",
    }
    for extra, message in cases.items():
        args = dict(zip(extra[::2], extra[1::2], strict=True))
        scores_dir = Path(args.pop("--scores", scores))
        rest = [
            x
            for pair in zip(extra[::2], extra[1::2], strict=True)
            if pair[0] != "--scores"
            for x in pair
        ]
        res = _evaluate(corpus_dir, scores_dir, tmp_path / "out", *rest)
        assert res.exit_code == 2, (extra, res.output)
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], (
            extra,
            res.output,
        )
    res = _evaluate(tmp_path / "no-corpus", scores, tmp_path / "out")
    assert (
        res.exit_code == 2 and "no sessions corpus" in res.output and "Traceback" not in res.output
    )


def test_esconv_empathy_as_bond_proxy(esconv_corpus, tmp_path):
    from care_ray.corpus.reader import sessions_dataset

    table = sessions_dataset(esconv_corpus).to_table(columns=["session_id", "labels"]).to_pylist()
    empathy = {r["session_id"]: dict(r["labels"] or {}).get("empathy") for r in table}
    rng = np.random.default_rng(42)
    sids = sorted(empathy)
    noise = rng.normal(0, 1.0, len(sids))
    bond = {
        sid: float(np.clip((e if e is not None else 3.0) + z, 1, 5))
        for sid, e, z in zip(sids, [empathy[s] for s in sids], noise, strict=True)
    }
    _write_scores(
        tmp_path / "scores",
        {"goal": {s: 3.0 for s in sids}, "task": {s: 3.0 for s in sids}, "bond": bond},
    )
    res = _evaluate(
        esconv_corpus,
        tmp_path / "scores",
        tmp_path / "out",
        "--truth",
        "labels.empathy=bond",
        "--resamples",
        "200",
    )
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    keys = [s for s in sids if empathy[s] is not None]
    p, t = np.array([bond[s] for s in keys]), np.array([empathy[s] for s in keys])
    assert (
        list(metrics["dimensions"]) == ["bond"]
        and metrics["dimensions"]["bond"]["n"] == len(keys) > 1000
    )
    assert metrics["dimensions"]["bond"]["pearson"] == pytest.approx(stats.pearsonr(p, t).statistic)
    assert metrics["dimensions"]["bond"]["spearman"] == pytest.approx(
        stats.spearmanr(p, t).statistic
    )
    assert metrics["counselor_baseline"] is None and metrics["model_vs_counselor"] == {"bond": None}
    lo, hi = metrics["dimensions"]["bond"]["pearson_ci"]
    assert lo < metrics["dimensions"]["bond"]["pearson"] < hi
    assert ET.parse(tmp_path / "out" / "calibration.svg").getroot().tag.endswith("svg")
    no_wai = _evaluate(
        esconv_corpus, tmp_path / "scores", tmp_path / "wai"
    )  # ESConv has no client_wai
    assert (
        no_wai.exit_code == 2
        and len(no_wai.output.strip().splitlines()) == 1
        and "--truth labels." in no_wai.output
    )


# ---- side by side: several scorers against the same truth ----


def _planted(sessions: list[dict], noise: float, seed: int) -> dict[str, dict[str, float]]:
    """Predictions = the truth plus N(0, noise), on the 1–5 scale."""
    rng = np.random.default_rng(seed)
    out = {}
    for d, by_session in _truth(sessions).items():
        out[d] = {
            sid: float(np.clip((3.0 if math.isnan(t) else t) + rng.normal(0, noise), 1, 5))
            for sid, t in by_session.items()
        }
    return out


def test_scorer_names_default_to_model_then_the_folder():
    named = parse_scorers(["runs/llm", "base=runs/tfidf", "/x/y/ridge/"])
    assert [(s.name, s.column) for s in named] == [
        ("model", "predicted"),
        ("base", "predicted_base"),
        ("ridge", "predicted_ridge"),
    ]
    assert parse_scorers(["s3://bucket/run"])[0].path == "s3://bucket/run"
    assert parse_scorers(["llm=s3://b/run"])[0].name == "llm"
    with pytest.raises(EvaluateError, match="given twice"):
        parse_scorers(["a/run", "x=a", "x=b"])
    with pytest.raises(EvaluateError, match="counselor"):
        parse_scorers(["a", "counselor=b"])


def test_two_scorers_side_by_side_on_common_sessions(corpus, tmp_path):
    corpus_dir, sessions = corpus
    good = _planted(sessions, 0.15, seed=1)
    bad = _planted(sessions, 3.0, seed=2)
    for d in DIMS:  # the baseline did not score two sessions: both are left out for everyone
        bad[d].pop("s01")
        bad[d].pop("s02")
        good[d].pop("s05")  # and the model did not score one the baseline did
    _write_scores(tmp_path / "good", good)
    _write_scores(tmp_path / "base", bad)
    (tmp_path / "base" / "manifest.json").write_text(
        json.dumps({"kind": "care-ray baseline scores"}), encoding="utf-8"
    )
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--scores",
            str(tmp_path / "good"),
            "--scores",
            f"baseline={tmp_path / 'base'}",
            "--sessions",
            str(corpus_dir),
            "--out",
            str(tmp_path / "out"),
            "--resamples",
            "400",
        ],
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    metrics = _strict_json(out / "metrics.json")
    assert [r["name"] for r in metrics["raters"]] == ["model", "baseline"]
    assert metrics["raters"][1]["kind"] == "care-ray baseline scores"
    truth = _truth(sessions)
    agreement = pq.read_table(out / "agreement.parquet").to_pandas()
    overall = agreement[agreement["fold"].isna()]
    assert set(overall["rater"]) == {"model", "baseline", "counselor"}
    for d in DIMS:
        keys = [k for k in bad[d] if k in good[d]]
        want_good, want_bad = _expected(good[d], truth[d], keys), _expected(bad[d], truth[d], keys)
        row = overall[(overall["rater"] == "model") & (overall["dimension"] == d)].iloc[0]
        assert row["n"] == want_good["n"] and row["pearson"] == pytest.approx(want_good["pearson"])
        row = overall[(overall["rater"] == "baseline") & (overall["dimension"] == d)].iloc[0]
        assert row["n"] == want_bad["n"] and row["pearson"] == pytest.approx(want_bad["pearson"])
        # s01/s02/s05 have a truth in every dimension: the model lost two, the baseline one
        assert metrics["common_sessions"]["dropped"]["model"][d] == 2
        assert metrics["common_sessions"]["dropped"]["baseline"][d] == 1
    comparisons = pq.read_table(out / "comparisons.parquet").to_pandas()
    assert list(comparisons.columns[:9]) == [
        "rater_a",
        "rater_b",
        "dimension",
        "n",
        "pearson_a",
        "pearson_b",
        "difference",
        "difference_lo",
        "difference_hi",
    ]
    for r in comparisons.itertuples():
        assert (r.rater_a, r.rater_b) == ("model", "baseline")
        assert r.difference == pytest.approx(r.pearson_a - r.pearson_b)
        assert 0 < r.difference_lo <= r.difference <= r.difference_hi  # a large planted gap
        assert r.mse_difference_hi < 0  # the good scorer's errors are smaller
    summary = metrics["comparisons"]
    assert {c["better_pearson"] for c in summary} == {"model"}


def test_identical_scorers_do_not_differ(corpus, tmp_path):
    corpus_dir, sessions = corpus
    same = _planted(sessions, 0.8, seed=5)
    _write_scores(tmp_path / "a", same)
    _write_scores(tmp_path / "b", same)
    res = _evaluate(corpus_dir, tmp_path / "a", tmp_path / "out", "--scores", str(tmp_path / "b"))
    assert res.exit_code == 0, res.output
    comparisons = pq.read_table(tmp_path / "out" / "comparisons.parquet").to_pandas()
    assert set(comparisons["rater_b"]) == {"b"}
    for r in comparisons.itertuples():
        assert r.difference_lo <= 0 <= r.difference_hi
        assert r.mse_difference_lo <= 0 <= r.mse_difference_hi
    assert {
        c["better_pearson"] for c in _strict_json(tmp_path / "out" / "metrics.json")["comparisons"]
    } == {None}


def test_paired_difference_interval_matches_a_numpy_bootstrap():
    rng = np.random.default_rng(4)
    n = 400
    t = rng.uniform(1, 5, n)
    a, b = t + rng.normal(0, 0.7, n), t + rng.normal(0, 1.2, n)
    got = compare_raters(a, b, t, resamples=2000, seed=3)
    diffs, mses = [], []
    boot = np.random.default_rng(99)
    for _ in range(2000):
        i = boot.integers(0, n, n)  # the same sessions for both raters: paired
        diffs.append(np.corrcoef(a[i], t[i])[0, 1] - np.corrcoef(b[i], t[i])[0, 1])
        mses.append(np.mean((a[i] - t[i]) ** 2) - np.mean((b[i] - t[i]) ** 2))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert got["difference"] == pytest.approx(np.corrcoef(a, t)[0, 1] - np.corrcoef(b, t)[0, 1])
    assert got["difference_lo"] == pytest.approx(lo, abs=0.015)
    assert got["difference_hi"] == pytest.approx(hi, abs=0.015)
    mlo, mhi = np.percentile(mses, [2.5, 97.5])
    assert got["mse_difference_lo"] == pytest.approx(mlo, abs=0.04)
    assert got["mse_difference_hi"] == pytest.approx(mhi, abs=0.04)


def test_small_n_correlation_interval_survives_constant_resamples():
    """At n = 14 with coarse scores some resamples are constant (r undefined); scipy's percentile
    interval is then NaN for r while MSE keeps one. The interval is taken over the finite resamples
    and the degenerate ones are counted."""
    t = np.array([3, 4, 4, 5, 3, 4, 2, 5, 4, 3, 4, 5, 4, 3], dtype=float)
    p = np.array([4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5, 4, 4], dtype=float)
    got = bootstrap_agreement(p, t, resamples=1000, seed=0)
    assert got["ci_degenerate"] > 0
    assert got["pearson_lo"] <= got["pearson"] <= got["pearson_hi"]
    assert math.isfinite(got["spearman_lo"]) and math.isfinite(got["mse_lo"])
    tiny = bootstrap_agreement(p[:2], t[:2], resamples=100)
    assert math.isnan(tiny["pearson_lo"]) and tiny["n"] == 2


# ---- scale checks: do the item ratings behave like the WAI scale? ----


def test_scale_checks_for_predicted_items_and_client_ratings(tmp_path):
    """Clients' ratings with three planted factors; predicted items that are one number per
    session plus a little noise: the predicted source is called a blob, the clients' is not."""
    rng = np.random.default_rng(2)
    n = 60
    factors = rng.multivariate_normal(np.zeros(3), [[1, 0.4, 0.3], [0.4, 1, 0.3], [0.3, 0.3, 1]], n)
    sessions, rows = [], []
    for s in range(n):
        client = [None] * 12
        for k, d in enumerate(DIMS):
            for i in ITEMS[d]:
                client[i - 1] = int(np.clip(np.rint(3 + factors[s, k] + rng.normal(0, 0.5)), 1, 5))
        session = _session(s, rng)
        session.update({"session_id": f"s{s:02d}", "client_wai": client, "counselor_wai": None})
        sessions.append(session)
        level = 3 + factors[s].mean()
        for d in DIMS:
            for i in ITEMS[d]:
                rows.append(
                    {
                        "session_id": f"s{s:02d}",
                        "item_id": i,
                        "dimension": d,
                        "score": float(level + rng.normal(0, 0.02)),
                    }
                )
    jsonl = tmp_path / "sessions.jsonl"
    jsonl.write_text("".join(json.dumps(s) + "\n" for s in sessions), encoding="utf-8")
    assert ingest_files("sessions-jsonl", [jsonl], tmp_path / "corpus")["sessions_written"] == n
    (tmp_path / "scores" / "items").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "scores" / "items" / "part-0.parquet")
    means = {d: {} for d in DIMS}
    for r in rows:
        means[r["dimension"]].setdefault(r["session_id"], []).append(r["score"])
    _write_scores(
        tmp_path / "scores", {d: {k: float(np.mean(v)) for k, v in means[d].items()} for d in DIMS}
    )
    res = _evaluate(
        tmp_path / "corpus",
        tmp_path / "scores",
        tmp_path / "out",
        "--resamples",
        "0",
        "--scale-resamples",
        "20",
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    summary = _strict_json(out / "metrics.json")["scale"]
    assert summary["predicted"]["verdict"]["blob"] is True
    assert summary["client"]["verdict"]["blob"] is False
    assert summary["client"]["n_complete"] == n
    table = pq.read_table(out / "scale.parquet").to_pandas()
    assert set(table["source"]) == {"predicted", "client"} and len(table) == 6
    client = table[(table["source"] == "client") & (table["dimension"] == "bond")].iloc[0]
    block = np.array([[s["client_wai"][i - 1] for i in ITEMS["bond"]] for s in sessions])
    k = block.shape[1]
    alpha = k / (k - 1) * (1 - block.var(axis=0, ddof=1).sum() / block.sum(axis=1).var(ddof=1))
    assert client["alpha"] == pytest.approx(alpha)
    models = pq.read_table(out / "factor_models.parquet").to_pandas()
    assert set(models["model"]) == {"one", "two", "three"}
    fits = models[models["source"] == "client"].set_index("model")
    assert fits.loc["three", "cfi"] > fits.loc["one", "cfi"]
    assert (out / "item_rest.parquet").exists() and (
        out / "dimension_correlations.parquet"
    ).exists()


def test_scale_checks_skip_without_items_or_enough_sessions(evaluated):
    summary = _strict_json(evaluated["out"] / "metrics.json")["scale"]
    assert "no item scores" in summary["predicted"]["skipped"]
    assert "at least 30" in summary["client"]["skipped"]
    assert not (evaluated["out"] / "scale.parquet").exists()


def test_expected_scores_are_evaluated_beside_the_decoded_ones(corpus, tmp_path):
    """A run whose sessions carry `<dim>_expected` is two scorers: model (decoded) and
    model_expected, compared on the same sessions with the paired interval of their difference;
    --no-expected evaluates the decoded scores alone."""
    corpus_dir, sessions = corpus
    greedy, expected = _planted(sessions, 3.0, seed=2), _planted(sessions, 0.15, seed=1)
    folder = _write_scores(tmp_path / "run", greedy)
    table = pq.read_table(folder / "sessions" / "part-0.parquet")
    sids = table.column("session_id").to_pylist()
    for d in DIMS:
        table = table.append_column(
            f"{d}_expected", pa.array([expected[d].get(s, 2.5) for s in sids], pa.float64())
        )
    pq.write_table(table, folder / "sessions" / "part-0.parquet")
    # the items' spread (SD of the score token's distribution) grows with the expected score's miss
    truth = _truth(sessions)
    miss = {
        (s, d): abs(expected[d][s] - truth[d][s])
        for d in DIMS
        for s in sids
        if s in expected[d] and not math.isnan(truth[d].get(s, math.nan))
    }
    (folder / "items").mkdir()
    pq.write_table(
        pa.table(
            {
                "session_id": [s for s, _ in miss for _ in range(2)],
                "dimension": [d for _, d in miss for _ in range(2)],
                "score_sd": [0.05 + m + k * 0.01 for m in miss.values() for k in range(2)],
            }
        ),
        folder / "items" / "part-0.parquet",
    )
    res = _evaluate(corpus_dir, folder, tmp_path / "out", "--resamples", "400")
    assert res.exit_code == 0, res.output
    metrics = _strict_json(tmp_path / "out" / "metrics.json")
    assert [(r["name"], r["score"]) for r in metrics["raters"]] == [
        ("model", "greedy"),
        ("model_expected", "expected"),
    ]
    pairs = pq.read_table(tmp_path / "out" / "pairs.parquet").to_pandas()
    # calibration of the expected scores: their own bins, and a fitted line per rater
    bins = pq.read_table(tmp_path / "out" / "calibration_expected.parquet").to_pandas()
    for d in DIMS:
        mine = pairs[pairs["dimension"] == d]
        assert bins[bins["dimension"] == d]["n"].sum() == len(mine)
        fit = stats.linregress(mine["predicted_model_expected"], mine["observed"])
        got = metrics["calibration"]["fit"]["model_expected"][d]
        assert got["slope"] == pytest.approx(fit.slope) and got["n"] == len(mine)
        assert got["slope_lo"] < got["slope"] < got["slope_hi"]
    # error by spread decile: ten equal groups, the widest ones miss most
    spread = pq.read_table(tmp_path / "out" / "spread.parquet").to_pandas()
    for d in DIMS:
        rows = spread[spread["dimension"] == d].sort_values("decile")
        mine = pairs[pairs["dimension"] == d]
        assert list(rows["decile"]) == list(range(1, 11)) and rows["n"].sum() == len(mine)
        assert rows["n"].max() - rows["n"].min() <= 1
        errors = list(rows["abs_error_expected"])
        assert errors == sorted(errors)  # spread is the miss, plus a constant
        summary = metrics["spread"]["by_dimension"][d]
        spread_of = {k: 0.055 + m for k, m in miss.items()}
        rho = stats.spearmanr(
            [spread_of[(s, d)] for s in mine["session_id"]],
            (mine["predicted_model_expected"] - mine["observed"]).abs(),
        )
        assert summary["spearman"] == pytest.approx(rho.statistic) and summary["spearman"] > 0.99
        assert summary["top_over_bottom"] > 1
    agreement = pq.read_table(tmp_path / "out" / "agreement.parquet").to_pandas()
    overall = agreement[agreement["fold"].isna()]
    for d in DIMS:
        row = overall[(overall["rater"] == "model_expected") & (overall["dimension"] == d)].iloc[0]
        want = _expected(expected[d], truth[d])
        assert row["pearson"] == pytest.approx(want["pearson"])
    comparisons = pq.read_table(tmp_path / "out" / "comparisons.parquet").to_pandas()
    assert {(r.rater_a, r.rater_b) for r in comparisons.itertuples()} == {
        ("model", "model_expected")
    }
    assert all(r.difference_hi < 0 for r in comparisons.itertuples())  # expected is far better
    res = _evaluate(corpus_dir, folder, tmp_path / "out2", "--no-expected")
    assert res.exit_code == 0, res.output
    assert [r["name"] for r in _strict_json(tmp_path / "out2" / "metrics.json")["raters"]] == [
        "model"
    ]
