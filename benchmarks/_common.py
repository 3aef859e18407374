"""Shared set-up for the benchmark scripts: the real ESConv corpus and the tiny model, built
under a work folder (never inside the repo)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def workdir() -> Path:
    d = Path(os.environ.get("CARE_RAY_BENCH_DIR", "/tmp/care-ray-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def tiny_model() -> Path:
    from care_ray.models.tiny import build_tiny_model

    p = workdir() / "tiny-model"
    if not (p / "model.safetensors").exists():
        build_tiny_model(p)
    return p


def esconv_corpus(copies: int = 1) -> Path:
    """ESConv ingested; with copies > 1, the real sessions repeated under new ids (for scale)."""
    from care_ray.common.paths import esconv_dir
    from care_ray.corpus.ingest import ingest_files

    base = workdir() / "esconv"
    if not (base / "manifest.json").exists():
        ingest_files("esconv", [esconv_dir()], base)
    if copies == 1:
        return base
    out = workdir() / f"esconv-x{copies}"
    if not (out / "manifest.json").exists():
        from care_ray.corpus.reader import iter_sessions

        jsonl = workdir() / f"esconv-x{copies}.jsonl"
        with open(jsonl, "w", encoding="utf-8") as f:
            for k in range(copies):
                for s in iter_sessions(base):
                    s = {
                        **s,
                        "session_id": f"{s['session_id']}-{k}",
                        "client_id": f"{s['client_id']}-{k}",
                    }
                    f.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")
        ingest_files("sessions-jsonl", [jsonl], out)
    return out


class PeakRSS:
    """Peak summed resident memory of a process (default: this one) and all its descendants
    (Ray's processes too), sampled in a background thread. Shared pages count once per process,
    so it is an upper bound."""

    def __init__(self, pid: int | None = None, interval: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        try:
            tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in tree:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def steady_rate(items_dir: Path) -> tuple[int, float]:
    """Items per second between the first and the last results file (engine start-up excluded)."""
    import pyarrow.parquet as pq

    files = sorted(items_dir.glob("part-*.parquet"), key=lambda f: f.stat().st_mtime)
    if len(files) < 2:
        return 0, float("nan")
    rows = sum(pq.read_metadata(f).num_rows for f in files[1:])
    span = files[-1].stat().st_mtime - files[0].stat().st_mtime
    return rows, rows / span if span > 0 else float("nan")
