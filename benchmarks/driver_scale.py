"""The scoring driver at scale (issue 8): resume planning and manifest reconciliation over a
synthetic run folder of N sessions × 12 items, half finished (half the sessions scored, a few
errors), as DuckDB queries over the committed files — never sets of keys in Python.

    .venv/bin/python benchmarks/driver_scale.py                 # 100k, 1M and 2M sessions, one run each
    .venv/bin/python benchmarks/driver_scale.py --sessions 100000

Each scale runs in a fresh subprocess; it prints seconds and the driver's peak RSS (the process
and its children) for planning and for finalize (orphans, consolidation, empty tables, counts,
sessions/), and the ratios between scales. The goal: ≤ 30 s and ≤ 2 GiB at 1M; memory ratio
≤ 1.3. DuckDB's cap (CARE_RAY_DRIVER_MEMORY) bounds most of the driver's memory: 100k sessions
need less than the cap and 1M fill it, so the ratio that says whether memory still grows with the
run is 2M ÷ 1M (RESULTS.md has the profile)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ITEMS = list(range(1, 13))
DIMS = {
    1: "task",
    2: "task",
    10: "task",
    12: "task",
    4: "goal",
    6: "goal",
    8: "goal",
    11: "goal",
    3: "bond",
    5: "bond",
    7: "bond",
    9: "bond",
}


def build_run(folder: Path, n_sessions: int, sessions_per_file: int) -> list[str]:
    """Half the sessions scored (every 50th pair an error instead), in committed files of
    `sessions_per_file` sessions; returns all session ids in corpus order."""
    import numpy as np
    import pyarrow as pa

    from care_ray.scoring.results import RESULT_SCHEMA, RunFolder

    run = RunFolder(folder)
    ids = [f"s{k:07d}" for k in range(n_sessions)]
    rng = np.random.default_rng(0)
    done = n_sessions // 2
    for start in range(0, done, sessions_per_file):
        chunk = ids[start : min(done, start + sessions_per_file)]
        n = len(chunk) * 12
        sids = np.repeat(np.array(chunk, dtype=object), 12)
        iids = np.tile(np.array(ITEMS, dtype=np.int32), len(chunk))
        scores = rng.integers(1, 6, n)
        status = np.where(np.arange(n) % 50 == 7, "error", "ok")
        table = pa.table(
            {
                "session_id": pa.array(sids, pa.string()),
                "item_id": pa.array(iids, pa.int32()),
                "dimension": pa.array([DIMS[i] for i in iids.tolist()], pa.string()),
                "status": pa.array(status, pa.string()),
                "score": pa.array(scores.astype(float)),
                "scores": pa.array([[int(s)] for s in scores.tolist()], pa.list_(pa.int8())),
                "rationale": pa.array(["I felt heard when my counselor said so."] * n),
                "quote_found": pa.array(np.ones(n)),
                "prompt_tokens": pa.array(np.full(n, 1000, np.int32)),
                "cached_tokens": pa.array(np.full(n, 900, np.int32)),
                "error_reason": pa.array(
                    np.where(status == "error", "truncated", None), pa.string()
                ),
                "n_items_selected": pa.array(np.full(n, 12, np.int32)),
                "model": pa.array(["m"] * n),
                "rubric_id": pa.array(["wai-sr-client-en-v1"] * n),
                "engine": pa.array(["vllm"] * n),
                "run_fingerprint": pa.array(["f" * 16] * n),
            }
        )
        table = pa.Table.from_pydict(
            {
                name: table.column(name)
                if name in table.column_names
                else pa.nulls(n, RESULT_SCHEMA.field(name).type)
                for name in RESULT_SCHEMA.names
            },
            schema=RESULT_SCHEMA,
        )
        run.write_results(table)
    return ids


def measure(n_sessions: int, sessions_per_file: int, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from _common import PeakRSS

    from care_ray.scoring.results import (
        RunFolder,
        consolidate_and_count,
        pending_plan,
        reconcile,
        write_session_scores,
    )

    folder = work / f"driver-{n_sessions}"
    ids_file = folder.with_suffix(
        ".ids.parquet"
    )  # the corpus's session ids, as the driver reads them
    if not ids_file.exists():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.perf_counter()
        ids = build_run(folder, n_sessions, sessions_per_file)
        pq.write_table(pa.table({"session_id": ids}), ids_file)
        del ids
        print(
            f"  built {n_sessions:,} sessions in {time.perf_counter() - t0:.0f} s", file=sys.stderr
        )
    run = RunFolder(folder)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        ids = pq.read_table(ids_file).column("session_id")
        plan, done = pending_plan(run, ids, ITEMS)
        t_plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        run.remove_orphans()
        finished = ids[: n_sessions // 2]  # finalize of the finished half
        _, pair_counts = consolidate_and_count(run, finished, ITEMS)
        counts = reconcile(run, finished, pair_counts)
        rows = write_session_scores(run)
        t_final = time.perf_counter() - t0
    assert plan.num_rows == n_sessions - n_sessions // 2 and done == (n_sessions // 2) * 12
    assert (
        counts["items_scored"] + counts["items_errors"] == counts["items_in"]
        and rows == n_sessions // 2
    )
    return {
        "sessions": n_sessions,
        "files": len(run.committed("items")) + len(run.committed("errors")),
        "plan_s": round(t_plan, 2),
        "finalize_s": round(t_final, 2),
        "total_s": round(t_plan + t_final, 2),
        "peak_rss_gib": round(rss.peak / 2**30, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, nargs="*", default=[100_000, 1_000_000, 2_000_000])
    ap.add_argument("--sessions-per-file", type=int, default=500)
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from _common import workdir

    if args.one:
        print(json.dumps(measure(args.one, args.sessions_per_file, workdir())))
        return
    results = []
    for n in args.sessions:  # a fresh process per scale: peak RSS of that scale alone
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                str(n),
                "--sessions-per-file",
                str(args.sessions_per_file),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(
            f"{r['sessions']:>9,} sessions ({r['files']:,} files): plan {r['plan_s']} s + "
            f"finalize {r['finalize_s']} s = {r['total_s']} s, peak RSS "
            f"{r['peak_rss_gib']} GiB"
        )
    for a, b in zip(results, results[1:], strict=False):
        print(
            f"{b['sessions']:,} ÷ {a['sessions']:,} sessions: time "
            f"{b['total_s'] / a['total_s']:.2f}x, memory "
            f"{b['peak_rss_gib'] / a['peak_rss_gib']:.2f}x"
        )


if __name__ == "__main__":
    main()
