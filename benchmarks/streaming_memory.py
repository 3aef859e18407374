"""Streaming: peak resident memory of the whole scoring job (driver + Ray + engine, all
processes) at 1k vs 10k sessions (goal ≤ 1.3×). Real ESConv sessions repeated under new ids to
reach 10k; one item per session and short answers, so the run measures the pipeline, not the model.

    .venv/bin/python benchmarks/streaming_memory.py [--small 1000 --large 10000]
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from _common import PeakRSS, esconv_corpus, tiny_model, workdir


def one(n: int, corpus: Path) -> None:
    from care_ray.scoring.config import ScoreConfig
    from care_ray.scoring.pipeline import score_corpus

    out = workdir() / f"stream-{n}"
    shutil.rmtree(out, ignore_errors=True)
    with PeakRSS() as rss:
        m = score_corpus(
            ScoreConfig(
                sessions=corpus,
                model=str(tiny_model()),
                out=out,
                limit=n,
                items="1",
                max_model_len=2048,
                max_new_tokens=48,
                max_rationale_chars=20,
                max_quotes=0,
                sessions_per_block=64,
                progress=False,
                ray_address="local",
            )
        )
    print(
        json.dumps(
            {
                "sessions": n,
                "peak_rss_gib": rss.peak / 2**30,
                "items_scored": m["items_scored"],
                "items_errors": m["items_errors"],
                "seconds": m["seconds"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=10000)
    ap.add_argument("--one", type=int)
    a = ap.parse_args()
    corpus = esconv_corpus(copies=-(-a.large // 1496))
    if a.one:
        one(a.one, corpus)
        return
    results = []
    for n in (
        a.small,
        a.large,
    ):  # separate processes: one run's Ray cannot inflate the other's peak
        line = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--large", str(a.large)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
        print(line.strip().splitlines()[-1])
    ratio = results[1]["peak_rss_gib"] / results[0]["peak_rss_gib"]
    print(
        f"peak RSS {results[0]['peak_rss_gib']:.2f} GiB at {a.small} sessions, "
        f"{results[1]['peak_rss_gib']:.2f} GiB at {a.large}: ratio {ratio:.2f} (goal <= "
        "1.3)"
    )


if __name__ == "__main__":
    main()
