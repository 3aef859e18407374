"""Shared fixtures and the suite's rules.

- Every expensive thing is made once per test run by a session-scoped fixture and shared: the tiny
  model, the ingested ESConv corpus, a scored ESConv sample (`scored_esconv`).
- `slow` is honest: a test not marked slow that starts an engine or a Ray Train run fails at
  once (care_ray.common.guard, armed here around every unmarked test), and a test that uses an
  expensive fixture must be marked slow too (checked when the tests are collected), so
  `pytest -m "not slow"` stays the quick inner loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from care_ray.common.guard import FAST_TEST_ENV

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Session fixtures that start an engine or a Ray Train run: a test that uses one is slow.
EXPENSIVE_FIXTURES = frozenset({"scored_esconv"})


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker("slow") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        f"{item.nodeid} (uses {', '.join(sorted(EXPENSIVE_FIXTURES & set(item.fixturenames)))})"
        for item in items
        if not is_slow(item) and EXPENSIVE_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that use an expensive fixture must be marked slow: " + "; ".join(unmarked)
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """While a test not marked slow runs (fixtures included), starting an engine or a Ray Train
    run fails; the variable reaches subprocesses (a CLI in a new process) too."""
    if is_slow(item):
        yield
        return
    before = os.environ.get(FAST_TEST_ENV)
    os.environ[FAST_TEST_ENV] = item.nodeid
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FAST_TEST_ENV, None)
        else:
            os.environ[FAST_TEST_ENV] = before


@pytest.fixture(scope="session")
def esconv_dir() -> Path:
    from care_ray.common.paths import esconv_dir

    d = esconv_dir()
    if not (d / "train.json").exists():
        pytest.fail(f"ESConv not found at {d}; set CARE_RAY_SHARED or CARE_RAY_ESCONV")
    return d


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from care_ray.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def esconv_corpus(tmp_path_factory, esconv_dir) -> Path:
    from care_ray.corpus.ingest import ingest_files

    out = tmp_path_factory.mktemp("esconv-corpus")
    ingest_files("esconv", [esconv_dir], out)
    return out


# Bounds that keep a random model's rambling short; guided decoding enforces them.
SMALL_ANSWERS = dict(
    max_model_len=1024,
    max_new_tokens=96,
    max_rationale_chars=80,
    max_quotes=1,
    max_quote_chars=40,
    sessions_per_block=4,
    progress=False,
)


def small_answer_flags() -> list[str]:
    """SMALL_ANSWERS's bounds as `care-ray score` flags (a rerun in-process must match them)."""
    keys = ("max_model_len", "max_new_tokens", "max_rationale_chars", "max_quotes")
    return [
        x
        for k in (*keys, "max_quote_chars")
        for x in ("--" + k.replace("_", "-"), str(SMALL_ANSWERS[k]))
    ]


@pytest.fixture(scope="session")
def scored_esconv(esconv_corpus, tiny_model, tmp_path_factory):
    """The first 6 ESConv sessions × 12 items scored once by the tiny model through Ray Data +
    vLLM, with a 2-point timeline: (the run folder, its manifest). Tests that read scores share it."""
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    out = tmp_path_factory.mktemp("scored-esconv")
    config = ScoreConfig(
        sessions=esconv_corpus,
        model=str(tiny_model),
        out=out,
        limit=6,
        score_logprobs=20,  # the shared run keeps the score distribution (test_scoring checks it)
        timeline=2,  # and two cut points per session (OUT/timeline/, test_scoring checks it)
        **SMALL_ANSWERS,
    )
    return out, score_corpus(config)
