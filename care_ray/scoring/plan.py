"""Sizing a scoring run before it starts: tokens per session, prompt tokens with and without vLLM's
prefix cache, engine-hours, wall time and cost, each figure beside the assumption and source behind it.

The speed model is a simple roofline, stated openly: prefill is compute-bound and scales with a GPU's
dense bf16 TFLOP/s, decode is memory-bound and scales with its memory bandwidth; both are anchored on
figures measured on one H200 with this project's code. Tokens come from a corpus sample when one is
given (the prompts `care-ray score` would build, through the model's tokenizer or a chars-per-token
factor), else from the ESConv figures in benchmarks/RESULTS.md."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from care_ray.common.options import cli

STACK_NOTES = (
    "../shared/docs/stack-notes.md, 'A GPU machine' (one H200, care-ray's code, 2026-11-30)"
)
RESULTS = "benchmarks/RESULTS.md"


@dataclass(frozen=True)
class Assumption:
    name: str
    value: float | int | str
    unit: str
    source: str


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bf16_dense_tflops: float
    memory_bandwidth_gbs: float
    memory_gb: float
    source: str


# Vendor datasheet figures; NVIDIA quotes tensor throughput "with sparsity" too, which is twice the dense one.
GPUS: dict[str, GpuSpec] = {
    "h200": GpuSpec(
        "NVIDIA H200 SXM",
        989.0,
        4800.0,
        141.0,
        "NVIDIA H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense), HBM3e 4.8 TB/s, 141 GB",
    ),
    "h100": GpuSpec(
        "NVIDIA H100 SXM",
        989.0,
        3350.0,
        80.0,
        "NVIDIA H100 datasheet (SXM): BF16 Tensor Core 1,979 TFLOPS with sparsity (989 dense), HBM3 3.35 TB/s, 80 GB",
    ),
    "a100": GpuSpec(
        "NVIDIA A100 SXM 80GB",
        312.0,
        2039.0,
        80.0,
        "NVIDIA A100 datasheet (80GB SXM): BF16 Tensor Core 312 TFLOPS dense (624 with sparsity), HBM2e 2,039 GB/s",
    ),
    "l40s": GpuSpec(
        "NVIDIA L40S",
        362.05,
        864.0,
        48.0,
        "NVIDIA L40S datasheet: BF16 Tensor Core 362.05 TFLOPS dense (733 with sparsity), GDDR6 864 GB/s, 48 GB",
    ),
}
REFERENCE_GPU = "h200"

# Measured on the reference GPU at Llama-3.1-8B shape (bf16), and the engine estimate built on them.
H200_PREFILL_TOKENS_PER_S = 21_300
H200_ESTIMATE_SESSIONS_PER_S = 5.0
ESTIMATE_PREFILL_TOKENS = 1_800
ESTIMATE_DECODE_TOKENS = 1_920

OUTPUT_TOKENS_PER_ITEM = 160
ITEMS_PER_SESSION = 12
# ESConv through the tiny model's tokenizer: one prompt's tokens, and tokens computed per 12-item
# session with the prefix cache ÷ one prompt's tokens.
DEFAULT_PROMPT_TOKENS = 1_020
DEFAULT_CACHE_RATIO = 1.33
PIPELINE_OVERHEAD = 1.20
VLLM_BLOCK_SIZE = 16
CHARS_PER_TOKEN = 4.0


@dataclass(frozen=True)
class TokenProfile:
    """Tokens of one session (all its items), as the engine would see them."""

    items_per_session: int
    prompt_tokens: float  # mean, without the prefix cache
    prompt_tokens_cached: float  # mean, computed with the prefix cache
    output_tokens: float
    prompt_tokens_p95: float | None = None
    prompt_tokens_cached_p95: float | None = None
    sessions_sampled: int = 0
    truncated_share: float | None = None  # sessions whose middle turns the token budget cut
    session_ids: tuple[str, ...] = ()
    assumptions: tuple[Assumption, ...] = ()


@dataclass(frozen=True)
class Plan:
    sessions: int
    gpu: str
    gpus: int
    price_usd_per_gpu_hour: float | None
    tokens: TokenProfile
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    seconds_per_session: float  # on one GPU, pipeline overhead included
    engine_hours: float
    wall_hours: float
    cost_usd: float | None
    assumptions: tuple[Assumption, ...] = field(default=())

    @property
    def sessions_per_s_per_gpu(self) -> float:
        return 1.0 / self.seconds_per_session

    def to_dict(self) -> dict:
        t = self.tokens
        per_session = {
            "prompt_tokens": {"mean": t.prompt_tokens, "p95": t.prompt_tokens_p95},
            "prompt_tokens_prefix_cache": {
                "mean": t.prompt_tokens_cached,
                "p95": t.prompt_tokens_cached_p95,
            },
            "output_tokens": {"mean": t.output_tokens},
        }
        return {
            "sessions": self.sessions,
            "items_per_session": t.items_per_session,
            "gpu": {"key": self.gpu, **asdict(GPUS[self.gpu])},
            "gpus": self.gpus,
            "sessions_sampled": t.sessions_sampled,
            "truncated_share": t.truncated_share,
            "per_session": per_session,
            "totals": {
                "prompt_tokens": t.prompt_tokens * self.sessions,
                "prompt_tokens_prefix_cache": t.prompt_tokens_cached * self.sessions,
                "output_tokens": t.output_tokens * self.sessions,
            },
            "throughput_per_gpu": {
                "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "decode_tokens_per_s": self.decode_tokens_per_s,
                "sessions_per_s": self.sessions_per_s_per_gpu,
            },
            "engine_hours": self.engine_hours,
            "wall_hours": self.wall_hours,
            "price_usd_per_gpu_hour": self.price_usd_per_gpu_hour,
            "cost_usd": self.cost_usd,
            "assumptions": [asdict(a) for a in self.assumptions],
        }


# --- tokens ---------------------------------------------------------------------------------------


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two token-id sequences or two strings."""
    if isinstance(a, str) and isinstance(b, str):
        return len(os.path.commonprefix([a, b]))
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def cached_tokens(
    prompt: Sequence, earlier: Sequence[Sequence], block_size: int, tokens_per_unit: float = 1.0
) -> float:
    """Tokens of `prompt` the prefix cache serves after `earlier` prompts ran: only whole blocks,
    and never the last token (the engine must compute it to sample the answer)."""
    shared = max((common_prefix_length(prompt, e) for e in earlier), default=0)
    shared_tokens = min(shared * tokens_per_unit, len(prompt) * tokens_per_unit - 1)
    return max(0, math.floor(shared_tokens / block_size)) * block_size


def session_prompt_tokens(
    prompts: Sequence[Sequence],
    block_size: int,
    tokens_per_unit: float = 1.0,
    seen_before: Sequence[Sequence] = (),
) -> tuple[float, float]:
    """(prompt tokens without the cache, tokens computed with it) for one session's prompts run in
    order; `seen_before`: prompts of earlier sessions still in the cache (they share the header)."""
    total = computed = 0.0
    for i, prompt in enumerate(prompts):
        length = len(prompt) * tokens_per_unit
        total += length
        computed += length - cached_tokens(
            prompt, [*seen_before, *prompts[:i]], block_size, tokens_per_unit
        )
    return total, computed


def sample_indices(n_rows: int, sample: int, seed: int) -> np.ndarray:
    """Rows to measure, in corpus order: all of them when the corpus is small."""
    if sample >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=sample, replace=False))


def _session_prompts(builder, turns: list[dict]) -> tuple:
    """A session's transcript and its item prompts: token ids when the builder has a tokenizer,
    else the chat messages' text (what the template wraps, without its few special tokens)."""
    if builder.tokenizer is not None:
        transcript, _, ids = builder.item_prompts(turns, builder.rubric.items)
        return transcript, [np.asarray(i, dtype=np.int64) for i in ids]
    transcript = builder.transcript(turns)
    return transcript, [
        "\n".join(m["content"] for m in builder.messages(transcript.text, item))
        for item in builder.rubric.items
    ]


def measure_corpus_tokens(
    corpus: str,
    *,
    sample: int = 200,
    seed: int = 0,
    tokenizer=None,
    tokenizer_name: str | None = None,
    chars_per_token: float = CHARS_PER_TOKEN,
    max_model_len: int = 4096,
    max_new_tokens: int = 512,
    block_size: int = VLLM_BLOCK_SIZE,
    output_tokens_per_item: int = OUTPUT_TOKENS_PER_ITEM,
) -> TokenProfile:
    """Build the prompts `care-ray score` would build for a sample of the corpus's sessions and
    count their tokens: through `tokenizer` (with scoring's token budget), else by characters."""
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.prompts import PromptBuilders

    dataset = sessions_dataset(corpus)
    n_rows = dataset.count_rows()
    if n_rows == 0:
        raise ValueError(f"the corpus at {corpus} has no sessions")
    table = dataset.take(
        sample_indices(n_rows, sample, seed), columns=["session_id", "language", "turns"]
    )
    builders = (
        PromptBuilders(tokenizer, max_model_len, max_new_tokens)
        if tokenizer is not None
        else PromptBuilders()
    )
    per_unit = 1.0 if tokenizer is not None else 1.0 / chars_per_token
    totals, computed, truncated = [], [], []
    previous: list = []
    for language, turns in zip(
        table.column("language").to_pylist(), table.column("turns").to_pylist(), strict=True
    ):
        transcript, prompts = _session_prompts(builders.for_language(language), turns)
        total, done = session_prompt_tokens(prompts, block_size, per_unit, previous)
        totals.append(total)
        computed.append(done)
        truncated.append(transcript.n_elided > 0)
        previous = prompts[:1]
    items = len(prompts)
    how = (
        f"the tokenizer of {tokenizer_name}, scoring's token budget (max_model_len "
        f"{max_model_len}, max_new_tokens {max_new_tokens})"
        if tokenizer is not None
        else f"{chars_per_token:g} characters per token, whole transcripts (no token budget without --model)"
    )
    assumptions = (
        Assumption(
            "sessions measured",
            len(totals),
            "sessions",
            f"a seeded sample (seed {seed}) of {n_rows:,} in {corpus}; prompts built as "
            f"`care-ray score` builds them, counted with {how}",
        ),
        Assumption(
            "prefix cache block",
            block_size,
            "tokens",
            "vLLM caches whole KV blocks only; 16 tokens is its default block "
            "(vllm/config/cache.py, CacheConfig.DEFAULT_BLOCK_SIZE); --block-size",
        ),
        *_chars_assumption(tokenizer, chars_per_token),
        _output_assumption(output_tokens_per_item),
    )
    return TokenProfile(
        items_per_session=items,
        prompt_tokens=float(np.mean(totals)),
        prompt_tokens_cached=float(np.mean(computed)),
        output_tokens=float(items * output_tokens_per_item),
        prompt_tokens_p95=float(np.percentile(totals, 95)),
        prompt_tokens_cached_p95=float(np.percentile(computed, 95)),
        sessions_sampled=len(totals),
        truncated_share=float(np.mean(truncated)) if tokenizer is not None else None,
        session_ids=tuple(table.column("session_id").to_pylist()),
        assumptions=assumptions,
    )


def _chars_assumption(tokenizer, chars_per_token: float) -> tuple[Assumption, ...]:
    if tokenizer is not None:
        return ()
    return (
        Assumption(
            "characters per token",
            chars_per_token,
            "chars/token",
            "OpenAI's published rule of thumb for English text, 'What are tokens and how to "
            "count them?' (a token is about 4 characters); "
            "pass --model to count with the model's own tokenizer (needed for Chinese and other scripts)",
        ),
    )


def _output_assumption(output_tokens_per_item: int) -> Assumption:
    return Assumption(
        "answer tokens per item",
        output_tokens_per_item,
        "tokens",
        f"{STACK_NOTES}: the H200 scoring probe decoded 160 tokens per item (score, rationale, "
        "quotes); --output-tokens",
    )


def default_tokens(output_tokens_per_item: int = OUTPUT_TOKENS_PER_ITEM) -> TokenProfile:
    """Tokens of an ESConv-like session, without a corpus to measure."""
    return TokenProfile(
        items_per_session=ITEMS_PER_SESSION,
        prompt_tokens=float(ITEMS_PER_SESSION * DEFAULT_PROMPT_TOKENS),
        prompt_tokens_cached=DEFAULT_CACHE_RATIO * DEFAULT_PROMPT_TOKENS,
        output_tokens=float(ITEMS_PER_SESSION * output_tokens_per_item),
        assumptions=(
            Assumption(
                "prompt tokens per item",
                DEFAULT_PROMPT_TOKENS,
                "tokens",
                f"{RESULTS}, prefix-cache row: ESConv prompts of ~1,020 tokens (no --corpus "
                "given: pass one to measure yours)",
            ),
            Assumption(
                "prefix cache: tokens computed per session ÷ one prompt",
                DEFAULT_CACHE_RATIO,
                "ratio",
                f"{RESULTS}, prefix-cache row: 1.33 at ~1,020-token prompts (1.12 at ~2,700), 12 items",
            ),
            _output_assumption(output_tokens_per_item),
        ),
    )


# --- speed and cost -------------------------------------------------------------------------------


def reference_decode_tokens_per_s() -> float:
    """The H200 decode rate the engine estimate implies once its prefill is paid at the measured rate."""
    return ESTIMATE_DECODE_TOKENS / (
        1.0 / H200_ESTIMATE_SESSIONS_PER_S - ESTIMATE_PREFILL_TOKENS / H200_PREFILL_TOKENS_PER_S
    )


def gpu_rates(gpu: str) -> tuple[float, float, tuple[Assumption, ...]]:
    """(prefill tokens/s, decode tokens/s) of one engine on `gpu`, and the assumptions behind them."""
    spec, ref = GPUS[gpu], GPUS[REFERENCE_GPU]
    compute_ratio = spec.bf16_dense_tflops / ref.bf16_dense_tflops
    bandwidth_ratio = spec.memory_bandwidth_gbs / ref.memory_bandwidth_gbs
    decode_ref = reference_decode_tokens_per_s()
    assumptions = [
        Assumption(
            "H200 prefill",
            H200_PREFILL_TOKENS_PER_S,
            "tokens/s",
            f"{STACK_NOTES}: a plain forward over whole ESConv transcripts at Llama-3.1-8B shape, bf16, transformers "
            "(a vLLM engine prefills faster, so this errs towards more hours)",
        ),
        Assumption(
            "H200 engine estimate",
            H200_ESTIMATE_SESSIONS_PER_S,
            "sessions/s",
            f"{STACK_NOTES}: estimate for a vLLM-class engine with the prefix cache at ~1.8k "
            "prefill and 1,920 decoded tokens per session",
        ),
        Assumption(
            "H200 decode",
            round(decode_ref),
            "tokens/s",
            "implied by the two figures above: 1,920 / (1/5 s - 1,800 / 21,300 s)",
        ),
        Assumption(
            "model",
            "Llama-3.1-8B shape, bf16, one engine per GPU",
            "",
            f"the shape of every GPU figure in {STACK_NOTES}; a larger model is slower roughly "
            "in proportion to its parameters",
        ),
    ]
    assumptions.append(Assumption("GPU", spec.name, "", spec.source))
    if gpu != REFERENCE_GPU:
        assumptions += [
            Assumption("reference GPU", ref.name, "", ref.source),
            Assumption(
                f"{gpu} prefill scale (compute-bound)",
                round(compute_ratio, 3),
                "x H200",
                f"dense bf16 TFLOP/s {spec.bf16_dense_tflops:g} / {ref.bf16_dense_tflops:g}, "
                "from the two datasheets above",
            ),
            Assumption(
                f"{gpu} decode scale (memory-bound)",
                round(bandwidth_ratio, 3),
                "x H200",
                f"memory bandwidth {spec.memory_bandwidth_gbs:g} / "
                f"{ref.memory_bandwidth_gbs:g} GB/s, from the two datasheets above",
            ),
        ]
    return (
        H200_PREFILL_TOKENS_PER_S * compute_ratio,
        decode_ref * bandwidth_ratio,
        tuple(assumptions),
    )


def estimate(
    sessions: int,
    tokens: TokenProfile,
    gpu: str = REFERENCE_GPU,
    gpus: int = 1,
    price_usd_per_gpu_hour: float | None = None,
    overhead: float = PIPELINE_OVERHEAD,
) -> Plan:
    """Engine-hours, wall time on `gpus` GPUs and cost of scoring `sessions` sessions."""
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; one of {', '.join(GPUS)}")
    if sessions < 1 or gpus < 1:
        raise ValueError("sessions and gpus must be at least 1")
    if price_usd_per_gpu_hour is not None and price_usd_per_gpu_hour < 0:
        raise ValueError("the price per GPU-hour cannot be negative")
    prefill, decode, gpu_assumptions = gpu_rates(gpu)
    seconds = (tokens.prompt_tokens_cached / prefill + tokens.output_tokens / decode) * overhead
    engine_hours = sessions * seconds / 3600.0
    # every GPU runs one engine on its own share of the sessions
    wall_hours = math.ceil(sessions / gpus) * seconds / 3600.0
    cost = engine_hours * price_usd_per_gpu_hour if price_usd_per_gpu_hour is not None else None
    run_assumptions = (
        Assumption(
            "pipeline overhead",
            overhead,
            "x engine time",
            f"{RESULTS}, pipeline-overhead row: bare engine loop ÷ Ray Data path, 1.20 on CPU with a tiny model "
            "(an 8B model on a GPU leaves the pipeline less to add, so this errs towards more hours)",
        ),
        Assumption(
            "not counted",
            "engine start-up, node start, retries of failed items",
            "",
            "a fixed cost per run, not per session: a vLLM engine took 47-53 s to start on "
            f"CPU ({STACK_NOTES.split(',')[0]}); "
            "`care-ray score` retries a failed item once with twice the answer budget",
        ),
        *(
            (Assumption("price", price_usd_per_gpu_hour, "USD per GPU-hour", "--price (yours)"),)
            if price_usd_per_gpu_hour is not None
            else ()
        ),
    )
    return Plan(
        sessions=sessions,
        gpu=gpu,
        gpus=gpus,
        price_usd_per_gpu_hour=price_usd_per_gpu_hour,
        tokens=tokens,
        prefill_tokens_per_s=prefill,
        decode_tokens_per_s=decode,
        seconds_per_session=seconds,
        engine_hours=engine_hours,
        wall_hours=wall_hours,
        cost_usd=cost,
        assumptions=(*tokens.assumptions, *gpu_assumptions, *run_assumptions),
    )


# --- the table ------------------------------------------------------------------------------------


def _count(x: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(x) >= size:
            return f"{x / size:,.2f} {unit}"
    return f"{x:,.0f}"


def _hours(h: float) -> str:
    return f"{h:,.2f} h" if h >= 1 else f"{h * 60:,.1f} min"


def _blank_or_count(v: float | None) -> str:
    return "" if v is None else f"{v:,.0f}"


def plan_table(plan: Plan) -> str:
    """The estimate as a table for people, every assumption with its source below it."""
    t, spec = plan.tokens, GPUS[plan.gpu]
    rows = [
        (
            "prompt tokens, no prefix cache",
            f"{t.prompt_tokens:,.0f}",
            _blank_or_count(t.prompt_tokens_p95),
            _count(t.prompt_tokens * plan.sessions),
        ),
        (
            "prompt tokens computed, prefix cache",
            f"{t.prompt_tokens_cached:,.0f}",
            _blank_or_count(t.prompt_tokens_cached_p95),
            _count(t.prompt_tokens_cached * plan.sessions),
        ),
        ("output tokens", f"{t.output_tokens:,.0f}", "", _count(t.output_tokens * plan.sessions)),
    ]
    lines = [
        f"care-ray plan: {plan.sessions:,} sessions x {t.items_per_session} items on {plan.gpus} x {spec.name}",
        "",
    ]
    lines.append(f"{'tokens':<40}{'per session':>14}{'p95':>10}{'all sessions':>16}")
    lines += [f"{name:<40}{mean:>14}{q:>10}{total:>16}" for name, mean, q, total in rows]
    if t.truncated_share:
        lines.append(
            f"({t.truncated_share:.1%} of sampled sessions exceed the token budget and lose middle turns)"
        )
    cost = (
        f"${plan.cost_usd:,.2f} at ${plan.price_usd_per_gpu_hour:g} per GPU-hour"
        if plan.cost_usd is not None
        else "pass --price USD_PER_GPU_HOUR"
    )
    lines += [
        "",
        (
            f"{'per GPU':<40}prefill {plan.prefill_tokens_per_s:,.0f} tok/s, decode "
            f"{plan.decode_tokens_per_s:,.0f} tok/s, "
            f"{plan.sessions_per_s_per_gpu:,.2f} sessions/s"
        ),
        f"{'engine-hours (GPU-hours)':<40}{plan.engine_hours:,.2f}",
        f"{f'wall time on {plan.gpus} GPU' + ('s' if plan.gpus > 1 else ''):<40}{_hours(plan.wall_hours)}",
        f"{'cost':<40}{cost}",
        "",
        "assumptions",
    ]
    lines += [
        f"  - {a.name}: {a.value:,}{' ' + a.unit if a.unit else ''} [{a.source}]"
        if isinstance(a.value, (int, float))
        else f"  - {a.name}: {a.value} [{a.source}]"
        for a in plan.assumptions
    ]
    return "\n".join(lines)


class PlanConfig(BaseModel):
    """Estimate a scoring run before starting it: tokens per session (measured from a corpus
    sample, or stated defaults), prompt tokens with and without the prefix cache, engine-hours,
    wall time on --gpus GPUs and cost, each assumption printed with its source."""

    model_config = ConfigDict(extra="forbid")

    sessions: int = Field(ge=1, description="sessions to score")
    corpus: str | None = Field(
        None,
        description="a corpus folder or URI to measure tokens per session from (a sample of it) "
        "(default: ESConv figures from benchmarks/RESULTS.md)",
    )
    gpu: str = Field("h200", description="h200 | h100 | a100 | l40s")
    gpus: int = Field(1, ge=1, description="GPUs, one engine each")
    price: float | None = Field(None, ge=0, description="USD per GPU-hour, for the cost line")
    model: str | None = Field(
        None,
        description="model folder whose tokenizer counts the tokens (else --chars-per-token)",
    )
    sample: int = Field(200, ge=1, description="sessions of --corpus to measure")
    seed: int = Field(0, description="seed of the sample")
    chars_per_token: float = Field(
        CHARS_PER_TOKEN, gt=0, description="without --model: characters per token"
    )
    max_model_len: int | None = Field(
        None, ge=256, description="scoring's context length (with --model) (default: score's)"
    )
    max_new_tokens: int | None = Field(
        None,
        ge=16,
        description="scoring's answer budget in that context (with --model) (default: score's)",
    )
    output_tokens: int = Field(
        OUTPUT_TOKENS_PER_ITEM, ge=1, description="answer tokens decoded per item"
    )
    block_size: int = Field(
        VLLM_BLOCK_SIZE, ge=1, description="prefix-cache block size in tokens (vLLM's GPU default)"
    )
    print_json: bool = Field(
        False, description="print the estimate as JSON", json_schema_extra=cli(flag="--json")
    )

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        key = value.strip().lower()
        if key not in GPUS:
            raise ValueError(f"{value!r} is not one of {', '.join(GPUS)}")
        return key

    @model_validator(mode="after")
    def _model_needs_corpus(self) -> PlanConfig:
        if self.model is not None and self.corpus is None:
            raise ValueError(
                "--model counts the tokens of --corpus sessions; give --corpus DIR too"
            )
        return self
