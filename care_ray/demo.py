"""The demo pipeline: real ESConv sessions, the tiny model, local Ray — every stage for real,
small enough for a laptop. Each step is a plain function; the pipeline is a plain list."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from care_ray.paths import esconv_dir

log = logging.getLogger(__name__)


def _tiny_model(ctx: dict) -> dict:
    from care_ray.tiny_model import build_tiny_model

    model = ctx["out"] / "tiny-model"
    if not (model / "model.safetensors").exists():
        build_tiny_model(model)
    from care_ray.model_check import check_model_folder

    check_model_folder(model)
    return {"model": str(model)}


def _ingest(ctx: dict) -> dict:
    from care_ray.ingest import ingest_files

    m = ingest_files("esconv", [ctx["esconv"]], ctx["out"] / "corpus", mode="overwrite")  # a rerun of the demo rebuilds it
    return {"ingest": {k: m[k] for k in ("input_records", "sessions_written", "records_quarantined", "quarantined_by_reason")}}


def _score(ctx: dict) -> dict:
    from care_ray.scoring import ScoreConfig, score_corpus

    cfg = ScoreConfig(sessions=ctx["out"] / "corpus", model=ctx["model"], out=ctx["out"] / "scores", limit=ctx["sessions"],
                      max_model_len=2048, max_new_tokens=192, max_rationale_chars=240, max_quotes=2, max_quote_chars=80)
    m = score_corpus(cfg)
    keep = ("sessions_in", "sessions_complete", "items_in", "items_scored", "items_errors", "prompt_tokens", "cached_prompt_tokens", "seconds")
    return {"score": {k: m[k] for k in keep}}


DEMO_STEPS: list[tuple[str, Callable[[dict], dict]]] = [("tiny-model", _tiny_model), ("ingest", _ingest), ("score", _score)]


def run_demo(out: Path, sessions: int = 8, esconv: Path | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"out": Path(out), "sessions": sessions, "esconv": Path(esconv) if esconv else esconv_dir()}
    ctx["out"].mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for name, step in DEMO_STEPS:
        log.info("demo step: %s", name)
        result = step(ctx)
        ctx.update(result)
        summary.update(result)
    (ctx["out"] / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
