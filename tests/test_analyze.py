"""`care-ray analyze` on a small synthetic corpus whose every figure is recomputed here by hand:
features and transitions from the session dicts, empirical-Bayes pooling with numpy, population and
trajectories with numpy, and each queries/*.sql run alone in a plain DuckDB connection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.stats.contingency import association
from statsmodels.stats.proportion import proportion_confint
from typer.testing import CliRunner

from care_ray.analytics.analyze import AnalysisError, AnalyzeConfig, analyze
from care_ray.analytics.features import compute_features, driver_features, load_vocabulary
from care_ray.analytics.timeline import TIMELINE_TABLES
from care_ray.cli import app
from care_ray.common.paths import queries_dir

ITEM_DIMENSION = {
    4: "goal",
    6: "goal",
    8: "goal",
    11: "goal",
    1: "task",
    2: "task",
    10: "task",
    12: "task",
    3: "bond",
    5: "bond",
    7: "bond",
    9: "bond",
}
DIMENSIONS = ("goal", "task", "bond")
# counselor → (number of clients, sessions per client, shift of the counselor's scores)
COUNSELORS = {
    "c1": (6, 2, 0.8),
    "c2": (4, 2, 0.0),
    "c3": (3, 3, 0.1),
    "c4": (4, 2, -0.1),
    "c5": (4, 2, 0.2),
    "c6": (4, 2, -0.2),
    "c7": (4, 2, 0.0),
    "c8": (4, 2, 0.15),
    "c9": (4, 2, -0.15),
    "c10": (4, 2, 0.05),
    "c11": (4, 2, -0.05),
    "c12": (4, 2, 0.0),
    "lucky": (1, 2, None),  # two sessions, both better than any other counselor's mean
}
STRATEGIES = {
    "alpha": ["Question", "Reflection", "Suggestion"],
    "beta": ["Questions", "Reflection", "Suggestion"],
}
NOISE = 0.9
LUCKY = 4.5
REACTIONS = ["positive", "negative", "neutral"]
LOW_WORDS = {
    "goal": "goals never concrete vague aims",
    "task": "activities mismatch homework pointless",
    "bond": "cold mechanical dismissive tone",
}
EN_WORDS = [
    "I",
    "feel",
    "tired",
    "today",
    "and",
    "work",
    "is",
    "hard",
    "maybe",
    "we",
    "can",
    "talk",
]
ZH_TEXT = ["我最近很累", "工作压力 很大", "你觉得呢？", "我们 可以谈谈", "谢谢你"]


def _text(rng: np.random.Generator, language: str, question: bool) -> str:
    if language == "zh":
        text = "".join(rng.choice(ZH_TEXT, size=int(rng.integers(1, 3))))
        return text.replace("？", "") + ("？" if question else "。")
    words = " ".join(rng.choice(EN_WORDS, size=int(rng.integers(2, 9))))
    return words + ("?" if question else ".")


def _turns(rng: np.random.Generator, source: str, language: str) -> list[dict]:
    turns = []
    for _ in range(int(rng.integers(4, 10))):
        for _ in range(int(rng.integers(1, 3))):  # the counselor sometimes speaks twice in a row
            turn = {"role": "counselor", "text": _text(rng, language, rng.random() < 0.4)}
            if rng.random() < 0.85:
                turn["strategy"] = str(rng.choice(STRATEGIES[source]))
            turns.append(turn)
        turn = {"role": "client", "text": _text(rng, language, rng.random() < 0.1)}
        if rng.random() < 0.8:
            turn["reaction"] = str(rng.choice(REACTIONS))
        turns.append(turn)
    return turns


def make_corpus(seed: int = 8) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Session dicts (sessions-jsonl) and each session's true goal/task/bond."""
    rng = np.random.default_rng(seed)
    sessions, scores = [], {}
    for counselor, (n_clients, per_client, shift) in COUNSELORS.items():
        for c in range(n_clients):
            source = "alpha" if (c + len(counselor)) % 2 else "beta"
            language = "en" if source == "alpha" else "zh"
            client = f"{counselor}-client{c}"
            for index in range(1, per_client + 1):
                sid = f"{client}-s{index}"
                sessions.append(
                    {
                        "session_id": sid,
                        "client_id": client,
                        "counselor_id": counselor,
                        "session_index": index,
                        "started_at": f"2024-0{index}-1{c}T10:00:00Z",
                        "language": language,
                        "source": source,
                        "turns": _turns(rng, source, language),
                        "labels": {
                            "satisfaction": float(rng.integers(1, 6)),
                            "before": float(rng.integers(1, 6)),
                            "after": float(rng.integers(1, 6)),
                        },
                        "metadata": {"site": "north" if index % 2 else "south"},
                    }
                )
                if shift is None:  # two perfect sessions: the top raw mean, by luck
                    scores[sid] = dict.fromkeys(DIMENSIONS, LUCKY)
                else:
                    scores[sid] = {
                        d: float(
                            np.clip(
                                np.round((3.2 + shift + 0.2 * index + rng.normal(0, NOISE)) * 4)
                                / 4,
                                1,
                                5,
                            )
                        )
                        for d in DIMENSIONS
                    }
    return sessions, scores


def _items(scores: dict[str, dict[str, float]]) -> pl.DataFrame:
    rows = []
    for sid, dims in scores.items():
        for item, dim in ITEM_DIMENSION.items():
            score = float(round(dims[dim]))
            low = score <= 2
            rows.append(
                {
                    "session_id": sid,
                    "item_id": item,
                    "dimension": dim,
                    "score": score,
                    "scores": [int(score)],
                    "rationale": f"The counselor {LOW_WORDS[dim]} so I rated it low"
                    if low
                    else "It went fine overall and I felt heard",
                    "quotes": ["we can talk"],
                    "quote_found": 1.0,
                    "model": "synthetic",
                    "adapter": None,
                    "rubric_id": "wai-sr-en",
                    "n_items_selected": 12,
                    "truncated": False,
                }
            )
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from care_ray.corpus.ingest import ingest_files

    root = tmp_path_factory.mktemp("analyze")
    sessions, scores = make_corpus()
    jsonl = root / "sessions.jsonl"
    jsonl.write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sessions), encoding="utf-8"
    )
    manifest = ingest_files("sessions-jsonl", [jsonl], root / "corpus")
    assert manifest["sessions_written"] == len(sessions)
    run = root / "scores"
    (run / "sessions").mkdir(parents=True)
    (run / "items").mkdir()
    pl.DataFrame([{"session_id": sid, **dims} for sid, dims in scores.items()]).write_parquet(
        run / "sessions" / "part-0.parquet"
    )
    _items(scores).write_parquet(run / "items" / "part-0.parquet")
    out = root / "analysis"
    cfg = AnalyzeConfig(
        sessions=root / "corpus",
        scores=run,
        out=out,
        by=["metadata.site"],
        min_sessions=2,
        low_threshold=2.5,
    )
    manifest = analyze(cfg)
    return {
        "root": root,
        "sessions": sessions,
        "scores": scores,
        "out": out,
        "manifest": manifest,
        "corpus": root / "corpus",
        "run": run,
    }


def _read(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{name}.parquet")


# --- independent computations -------------------------------------------------------------------------


def expected_features(session: dict) -> dict:
    zh = session["language"] == "zh"
    words = lambda t: len("".join(t["text"].split())) if zh else len(t["text"].split())  # noqa: E731
    client = [t for t in session["turns"] if t["role"] == "client"]
    counselor = [t for t in session["turns"] if t["role"] == "counselor"]
    cw, kw = sum(map(words, client)), sum(map(words, counselor))
    strategies = [t["strategy"] for t in counselor if t.get("strategy")]
    reactions = [t["reaction"] for t in client if t.get("reaction")]
    out = {
        "n_turns": len(session["turns"]),
        "client_turns": len(client),
        "counselor_turns": len(counselor),
        "client_words": cw,
        "counselor_words": kw,
        "counselor_talk_share": kw / (cw + kw),
        "counselor_question_rate": sum(("?" in t["text"]) or ("？" in t["text"]) for t in counselor)
        / len(counselor),
    }
    out.update({f"strategy:{s}": strategies.count(s) / len(strategies) for s in set(strategies)})
    out.update({f"reaction:{r}": reactions.count(r) / len(reactions) for r in set(reactions)})
    return out


def expected_pairs(session: dict) -> list[tuple[str, str]]:
    """(strategy, reaction of the first client turn after it) for each labelled counselor turn."""
    turns, pairs = session["turns"], []
    for i, turn in enumerate(turns):
        if turn["role"] != "counselor" or not turn.get("strategy"):
            continue
        nxt = next((t for t in turns[i + 1 :] if t["role"] == "client"), None)
        if nxt is not None and nxt.get("reaction"):
            pairs.append((turn["strategy"], nxt["reaction"]))
    return pairs


def eb_pooled(
    values_by_counselor: dict[str, list[float]], min_sessions: int, z: float = 1.959964
) -> dict[str, tuple[float, float, float]]:
    """Method-of-moments empirical Bayes (Morris 1983), written out with numpy."""
    n = {c: len(v) for c, v in values_by_counselor.items()}
    m = {c: float(np.mean(v)) for c, v in values_by_counselor.items()}
    sigma2 = sum(
        (n[c] - 1) * np.var(v, ddof=1) for c, v in values_by_counselor.items() if n[c] > 1
    ) / sum(n[c] - 1 for c in n if n[c] > 1)
    tau2 = max(
        0.0, float(np.var(list(m.values()), ddof=1)) - float(np.mean([sigma2 / n[c] for c in n]))
    )
    w = {c: 1 / (tau2 + sigma2 / n[c]) for c in n}
    mu = sum(w[c] * m[c] for c in n) / sum(w.values())
    mu_var = 1 / sum(w.values())
    out = {}
    for c in n:
        if n[c] < min_sessions:
            continue
        b = tau2 / (tau2 + sigma2 / n[c])
        pooled = mu + b * (m[c] - mu)
        se = math.sqrt(b * sigma2 / n[c] + (1 - b) ** 2 * mu_var)
        out[c] = (pooled, pooled - z * se, pooled + z * se)
    return out


# --- tests --------------------------------------------------------------------------------------------


def test_manifest_lists_every_table_written(synthetic):
    manifest, out = synthetic["manifest"], synthetic["out"]
    assert manifest["kind"] == "care-ray analysis" and manifest["mode"] == "scores"
    assert manifest["outcomes"] == list(DIMENSIONS)
    assert manifest["n_sessions"] == len(synthetic["sessions"])
    on_disk = {p.stem for p in out.glob("*.parquet")}
    assert on_disk == set(manifest["tables"])
    for name, n_rows in manifest["tables"].items():
        assert _read(out, name).height == n_rows
    expected = {
        "population",
        "counselor_profiles",
        "features",
        "transitions",
        "drivers",
        "contrasts",
        "challenge_terms",
        "challenge_clusters",
        "trajectories",
        "trajectory_summary",
        "trajectory_clients",
        "transition_tests",
        "weakest_outcome",
        "outcome_links",
    }
    assert expected <= on_disk, manifest["notes"]
    # every table written but the timeline's: these turns carry no ratings
    assert set(manifest["left_out"]) == {*TIMELINE_TABLES, "timeline_links"}
    assert all("rated turns" in why for why in manifest["left_out"].values())
    assert manifest["alpha"] == 0.05  # the level of every interval in the tables
    json.loads((out / "manifest.json").read_text())


def test_features_match_a_per_session_recount(synthetic):
    features = _read(synthetic["out"], "features")
    by_id = {row["session_id"]: row for row in features.iter_rows(named=True)}
    for session in synthetic["sessions"]:
        row = by_id[session["session_id"]]
        for name, value in expected_features(session).items():
            assert row[name] == pytest.approx(value), (session["session_id"], name)
        # a label of the other source's vocabulary is null here, one of its own is 0 when unused
        other = "Questions" if session["source"] == "alpha" else "Question"
        assert row[f"strategy:{other}"] is None
        own = "Question" if session["source"] == "alpha" else "Questions"
        assert row[f"strategy:{own}"] is not None
        for dim in DIMENSIONS:
            assert row[dim] == synthetic["scores"][session["session_id"]][dim]


def test_transition_shares_match_a_recount(synthetic):
    transitions = _read(synthetic["out"], "transitions")
    counts: dict[tuple[str, str, str], int] = {}
    for session in synthetic["sessions"]:
        for strategy, reaction in expected_pairs(session):
            key = (session["source"], strategy, reaction)
            counts[key] = counts.get(key, 0) + 1
    assert transitions.height == len(counts)
    for row in transitions.iter_rows(named=True):
        key = (row["source"], row["strategy"], row["reaction"])
        total = sum(n for (src, strat, _), n in counts.items() if (src, strat) == key[:2])
        assert row["n"] == counts[key]
        assert row["share"] == pytest.approx(counts[key] / total)


def _t_interval(values, alpha: float = 0.05) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    return stats.ttest_1samp(values, 0).confidence_interval(1 - alpha)


def test_transition_intervals_residuals_and_tests_match_scipy(synthetic):
    out = synthetic["out"]
    transitions, tests = _read(out, "transitions"), _read(out, "transition_tests")
    counts: dict[str, dict[tuple[str, str], int]] = {}
    for session in synthetic["sessions"]:
        for pair in expected_pairs(session):
            cell = counts.setdefault(session["source"], {})
            cell[pair] = cell.get(pair, 0) + 1
    assert set(tests.get_column("source")) == set(counts)
    for source, cells in counts.items():
        strategies = sorted({s for s, _ in cells})
        reactions = sorted({r for _, r in cells})
        table = np.array([[cells.get((s, r), 0) for r in reactions] for s in strategies])
        chi2, p, dof, expected = stats.chi2_contingency(table)
        row = tests.filter(pl.col("source") == source).row(0, named=True)
        assert row["n"] == table.sum() and row["dof"] == dof
        assert (row["chi2"], row["p_value"]) == pytest.approx((chi2, p))
        assert row["cramers_v"] == pytest.approx(association(table, method="cramer"))
        written = transitions.filter(pl.col("source") == source)
        for r in written.iter_rows(named=True):
            i, j = strategies.index(r["strategy"]), reactions.index(r["reaction"])
            residual = (table[i, j] - expected[i, j]) / math.sqrt(expected[i, j])
            assert r["residual"] == pytest.approx(residual)
            lo, hi = proportion_confint(table[i, j], table[i].sum(), alpha=0.05, method="wilson")
            assert (r["share_lo"], r["share_hi"]) == pytest.approx((lo, hi))
            assert r["share_lo"] <= r["share"] <= r["share_hi"]


def test_population_means_carry_their_t_interval(synthetic):
    population = _read(synthetic["out"], "population")
    scores = synthetic["scores"]
    sites: dict[str, list[str]] = {}
    for s in synthetic["sessions"]:
        sites.setdefault(s["metadata"]["site"], []).append(s["session_id"])
    assert population.columns.index("mean_lo") == population.columns.index("mean") + 1
    for site, ids in sites.items():
        for dim in DIMENSIONS:
            row = population.filter(
                (pl.col("group_by") == "metadata.site")
                & (pl.col("grp") == site)
                & (pl.col("outcome") == dim)
            ).row(0, named=True)
            lo, hi = _t_interval([scores[sid][dim] for sid in ids])
            assert (row["mean_lo"], row["mean_hi"]) == pytest.approx((lo, hi))


def test_trajectory_clients_carry_intervals_over_clients(synthetic):
    clients = _read(synthetic["out"], "trajectory_clients")
    scores = synthetic["scores"]
    by_client: dict[str, list[dict]] = {}
    for s in synthetic["sessions"]:
        by_client.setdefault(s["client_id"], []).append(s)
    for dim in DIMENSIONS:
        slopes, rising = [], 0
        for ss in by_client.values():
            ss = sorted(ss, key=lambda s: s["session_index"])
            values = [scores[s["session_id"]][dim] for s in ss]
            slopes.append(np.polyfit([s["session_index"] for s in ss], values, 1)[0])
            rising += values[-1] > values[0]
        row = clients.filter(pl.col("outcome") == dim).row(0, named=True)
        lo, hi = _t_interval(slopes)
        assert (row["mean_slope_lo"], row["mean_slope_hi"]) == pytest.approx((lo, hi))
        lo, hi = proportion_confint(rising, len(by_client), alpha=0.05, method="wilson")
        assert (row["share_rising_lo"], row["share_rising_hi"]) == pytest.approx((lo, hi))


def test_weakest_outcome_is_tested_against_the_runner_up_on_paired_sessions(synthetic):
    row = _read(synthetic["out"], "weakest_outcome").row(0, named=True)
    scores = synthetic["scores"]
    means = {d: np.mean([s[d] for s in scores.values()]) for d in DIMENSIONS}
    weakest, runner_up = sorted(DIMENSIONS, key=means.__getitem__)[:2]
    difference = np.array([s[weakest] - s[runner_up] for s in scores.values()])
    result = stats.wilcoxon(difference)
    assert (row["outcome"], row["runner_up"], row["n"]) == (weakest, runner_up, len(scores))
    assert row["test"] == "wilcoxon_signed_rank"
    assert row["mean_difference"] == pytest.approx(difference.mean())
    assert (row["statistic"], row["p_value"]) == pytest.approx((result.statistic, result.pvalue))


def test_vocabulary_map_merges_spellings(synthetic, tmp_path):
    plain = compute_features(synthetic["corpus"])
    assert plain.label_sources["strategy"]["Question"] == ["alpha"]
    features, notes = driver_features(plain, min_sessions=1)
    assert "strategy:Question" not in features and "strategy:Questions" not in features
    assert any("Question" in n and "not used by every source" in n for n in notes)
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("strategy:\n  Questions: Question\n", encoding="utf-8")
    mapped = compute_features(synthetic["corpus"], load_vocabulary(vocab))
    assert "strategy:Questions" not in mapped.sessions.columns
    assert mapped.sessions.get_column("strategy:Question").null_count() == 0
    mapped_features, _ = driver_features(mapped, min_sessions=1)
    assert any(f.startswith("strategy:") for f in mapped_features)


def test_population_matches_numpy(synthetic):
    population = _read(synthetic["out"], "population")
    sessions, scores = synthetic["sessions"], synthetic["scores"]
    groups = {("all", "all"): [s["session_id"] for s in sessions]}
    for s in sessions:
        groups.setdefault(("source", s["source"]), []).append(s["session_id"])
        groups.setdefault(("metadata.site", s["metadata"]["site"]), []).append(s["session_id"])
    assert population.height == len(groups) * len(DIMENSIONS)
    for row in population.iter_rows(named=True):
        values = np.array(
            [scores[sid][row["outcome"]] for sid in groups[(row["group_by"], row["grp"])]]
        )
        assert row["n"] == len(values)
        assert row["mean"] == pytest.approx(values.mean())
        assert row["sd"] == pytest.approx(values.std(ddof=1))
        assert row["median"] == pytest.approx(np.median(values))
        assert row["q25"] == pytest.approx(np.quantile(values, 0.25))
        assert row["low_share"] == pytest.approx(np.mean(values <= 2.5))
    for _key, frame in population.group_by("group_by", "grp"):
        weakest = frame.filter(pl.col("is_weakest")).get_column("outcome").to_list()
        assert weakest == [frame.sort("mean").get_column("outcome")[0]]


def test_counselor_profiles_shrink_a_lucky_counselor(synthetic):
    profiles = _read(synthetic["out"], "counselor_profiles")
    sessions, scores = synthetic["sessions"], synthetic["scores"]
    for dim in DIMENSIONS:
        values: dict[str, list[float]] = {}
        for s in sessions:
            values.setdefault(s["counselor_id"], []).append(scores[s["session_id"]][dim])
        expected = eb_pooled(values, min_sessions=2)
        table = profiles.filter(pl.col("outcome") == dim)
        assert set(table.get_column("counselor_id")) == set(expected)
        for row in table.iter_rows(named=True):
            pooled, lo, hi = expected[row["counselor_id"]]
            assert row["raw_mean"] == pytest.approx(np.mean(values[row["counselor_id"]]))
            assert row["pooled_mean"] == pytest.approx(pooled)
            assert (row["pooled_lo"], row["pooled_hi"]) == pytest.approx((lo, hi))
        lucky = table.filter(pl.col("counselor_id") == "lucky").row(0, named=True)
        assert lucky["raw_mean"] == table.get_column("raw_mean").max() == LUCKY
        assert lucky["pooled_mean"] < lucky["raw_mean"]
        assert lucky["rank"] > 1
        assert table.filter(pl.col("rank") == 1).get_column("counselor_id").item() == "c1"
    weakest = profiles.filter(pl.col("is_weakest")).group_by("counselor_id").len()
    assert weakest.get_column("len").to_list() == [1] * weakest.height


def test_trajectories_share_rising(synthetic):
    out = synthetic["out"]
    trajectories, clients = _read(out, "trajectories"), _read(out, "trajectory_clients")
    summary = _read(out, "trajectory_summary")
    sessions, scores = synthetic["sessions"], synthetic["scores"]
    by_client: dict[str, list[dict]] = {}
    for s in sessions:
        by_client.setdefault(s["client_id"], []).append(s)
    for dim in DIMENSIONS:
        firsts_lasts = {
            c: (
                scores[min(ss, key=lambda s: s["session_index"])["session_id"]][dim],
                scores[max(ss, key=lambda s: s["session_index"])["session_id"]][dim],
            )
            for c, ss in by_client.items()
        }
        rising = np.mean([last > first for first, last in firsts_lasts.values()])
        row = clients.filter(pl.col("outcome") == dim).row(0, named=True)
        assert row["n_clients"] == len(by_client)
        assert row["share_rising"] == pytest.approx(rising)
        slopes = {
            c: np.polyfit(
                [s["session_index"] for s in ss], [scores[s["session_id"]][dim] for s in ss], 1
            )[0]
            for c, ss in by_client.items()
        }
        table = trajectories.filter(pl.col("outcome") == dim)
        for r in table.iter_rows(named=True):
            assert r["slope"] == pytest.approx(slopes[r["client_id"]])
            assert (r["first"], r["last"]) == firsts_lasts[r["client_id"]]
        assert row["mean_slope"] == pytest.approx(np.mean(list(slopes.values())))
        at_1 = summary.filter((pl.col("outcome") == dim) & (pl.col("session_index") == 1)).row(
            0, named=True
        )
        assert at_1["n"] == len(by_client)


def test_drivers_and_contrasts_cover_outcomes(synthetic):
    out = synthetic["out"]
    drivers, contrasts = _read(out, "drivers"), _read(out, "contrasts")
    assert set(drivers.get_column("outcome")) == set(DIMENSIONS)
    assert not any(
        f in ("strategy:Question", "strategy:Questions") for f in drivers.get_column("feature")
    )
    assert drivers.get_column("model").str.starts_with("mixedlm:counselor_id").all()
    assert {"source", "metadata.site"} <= set(contrasts.get_column("by"))
    site = contrasts.filter((pl.col("by") == "metadata.site") & (pl.col("variable") == "goal"))
    for row in site.iter_rows(named=True):
        values = [
            synthetic["scores"][s["session_id"]]["goal"]
            for s in synthetic["sessions"]
            if s["metadata"]["site"] == row["grp"]
        ]
        if row["n"] == len(values):
            assert row["mean"] == pytest.approx(np.mean(values))


def test_challenges_name_each_dimensions_own_words(synthetic):
    out = synthetic["out"]
    terms = _read(out, "challenge_terms")
    for dim, words in LOW_WORDS.items():
        top = (
            terms.filter(pl.col("dimension") == dim)
            .sort("z", descending=True)
            .head(5)
            .get_column("term")
            .to_list()
        )
        assert set(top) & set(words.split()), (dim, top)
    clusters = _read(out, "challenge_clusters")
    assert set(clusters.get_column("dimension")) <= set(DIMENSIONS)


def test_model_free_mode_with_a_derived_outcome(synthetic, tmp_path):
    out = tmp_path / "labels"
    manifest = analyze(
        AnalyzeConfig(
            sessions=synthetic["corpus"],
            out=out,
            outcomes=["satisfaction", "change=labels.before-labels.after"],
            by=["worse=labels.after:1,2"],
        )
    )
    assert manifest["mode"] == "labels" and manifest["outcomes"] == ["satisfaction", "change"]
    features = _read(out, "features")
    by_id = {s["session_id"]: s["labels"] for s in synthetic["sessions"]}
    for row in features.iter_rows(named=True):
        assert (
            row["change"] == by_id[row["session_id"]]["before"] - by_id[row["session_id"]]["after"]
        )
    population = _read(out, "population").filter(pl.col("group_by") == "worse")
    assert set(population.get_column("grp")) == {"1,2", "other"}
    n_worse = sum(labels["after"] <= 2 for labels in by_id.values())
    assert (
        population.filter((pl.col("grp") == "1,2") & (pl.col("outcome") == "change"))
        .get_column("n")
        .item()
        == n_worse
    )
    assert "challenge_terms" not in manifest["tables"]
    assert any("challenge" in note for note in manifest["notes"])
    # labels need not share a scale: no outcome is tested as the weakest
    assert "weakest_outcome" not in manifest["tables"]
    assert any(note.startswith("weakest_outcome: absent") for note in manifest["notes"])


def test_scores_from_items_alone(synthetic, tmp_path):
    run = tmp_path / "run"
    (run / "items").mkdir(parents=True)
    _items(synthetic["scores"]).write_parquet(run / "items" / "part-0.parquet")
    manifest = analyze(
        AnalyzeConfig(
            sessions=synthetic["corpus"], scores=run, out=tmp_path / "an", outcomes=["bond"]
        )
    )
    features = _read(tmp_path / "an", "features")
    for row in features.iter_rows(named=True):
        assert row["bond"] == pytest.approx(
            float(round(synthetic["scores"][row["session_id"]]["bond"]))
        )
    assert manifest["outcomes"] == ["bond"]


def test_each_query_runs_alone_in_duckdb(synthetic):
    """Every queries/*.sql this analysis uses runs in a plain connection given its input views,
    and gives the table that `analyze` wrote."""
    out, corpus, run = synthetic["out"], synthetic["corpus"], synthetic["run"]
    sql = lambda name: (queries_dir() / f"{name}.sql").read_text(encoding="utf-8")  # noqa: E731
    con = duckdb.connect()
    con.execute(
        f"CREATE VIEW sessions AS SELECT * FROM read_parquet('{corpus}/sessions/**/*.parquet', "
        "hive_partitioning = true)"
    )
    con.execute(f"CREATE VIEW items AS SELECT * FROM read_parquet('{run}/items/*.parquet')")
    keys = con.sql(sql("analysis_keys")).pl()
    assert set(keys.get_column("key")) == {"satisfaction", "before", "after", "site"}
    assert con.sql(sql("analysis_sessions")).pl().height == len(synthetic["sessions"])
    con.execute(
        "CREATE TABLE wanted AS SELECT * FROM (VALUES ('labels', 'satisfaction'), ('metadata', 'site')) t(kind, key)"
    )
    assert con.sql(sql("analysis_values")).pl().height == 2 * len(synthetic["sessions"])
    con.execute(
        "CREATE VIEW session_outcomes AS UNPIVOT (SELECT session_id, client_id, counselor_id, "
        "session_index, NULL::TIMESTAMP AS started_at, goal, task, bond "
        f"FROM '{out}/features.parquet') ON goal, task, bond INTO NAME outcome VALUE value"
    )
    con.execute(
        "CREATE VIEW session_groups AS SELECT session_id, 'all' AS group_by, 'all' AS grp "
        f"FROM '{out}/features.parquet' "
        f"UNION ALL SELECT session_id, 'source', source FROM '{out}/features.parquet'"
    )
    con.execute("SET VARIABLE low_threshold = 2.5")
    con.execute("SET VARIABLE min_sessions = 2")
    population = con.sql(sql("population")).pl()
    written = _read(out, "population").filter(pl.col("group_by").is_in(["all", "source"]))
    # the written table adds the intervals (computed in Python) to the query's columns
    assert population.sort("group_by", "grp", "outcome").equals(
        written.sort("group_by", "grp", "outcome").select(population.columns)
    )
    profiles = con.sql(sql("counselor_profiles")).pl()
    written = _read(out, "counselor_profiles")
    assert profiles.sort("outcome", "counselor_id").get_column(
        "pooled_mean"
    ).to_list() == pytest.approx(
        written.sort("outcome", "counselor_id").get_column("pooled_mean").to_list()
    )
    con.execute(
        f"CREATE TABLE trajectory_points AS {sql('trajectory_points').rstrip().rstrip(';')}"
    )
    con.execute(f"CREATE TABLE trajectories AS {sql('trajectories').rstrip().rstrip(';')}")
    clients = con.sql(sql("trajectory_clients")).pl()
    assert clients.equals(_read(out, "trajectory_clients").select(clients.columns))
    assert con.sql(sql("trajectory_summary")).pl().height == _read(out, "trajectory_summary").height
    low = con.sql(sql("low_items")).pl()
    n_low = _items(synthetic["scores"]).filter(pl.col("score") <= 2).height
    assert low.height == n_low and low.get_column("language").null_count() == 0


def _cli(*args: str):
    result = CliRunner().invoke(app, ["analyze", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--outcome", "labels.nope"], "unknown label 'nope'"),
        (["--outcome", "nope"], "unknown outcome 'nope'"),
        (["--by", "metadata.nope"], "unknown --by column 'metadata.nope'"),
        (["--by", "nope"], "unknown --by column 'nope'"),
        (["--outcome", "x=labels.before*2"], "unknown label 'before*2'"),
    ],
)
def test_cli_rejects_unknown_names(synthetic, tmp_path, extra, message):
    code, output = _cli(
        "--sessions", str(synthetic["corpus"]), "--out", str(tmp_path / "o"), *extra
    )
    assert code == 2, output
    assert message in output and "Traceback" not in output
    assert not (tmp_path / "o").exists()


def test_cli_rejects_empty_corpus_and_foreign_scores(synthetic, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sessions").mkdir(parents=True)
    code, output = _cli("--sessions", str(empty), "--out", str(tmp_path / "o"))
    assert code == 2 and "has no sessions" in output
    foreign = tmp_path / "foreign"
    (foreign / "sessions").mkdir(parents=True)
    pl.DataFrame(
        {"session_id": ["x1", "x2"], "goal": [3.0, 4.0], "task": [3.0, 4.0], "bond": [3.0, 4.0]}
    ).write_parquet(foreign / "sessions" / "p.parquet")
    code, output = _cli(
        "--sessions",
        str(synthetic["corpus"]),
        "--scores",
        str(foreign),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "share no session_id" in output
    code, output = _cli(
        "--sessions",
        str(synthetic["corpus"]),
        "--scores",
        str(synthetic["run"]),
        "--out",
        str(tmp_path / "o"),
        "--outcome",
        "goal",
        "--memory-limit",
        "lots",
    )
    assert code == 2 and "memory" in output


def test_cli_writes_the_tables(synthetic, tmp_path):
    code, output = _cli(
        "--sessions",
        str(synthetic["corpus"]),
        "--out",
        str(tmp_path / "o"),
        "--outcome",
        "satisfaction",
        "--by",
        "site",
    )
    assert code == 0, output
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["by"] == ["metadata.site"] and manifest["tables"]["population"] > 0


def test_cli_rejects_a_bad_vocabulary(synthetic, tmp_path):
    bad = tmp_path / "vocab.yaml"
    bad.write_text("strategies:\n  Questions: Question\n", encoding="utf-8")
    for vocabulary, message in (
        (bad, "expected {strategy:"),
        (tmp_path / "missing.yaml", "vocabulary file not found"),
    ):
        code, output = _cli(
            "--sessions",
            str(synthetic["corpus"]),
            "--out",
            str(tmp_path / "o"),
            "--outcome",
            "satisfaction",
            "--vocabulary",
            str(vocabulary),
        )
        assert code == 2 and message in output, output


def test_without_any_outcome_the_features_transitions_and_contrasts_are_written(tmp_path):
    """A corpus with strategy/reaction codes and a text quality flag but no numeric label and no
    scores: analyze writes what needs no outcome, the manifest says what was left out and why, and
    the report renders it."""
    from care_ray.corpus.ingest import ingest_files

    sessions, _ = make_corpus(seed=11)
    for i, s in enumerate(sessions):
        del s["labels"]
        s["metadata"] = {"quality": "poor" if i % 3 == 0 else "good"}
    jsonl = tmp_path / "sessions.jsonl"
    jsonl.write_text(
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sessions), encoding="utf-8"
    )
    ingest_files("sessions-jsonl", [jsonl], tmp_path / "corpus")
    out = tmp_path / "features-only"
    code, output = _cli(
        "--sessions", str(tmp_path / "corpus"), "--by", "metadata.quality", "--out", str(out)
    )
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "features" and manifest["outcomes"] == []
    assert set(manifest["tables"]) == {"features", "transitions", "transition_tests", "contrasts"}
    assert {p.stem for p in out.glob("*.parquet")} == set(manifest["tables"])
    left_out = manifest["left_out"]
    assert set(left_out) == {
        "population",
        "counselor_profiles",
        "weakest_outcome",
        "drivers",
        "challenge_terms",
        "challenge_clusters",
        "trajectories",
        "trajectory_summary",
        "trajectory_clients",
        "outcome_links",
        *TIMELINE_TABLES,
        "timeline_links",
    }
    assert all(
        reason.startswith("no outcome") or "rated turns" in reason for reason in left_out.values()
    )
    assert any("no outcome" in note for note in manifest["notes"])
    features = _read(out, "features")
    assert features.height == len(sessions)
    by_id = {row["session_id"]: row for row in features.iter_rows(named=True)}
    for session in sessions:
        for name, value in expected_features(session).items():
            assert by_id[session["session_id"]][name] == pytest.approx(value)
    contrasts = _read(out, "contrasts").filter(pl.col("by") == "metadata.quality")
    assert set(contrasts["grp"]) == {"good", "poor"}
    assert "n_turns" in set(contrasts["variable"])
    poor = [expected_features(s)["n_turns"] for s in sessions if s["metadata"]["quality"] == "poor"]
    row = contrasts.filter((pl.col("variable") == "n_turns") & (pl.col("grp") == "poor"))
    assert row["n"].item() == len(poor) and row["mean"].item() == pytest.approx(np.mean(poor))
    good = [expected_features(s)["n_turns"] for s in sessions if s["metadata"]["quality"] == "good"]
    welch = stats.ttest_ind(good, poor, equal_var=False)
    assert row["p_value"].item() == pytest.approx(welch.pvalue)
    assert _read(out, "transitions")["n"].sum() == sum(len(expected_pairs(s)) for s in sessions)

    result = CliRunner().invoke(
        app, ["report", "--analysis", str(out), "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    assert "with no outcome (neither scores nor numeric labels)" in page
    assert "not listed" not in page
    assert "Group contrasts" in page and "metadata.quality" in page
    for absent in ("Drivers", "Alliance and outcomes", "Population"):
        assert f">{absent}<" not in page


def test_expected_scores_are_analysed_where_the_run_kept_them(synthetic, tmp_path):
    """#30: `--score-kind auto` reads `<dim>_expected` (Σ s·p(s)) where the run kept it, the
    decoded score otherwise; the manifest says which; asking for expected scores a run did not
    keep is a one-line error."""
    from care_ray.analytics.analyze import load_scores

    scores = synthetic["scores"]
    assert synthetic["manifest"]["score_kind"] == "greedy"  # the synthetic run kept none
    with pytest.raises(AnalysisError, match="--score-logprobs"):
        load_scores(synthetic["run"], "expected")
    run = tmp_path / "scores-expected"
    (run / "sessions").mkdir(parents=True)
    shift = {sid: 0.1 * (k % 5) for k, sid in enumerate(scores)}  # expected ≠ decoded
    pl.DataFrame(
        [
            {
                "session_id": sid,
                **dims,
                **{f"{d}_expected": dims[d] - shift[sid] for d in DIMENSIONS},
            }
            for sid, dims in scores.items()
        ]
    ).write_parquet(run / "sessions" / "part-0.parquet")
    for kind, want in (("auto", "expected"), ("expected", "expected"), ("greedy", "greedy")):
        frame, columns, used, note = load_scores(run, kind)
        assert used == want and columns == tuple(DIMENSIONS) and note is None
        got = dict(zip(frame["session_id"], frame["goal"], strict=True))
        for sid, dims in scores.items():
            assert got[sid] == pytest.approx(
                dims["goal"] - (shift[sid] if want == "expected" else 0)
            )
    manifest = analyze(
        AnalyzeConfig(
            sessions=synthetic["corpus"], scores=run, out=tmp_path / "analysis", min_sessions=2
        )
    )
    assert manifest["score_kind"] == "expected"
    population = _read(tmp_path / "analysis", "population").filter(
        (pl.col("group_by") == "all") & (pl.col("outcome") == "bond")
    )
    want = np.mean([dims["bond"] - shift[sid] for sid, dims in scores.items()])
    assert population["mean"][0] == pytest.approx(want)
    # one session's bond has a decoded score but no expected one: auto keeps to the decoded
    # scores (the two would cover different sessions), and says why; expected drops it
    partial = tmp_path / "scores-partial"
    (partial / "sessions").mkdir(parents=True)
    table = pl.read_parquet(run / "sessions" / "part-0.parquet")
    lost = table["session_id"][0]
    table.with_columns(
        pl.when(pl.col("session_id") == lost)
        .then(None)
        .otherwise(pl.col("bond_expected"))
        .alias("bond_expected")
    ).write_parquet(partial / "sessions" / "part-0.parquet")
    _, _, used, note = load_scores(partial, "auto")
    assert used == "greedy" and note.startswith("1 session dimension(s)")
    frame, _, used, note = load_scores(partial, "expected")
    assert used == "expected" and note.endswith("left out")
    assert frame.filter(pl.col("session_id") == lost)["bond"][0] is None
