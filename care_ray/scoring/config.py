"""`care-ray score`'s settings: one pydantic model (a YAML file, flags and --set overrides fill it),
what of it changes results (the fingerprint), and the engine settings it implies."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from care_ray.cluster.resources import check_custom_amounts
from care_ray.cluster.storage import PathOrURI
from care_ray.common.options import cli
from care_ray.contracts.output import output_schema
from care_ray.scoring.engines import EngineConfig
from care_ray.scoring.items import ERROR_REASONS


def _json_mapping(value: Any) -> Any:
    """A JSON object given as text (the command line) becomes a mapping; YAML gives one already."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f'not a JSON object such as {{"engine_node": 1}}: {value!r}') from None


class ScoreConfig(BaseModel):
    """Score every session × WAI-SR item with an LLM on Ray Data + vLLM.

    Rerun with the same --out to resume: pairs already in items/ or errors/ are skipped. The
    folder records a fingerprint of everything that changes results (model and adapter contents,
    rubric, prompt version, sampling, output bounds, token budget); a rerun with other settings
    is refused."""

    model_config = ConfigDict(extra="forbid")

    sessions: PathOrURI = Field(
        description="corpus folder written by `care-ray ingest`, a local path or an "
        "object-store URI"
    )
    model: str = Field(
        description="model folder: config.json, safetensors, tokenizer, chat template (never a "
        "hub id)"
    )
    out: PathOrURI = Field(
        description="output folder (items/, sessions/, errors/, manifest.json, "
        "fingerprint.json), a local path or an s3://, gs:// URI; rerun to resume"
    )
    adapter: str | None = Field(
        None,
        description="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors), "
        "a local path or a URI",
    )
    items: str | None = Field(
        None, description="all | goal | task | bond | item ids '1,2,10' (default: all)"
    )
    limit: int | None = Field(
        None, ge=1, description="score the first N sessions of the corpus, in corpus order"
    )
    engine: str = Field(
        "vllm", pattern="^(vllm|hf)$", description="vllm | hf (transformers fallback)"
    )
    num_engines: int = Field(1, ge=1, description="engine replicas (Ray actors)")
    gpus_per_engine: float = Field(0.0, ge=0, description="GPUs per replica (0 = CPU)")
    cpus_per_engine: float | None = Field(
        None,
        gt=0,
        description="logical CPUs per replica (default: fit the node so read/write tasks keep a "
        "share)",
    )
    engine_resources: Annotated[dict[str, float], BeforeValidator(_json_mapping)] = Field(
        default_factory=dict,
        description="Ray custom resources per replica as JSON, e.g. '{\"engine_node\": 1}': "
        "engines run only on nodes started with them (`ray start --resources`); placement "
        "only, not part of the run's fingerprint",
        json_schema_extra=cli(type=str),
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="tensor parallel degree per replica",
        json_schema_extra=cli(flag="--tensor-parallel"),
    )
    max_model_len: int = Field(
        4096, ge=256, description="context length; longer sessions lose their middle turns"
    )
    max_new_tokens: int = Field(
        512,
        ge=16,
        description="token budget per answer (a failed answer is retried once with twice this)",
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    samples: int = Field(
        1, ge=1, description="answers per item; > 1 gives a spread and needs --temperature > 0"
    )
    seed: int = Field(0, description="sampling seed")
    language: str | None = Field(
        None,
        description="score every session with this language's rubric (en | zh) (default: each "
        "session's own language, as sft-data does)",
    )
    rubric: Path | None = Field(None, description="your own rubric YAML for every session")
    dtype: str = Field(
        "auto",
        description="weights dtype: auto | float32 | bfloat16 | float16 (auto = float32 on CPU)",
    )
    enable_prefix_caching: bool = Field(
        True,
        description="reuse the shared transcript's KV cache across a session's items",
        json_schema_extra=cli(flag="--prefix-caching/--no-prefix-caching"),
    )
    align_prefix_blocks: bool = Field(
        False,
        description="pad the part a session's prompts share to a KV block boundary (newline "
        "tokens after the transcript) so later prompts recompute only their item; off by "
        "default: a model fine-tuned by care-ray was trained without the padding",
    )
    block_size: int | None = Field(
        None, description="KV cache block size (default: 32 on CPU, the engine's own on GPU)"
    )
    kv_cache_gib: float = Field(1.0, description="KV cache GiB per CPU engine")
    max_num_seqs: int = Field(64, ge=1, description="sequences an engine batches at once")
    max_rationale_chars: int | None = Field(
        None,
        ge=1,
        description="bound each rationale (guided decoding; a longer answer is an error row)",
    )
    max_quotes: int | None = Field(None, ge=0, description="at most this many quotes per answer")
    max_quote_chars: int | None = Field(None, ge=1, description="bound each quote's length")
    score_only: bool = Field(
        False,
        description="answers are {score} alone: for models trained with --target score (the "
        "ablation)",
        json_schema_extra=cli(flag="--score-only/--with-rationale"),
    )
    score_logprobs: int = Field(
        20,
        ge=0,
        le=20,
        description="keep the distribution over the rubric's values at the score token: p(1..5), "
        "the expected score and its SD (vLLM engine). 0: the decoded score alone. The logits are "
        "read during generation (3% fewer items/s, benchmarks/RESULTS.md); where they cannot be "
        "(an engine in another process), a one-token probe reads the top-k log-probabilities",
    )
    sessions_per_block: int = Field(
        default_factory=lambda: int(os.environ.get("CARE_RAY_SESSIONS_PER_BLOCK", 16)),
        ge=1,
        description="sessions per Ray Data block (12 prompts each)",
    )
    prompt_workers: int = Field(
        1, ge=1, description="prompt-building actors (each holds the tokenizer)"
    )
    ray_address: str | None = Field(
        None,
        description="Ray cluster to join: 'auto', host:port or ray://… (default: the job's "
        "cluster under `ray job submit`, else a private local Ray)",
    )
    trust_remote_code: bool = Field(
        False, description="run the model folder's own Python code (off unless you set it)"
    )
    progress: bool = Field(True, description="a progress bar on stderr")
    retry_errors: str | None = Field(
        None,
        description="re-score the pairs in errors/: 'all' or reasons (truncated, invalid_json, "
        "schema_violation, engine_error)",
    )
    overwrite: bool = Field(
        False,
        description="discard what --out holds and start over (a rerun with another "
        "configuration is refused without it)",
    )
    shared_filesystem: bool = Field(
        False,
        description="a local --out is one filesystem mounted on every node (else a multi-node "
        "run needs an object-store URI)",
    )
    timeline: int = Field(
        0,
        ge=0,
        le=64,
        description="also score each session at N cut points spread over its client turns (the "
        "transcript up to that turn, then the item: the prompt a session ending there gets), "
        "score only, into OUT/timeline/ with points.parquet (session, cut turn, position, item, "
        "score); 0: no timeline",
    )
    timeline_items: str | None = Field(
        None,
        description="the items scored at cut points, as --items (default: the first item of each "
        "dimension)",
    )
    timeline_drop: float = Field(
        2.0,
        ge=0,
        description="a drop of at least this between consecutive cut points of an item gets a "
        "full answer (rationale and quotes) at the cut after it, in OUT/timeline/answers/; 0: "
        "none",
    )
    crash_once_marker: str | None = Field(
        None, description="TEST ONLY: fault injection", json_schema_extra=cli(hidden=True)
    )
    fail_while_marker: str | None = Field(
        None, description="TEST ONLY: fault injection", json_schema_extra=cli(hidden=True)
    )

    @model_validator(mode="after")
    def _check(self) -> ScoreConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"--samples {self.samples} needs --temperature > 0 (at temperature 0 every sample is the same answer)"
            )
        check_custom_amounts(self.engine_resources, "--engine-resources", "--{}s-per-engine")
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
        from care_ray.contracts.rubric import rubric_files
        from care_ray.scoring.fingerprint import file_digest, folder_digest
        from care_ray.scoring.prompts import PROMPT_VERSION

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
                "score_logprobs": self.score_logprobs,
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

    def prompt_stage(self) -> type[Any] | None:
        """The Ray Data stage that turns a block of sessions into (session, item) prompts, where a
        task needs its own (drafting); None: scoring's BuildItemPrompts."""
        return None

    def selected_sessions(self) -> pa.ChunkedArray:
        """The session ids this run covers, in corpus order."""
        return select_sessions(self.sessions, self.limit)

    def _adapter_digest(self) -> str | None:
        """The adapter's content digest, wherever it lives (a URI is fetched once per process)."""
        from care_ray.cluster.storage import fetch_folder
        from care_ray.scoring.fingerprint import folder_digest

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
            score_logprobs=self.score_logprobs if self.engine == "vllm" else 0,
            crash_once_marker=self.crash_once_marker,
            fail_while_marker=self.fail_while_marker,
        )


def select_sessions(sessions_dir: Path | str, limit: int | None) -> pa.ChunkedArray:
    """The ids to score, in corpus order (the first `limit` of them), as an Arrow array."""
    from care_ray.corpus.reader import sessions_dataset

    corpus = sessions_dataset(sessions_dir)
    return (
        corpus.head(limit, columns=["session_id"])
        if limit
        else corpus.to_table(columns=["session_id"])
    ).column("session_id")
