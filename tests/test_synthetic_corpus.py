"""The benchmark's synthetic corpus generator writes a corpus the contract accepts and a scoring run
whose sessions table agrees with its items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from care_ray.analytics import synthetic
from care_ray.contracts.rubric import load_rubric
from care_ray.corpus.reader import iter_sessions, validate_corpus

N_SESSIONS = 200


def _generator():
    return synthetic


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "corpus"
    _generator().generate(
        out, N_SESSIONS, seed=3, chunk_size=80, log=lambda _: None
    )  # 3 chunks, the last one short
    return out


def test_corpus_passes_the_contract(corpus: Path) -> None:
    report = validate_corpus(corpus)
    assert report["ok"], report["problems"]
    assert report["sessions"] == N_SESSIONS
    assert set(report["by_source"]) == {"clinic", "helpline"}
    truth = json.loads((corpus / "truth.json").read_text())
    assert report["turns"] == truth["turns"]


def test_sessions_have_clients_counselors_and_labels(corpus: Path) -> None:
    sessions = list(iter_sessions(corpus))
    frame = pd.DataFrame(
        [
            {
                k: s[k]
                for k in ("session_id", "client_id", "counselor_id", "session_index", "source")
            }
            for s in sessions
        ]
    )
    assert frame["session_id"].is_unique
    per_client = frame.groupby("client_id")["session_index"].agg(["size", "min", "max", "nunique"])
    assert (per_client["size"] > 1).sum() > N_SESSIONS / 10
    assert (
        (per_client["min"] == 1).all()
        and (per_client["max"] == per_client["size"]).all()
        and (per_client["nunique"] == per_client["size"]).all()
    )
    assert frame.groupby("client_id")["counselor_id"].nunique().max() == 1
    assert frame.groupby("client_id")["source"].nunique().max() == 1
    turns = [(s["source"], t) for s in sessions for t in s["turns"]]
    assert all(t["strategy"] is None for _, t in turns if t["role"] == "client")
    assert all(t["reaction"] is None for _, t in turns if t["role"] == "counselor")
    spellings = {
        src: {t["strategy"] for s2, t in turns if s2 == src and t["strategy"]}
        for src in ("clinic", "helpline")
    }
    assert (
        spellings["clinic"] & spellings["helpline"] and spellings["clinic"] ^ spellings["helpline"]
    )
    assert {t["reaction"] for _, t in turns if t["reaction"]} == {"positive", "neutral", "negative"}
    assert all(
        set(s["labels"]) == {"satisfaction", "initial_emotion_intensity", "final_emotion_intensity"}
        for s in sessions
    )


def test_sessions_table_is_the_mean_of_its_items(corpus: Path) -> None:
    items = pq.read_table(corpus / "scores" / "items").to_pandas()
    assert len(items) == 12 * N_SESSIONS
    assert items.groupby("session_id")["item_id"].nunique().eq(12).all()
    dimension_of = {i.id: i.dimension for i in load_rubric().items}
    assert (items["item_id"].map(dimension_of) == items["dimension"]).all()
    assert items["score"].between(1, 5).all() and (items["score"] == items["score"].round()).all()
    assert items["run_fingerprint"].nunique() == 1
    expected = items.pivot_table(
        index="session_id", columns="dimension", values="score", aggfunc="mean"
    )
    table = (
        pq.read_table(corpus / "scores" / "sessions")
        .to_pandas()
        .set_index("session_id")
        .sort_index()
    )
    assert list(table.index) == sorted(expected.index)
    for dim in ("goal", "task", "bond"):
        np.testing.assert_allclose(table[dim].to_numpy(), expected.loc[table.index, dim].to_numpy())
    planted = _generator().LOW_RATIONALE
    low = items["score"] <= 2
    assert low.any()
    assert all(
        r in planted[d]
        for r, d in zip(items.loc[low, "rationale"], items.loc[low, "dimension"], strict=True)
    )
    assert not items.loc[~low, "rationale"].isin([r for rs in planted.values() for r in rs]).any()


def test_same_seed_same_corpus(corpus: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    _generator().generate(again, N_SESSIONS, seed=3, chunk_size=80, log=lambda _: None)
    for part in ("scores/items", "sessions/source=clinic", "sessions/source=helpline"):
        assert pq.read_table(corpus / part).equals(pq.read_table(again / part))
