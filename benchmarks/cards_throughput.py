"""`care-ray cards` throughput (issue #23): cards per second and peak memory for ~4,000 counselors.

The corpus comes from benchmarks/synthetic_corpus.py with its counselors made smaller
(`--per-counselor` sessions each instead of its 250, so 4,000 counselors need 100,000 sessions, not
a million); it is cached under `$CARE_RAY_BENCH_DIR` (default /tmp/care-ray-bench) and its
generation is not measured. Measured, each as a subprocess with the peak RSS of its process tree:
1. `care-ray analyze --sessions C --scores C/scores --out A` (what cards needs: profiles, drivers,
   challenge clusters) — the step `cards` runs itself when --analysis is left out;
2. `care-ray cards --sessions C --scores C/scores --analysis A --out OUT --workers W`: every card,
   the index and cards.parquet. Cards per second = cards written ÷ its wall time.

    .venv/bin/python benchmarks/cards_throughput.py [--sessions 100000 --per-counselor 25 --workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import synthetic_corpus
from _common import PeakRSS, workdir

GIB = 2**30


def corpus(n_sessions: int, per_counselor: int) -> Path:
    path = workdir() / f"cards-corpus-{n_sessions}-{per_counselor}"
    if not (path / "scores" / "sessions").is_dir():
        synthetic_corpus.SESSIONS_PER_COUNSELOR = per_counselor  # read by population()
        synthetic_corpus.generate(path, n_sessions)
    return path


def timed(cmd: list[str], log: Path) -> dict:
    started = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=err, stderr=subprocess.STDOUT)
        with PeakRSS(proc.pid, interval=0.1) as rss:
            code = proc.wait()
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{cmd[3]} failed (exit {code}); see {log}")
    return {
        "command": " ".join(cmd[2:]),
        "wall_s": round(wall, 2),
        "peak_rss_gib": round(rss.peak / GIB, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--per-counselor", type=int, default=25)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    started = time.perf_counter()
    c = corpus(args.sessions, args.per_counselor)
    generated = time.perf_counter() - started
    out = workdir() / "cards-bench"
    shutil.rmtree(out, ignore_errors=True)  # an earlier run's cards must not count
    out.mkdir(parents=True)
    care_ray = [sys.executable, "-m", "care_ray"]
    analysis = timed(
        [
            *care_ray,
            "analyze",
            "--sessions",
            str(c),
            "--scores",
            str(c / "scores"),
            "--out",
            str(out / "analysis"),
        ],
        out / "analyze.log",
    )
    cards = timed(
        [
            *care_ray,
            "cards",
            "--sessions",
            str(c),
            "--scores",
            str(c / "scores"),
            "--analysis",
            str(out / "analysis"),
            "--out",
            str(out / "cards"),
            "--workers",
            str(args.workers),
        ],
        out / "cards.log",
    )
    n_cards = len(list((out / "cards" / "cards").glob("*.html")))
    sizes = [p.stat().st_size for p in (out / "cards" / "cards").glob("*.html")]
    print(
        json.dumps(
            {
                "sessions": args.sessions,
                "per_counselor": args.per_counselor,
                "corpus_ready_s": round(generated, 1),
                "analyze": analysis,
                "cards": cards,
                "n_cards": n_cards,
                "cards_per_s": round(n_cards / cards["wall_s"], 1),
                "mean_card_kib": round(sum(sizes) / max(len(sizes), 1) / 1024, 1),
                "workers": args.workers,
                "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
