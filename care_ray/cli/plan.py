"""`care-ray plan` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from care_ray.cli.options import fail as _fail


def _score_default(field: str):
    """The value `care-ray score` uses when the option is left out, so the plan sizes the same prompts."""
    from care_ray.scoring.config import ScoreConfig

    return ScoreConfig.model_fields[field].get_default(call_default_factory=True)


def _check_options(
    sessions: int,
    gpus: int,
    price: float | None,
    gpu: str,
    sample: int,
    chars_per_token: float,
    block_size: int,
    output_tokens: int,
    model: str | None,
    corpus: str | None,
) -> str:
    from care_ray.scoring.plan import GPUS

    gpu_key = gpu.strip().lower()
    problems = [
        (sessions < 1, f"--sessions must be at least 1, got {sessions}"),
        (gpus < 1, f"--gpus must be at least 1, got {gpus}"),
        (
            price is not None and price < 0,
            f"--price must be zero or more (USD per GPU-hour), got {price}",
        ),
        (gpu_key not in GPUS, f"--gpu {gpu!r} is not one of {', '.join(GPUS)}"),
        (sample < 1, f"--sample must be at least 1, got {sample}"),
        (chars_per_token <= 0, f"--chars-per-token must be positive, got {chars_per_token}"),
        (block_size < 1, f"--block-size must be at least 1, got {block_size}"),
        (output_tokens < 1, f"--output-tokens must be at least 1, got {output_tokens}"),
        (
            model is not None and corpus is None,
            "--model counts the tokens of --corpus sessions; give --corpus DIR too",
        ),
    ]
    for bad, message in problems:
        if bad:
            _fail(message)
    return gpu_key


def register(app: typer.Typer) -> None:
    """Add `plan` to `app`."""

    @app.command("plan")
    def plan(
        sessions: Annotated[int, typer.Option("--sessions", help="sessions to score")],
        corpus: Annotated[
            str | None,
            typer.Option(
                "--corpus",
                help="a corpus folder or URI to measure tokens per session from (a sample of "
                "it) \\[default: ESConv figures from benchmarks/RESULTS.md]",
            ),
        ] = None,
        gpu: Annotated[str, typer.Option("--gpu", help="h200 | h100 | a100 | l40s")] = "h200",
        gpus: Annotated[int, typer.Option("--gpus", help="GPUs, one engine each")] = 1,
        price: Annotated[
            float | None, typer.Option("--price", help="USD per GPU-hour, for the cost line")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                help="model folder whose tokenizer counts the tokens (else --chars-per-token)",
            ),
        ] = None,
        sample: Annotated[
            int, typer.Option("--sample", help="sessions of --corpus to measure")
        ] = 200,
        seed: Annotated[int, typer.Option("--seed", help="seed of the sample")] = 0,
        chars_per_token: Annotated[
            float, typer.Option("--chars-per-token", help="without --model: characters per token")
        ] = 4.0,
        max_model_len: Annotated[
            int | None,
            typer.Option(
                "--max-model-len",
                help="scoring's context length (with --model) \\[default: score's]",
            ),
        ] = None,
        max_new_tokens: Annotated[
            int | None,
            typer.Option(
                "--max-new-tokens",
                help="scoring's answer budget in that context (with --model) \\[default: score's]",
            ),
        ] = None,
        output_tokens: Annotated[
            int, typer.Option("--output-tokens", help="answer tokens decoded per item")
        ] = 160,
        block_size: Annotated[
            int,
            typer.Option(
                "--block-size", help="prefix-cache block size in tokens (vLLM's GPU default)"
            ),
        ] = 16,
        json_out: Annotated[
            bool, typer.Option("--json", help="print the estimate as JSON")
        ] = False,
    ) -> None:
        """Estimate a scoring run before starting it: tokens per session (measured from a corpus sample, or
        stated defaults), prompt tokens with and without the prefix cache, engine-hours, wall time on
        --gpus GPUs and cost, each assumption printed with its source."""
        from care_ray.scoring.plan import (
            default_tokens,
            estimate,
            measure_corpus_tokens,
            plan_table,
        )

        gpu_key = _check_options(
            sessions,
            gpus,
            price,
            gpu,
            sample,
            chars_per_token,
            block_size,
            output_tokens,
            model,
            corpus,
        )
        try:
            if corpus is None:
                tokens = default_tokens(output_tokens)
            else:
                tokenizer = None
                if model is not None:
                    from care_ray.models.checks import check_model_folder
                    from care_ray.scoring.prompts import load_tokenizer

                    check_model_folder(
                        model, need_weights=False
                    )  # only its tokenizer and chat template are read
                    tokenizer = load_tokenizer(str(model))
                tokens = measure_corpus_tokens(
                    corpus,
                    sample=sample,
                    seed=seed,
                    tokenizer=tokenizer,
                    tokenizer_name=model,
                    chars_per_token=chars_per_token,
                    max_model_len=max_model_len or _score_default("max_model_len"),
                    max_new_tokens=max_new_tokens or _score_default("max_new_tokens"),
                    block_size=block_size,
                    output_tokens_per_item=output_tokens,
                )
            result = estimate(
                sessions, tokens, gpu=gpu_key, gpus=gpus, price_usd_per_gpu_hour=price
            )
        except (FileNotFoundError, ValueError, OSError) as e:
            _fail(str(e))
        typer.echo(json.dumps(result.to_dict(), indent=2) if json_out else plan_table(result))
