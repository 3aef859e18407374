"""Shared fixtures: the tiny model is built once per run; ESConv is read from ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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
