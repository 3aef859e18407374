"""GPU evidence for the scoring core without Ray or vLLM (the lent GPU image has neither): the
transformers engine on CUDA in bf16 through `score_item_prompts`, on synthetic English and
Chinese sessions, with a tiny model built there. Prints one JSON object.

    python benchmarks/gpu_score_check.py      # on a CUDA machine
"""

import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from care_ray.contracts.output import output_schema
    from care_ray.contracts.rubric import load_rubric
    from care_ray.contracts.session import normalise_session, sessions_to_table
    from care_ray.models.tiny import build_tiny_model
    from care_ray.scoring.engines import EngineConfig, make_engine
    from care_ray.scoring.items import score_item_prompts
    from care_ray.scoring.prompts import PromptBuilder, load_tokenizer

    assert torch.cuda.is_available(), "needs CUDA"
    model = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for lang, turns in {
        "en": [
            ("client", "I keep missing classes and I feel useless."),
            ("counselor", "What happens on the mornings you miss them?"),
            ("client", "I just can't get up."),
        ],
        "zh": [
            ("client", "最近工作压力很大，晚上总是睡不着。"),
            ("counselor", "听起来你这段时间很辛苦。"),
            ("client", "我希望先把睡眠调整好。"),
        ],
    }.items():
        rubric = load_rubric(language=lang)
        sessions = [
            normalise_session(
                {
                    "session_id": f"{lang}-{k}",
                    "client_id": f"c{k}",
                    "language": lang,
                    "source": "gpu-check",
                    "turns": [{"role": r, "text": f"{t} ({k})"} for r, t in turns],
                }
            )
            for k in range(4)
        ]
        builder = PromptBuilder(
            rubric, load_tokenizer(str(model)), max_model_len=2048, max_new_tokens=96
        )
        prompts = builder.build_item_prompts(sessions_to_table(sessions), rubric.items)
        cfg = EngineConfig(
            model=str(model),
            kind="hf",
            gpus_per_engine=1,
            max_new_tokens=96,
            max_model_len=2048,
            output_schema=output_schema(),
        )
        engine = make_engine(cfg)
        t = time.perf_counter()
        results = score_item_prompts(
            prompts,
            engine,
            cfg,
            {
                "n_items_selected": 12,
                "model": "tiny",
                "adapter": None,
                "rubric_id": rubric.id,
                "engine": "hf",
            },
        )
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows = results.to_pylist()
        report[lang] = {
            "engine_device": str(next(engine.model.parameters()).device),
            "dtype": str(next(engine.model.parameters()).dtype),
            "items": len(rows),
            "ok": sum(r["status"] == "ok" for r in rows),
            "errors_by_reason": {},
            "retried": sum(r["attempts"] == 2 for r in rows),
            "seconds": round(dt, 2),
            "prompt_tokens_match": all(
                r["prompt_tokens"] == len(ids)
                for r, ids in zip(rows, prompts.column("prompt_token_ids").to_pylist(), strict=True)
            ),
        }
        for r in rows:
            if r["status"] == "error":
                report[lang]["errors_by_reason"][r["error_reason"]] = (
                    report[lang]["errors_by_reason"].get(r["error_reason"], 0) + 1
                )
        engine.shutdown()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
