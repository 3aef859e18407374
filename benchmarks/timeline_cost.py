"""What a timeline costs (issue 22, part 1): the same ESConv sessions scored with all 12 items, once
without a timeline and once with `--timeline 8` (3 items at each cut point), in one process on one
local Ray, and the ratio of wall time and of prompt tokens computed (prompt tokens minus those the
prefix cache served).

    .venv/bin/python benchmarks/timeline_cost.py [--sessions 16] [--model DIR]

The cut points run as a second scoring run after the full sessions (OUT/timeline/), on an engine
of their own: the ratio includes that engine's start-up, and each session's transcript is computed
once more there (the prefix cache serves the cut points of one session from each other, since
they share a block, but not from the full-session prompts of the first run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import esconv_corpus, tiny_model


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--cuts", type=int, default=8)
    ap.add_argument("--model", type=Path, default=None)
    a = ap.parse_args()

    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    corpus, model = esconv_corpus(), a.model or tiny_model()
    work = Path(tempfile.mkdtemp(prefix="timeline-cost-"))
    bounds = dict(max_model_len=2048, max_new_tokens=128, max_rationale_chars=200, max_quotes=1)

    def run(name: str, timeline: int) -> tuple[float, dict]:
        started = time.perf_counter()
        m = score_corpus(
            ScoreConfig(
                sessions=corpus,
                model=str(model),
                out=work / name,
                limit=a.sessions,
                timeline=timeline,
                progress=False,
                **bounds,
            )
        )
        return time.perf_counter() - started, m

    run("warm-up", 0)  # Ray up and the file cache warm before either timing
    plain_s, plain = run("plain", 0)
    with_s, with_tl = run("timeline", a.cuts)
    sub = json.loads((work / "timeline" / "timeline" / "manifest.json").read_text())
    computed = lambda m: m["prompt_tokens"] - m["cached_prompt_tokens"]  # noqa: E731
    row = {
        "model": model.name,
        "sessions": a.sessions,
        "cut_points": with_tl["timeline"]["cut_points"],
        "timeline_items": with_tl["timeline"]["items_scored"],
        "wall_plain_s": round(plain_s, 1),
        "wall_with_timeline_s": round(with_s, 1),
        "wall_ratio": round(with_s / plain_s, 2),
        "prompt_tokens_computed_plain": computed(plain),
        "prompt_tokens_computed_timeline_part": computed(sub),
        "prompt_tokens_ratio": round((computed(with_tl) + computed(sub)) / computed(plain), 2),
        "timeline_cache_share": round(
            sub["cached_prompt_tokens"] / max(sub["prompt_tokens"], 1), 3
        ),
    }
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
