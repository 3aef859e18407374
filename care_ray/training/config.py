"""The fine-tuning job's configuration: one pydantic model, loadable from YAML (configs/finetune-*.yaml)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from care_ray.cluster.resources import check_custom_amounts
from care_ray.common.errors import UserError

# q/k/v/o + the MLP: LoRA on all linear layers of a Llama block is the usual choice for SFT
# of an instruction model (QLoRA paper; attention-only LoRA underfits format + content targets).
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    r: int = Field(16, ge=1, description="adapter rank (vLLM serves it with max_lora_rank >= r)")
    alpha: int = Field(32, ge=1, description="scaling = alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_LINEAR_MODULES))


class ScalingSettings(_Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(
        1.0,
        gt=0,
        description="fractional on small machines: the driver and Ray's own actors need room",
    )
    gpus_per_worker: float = Field(1.0, gt=0)
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads on CPU; default max(1, int(cpus_per_worker))",
    )
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description='Ray custom resources per worker, e.g. {"train_node": 1}: workers run only on '
        "nodes started with them (`ray start --resources`)",
    )

    @model_validator(mode="after")
    def _check(self) -> ScalingSettings:
        check_custom_amounts(self.resources_per_worker, "resources_per_worker", "{}s_per_worker")
        return self


class FaultInjection(_Strict):
    """Chaos testing: worker `rank` fails once, at optimizer step `at_step`, the first time (the
    flag file records that it happened). `exit`: the process dies hard, as on a lost node (the
    resume path); `oom`: it raises the error Ray's memory monitor leaves; `raise`: an error of
    its own (the one-line failure)."""

    at_step: int = Field(ge=1)
    flag_file: Path
    rank: int = 0
    kind: Literal["exit", "oom", "raise"] = "exit"


class FinetuneConfig(_Strict):
    """Rationale-augmented SFT on Ray Train (LoRA or full), one run per held-out fold; the best
    checkpoint by held-out Pearson r is written as a PEFT adapter folder (LoRA) or a model folder
    (full) with metrics.json. Settings come from --config (see configs/finetune-*.yaml), flags and
    --set KEY=VALUE (dotted for groups: --set lora.r=32)."""

    name: str = Field(
        description="run name: Ray Train's experiment folder under storage_path, one per fold (NAME-foldK)"
    )
    model: str = Field(description="base model folder (safetensors + tokenizer + chat template)")
    data: str = Field(description="folder written by `care-ray sft-data`, a local path or a URI")
    output_dir: str = Field(
        description="best adapter per fold + metrics.json + summary.json, a local path or a URI"
    )
    storage_path: str = Field(
        description="Ray Train checkpoints: a local/shared path or an object-store URI"
    )
    folds: list[int] | Literal["all"] = Field(
        "all", description="held-out folds to train for; each trains on the others"
    )
    rubric: Path | None = Field(None, description="rubric file; default: the examples' language")

    method: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    epochs: int = Field(3, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    micro_batch_size: int = Field(1, ge=1, description="sequences per worker per forward pass")
    effective_batch_size: int = Field(
        64,
        ge=1,
        description="sequences per optimizer step over all workers = micro × accumulation × workers",
    )
    max_seq_len: int = Field(
        8192,
        ge=16,
        description="longer examples are dropped and counted, never cut (cutting would train "
        "on prompts scoring never sends)",
    )
    seed: int = 123
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 on GPU (LoRA: frozen bf16 base, fp32 adapters; full: fp32 "
        "master weights, bf16 compute), fp32 on CPU",
    )
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: a model copy per worker; fsdp: parameters, gradients and optimizer "
        "state sharded (FSDP2) — full fine-tuning of models that do not fit one device",
    )
    gradient_checkpointing: Literal["auto"] | bool = Field(
        "auto",
        description="auto: on only where the memory plan of the longest micro-batch would not "
        "fit what a worker has (free GPU memory; on CPU the host's available RAM shared among "
        "the workers); the decision is logged",
    )
    memory_limit_gib: float | None = Field(
        None,
        gt=0,
        description="the memory one worker may use, for the memory plan; default: what the device "
        "has (free GPU memory on CUDA, on CPU 90% of the host's available RAM / workers on it)",
    )
    cpu_mmap_threshold_kib: int | None = Field(
        None,
        ge=0,
        description="CPU workers: glibc serves allocations of this size and up with mmap and "
        "returns them on free (MALLOC_MMAP_THRESHOLD_, e.g. 1024). With glibc's moving threshold "
        "the activations of micro-batches of varying length fragment the heap (SmolLM2, LoRA: "
        "peak 8.1 GiB vs 6.2 GiB at 1024), but pinning it cost 35% of tokens/s here, more than "
        "gradient checkpointing; null (default) keeps glibc's, and the memory plan counts the "
        "heap's growth (0.6 x the activations, 0.4 x with checkpointing). A MALLOC_MMAP_THRESHOLD_ already "
        "set wins",
    )
    dry_run: bool = Field(
        False,
        description="print each fold's plan (examples, steps, tokens per step, memory per worker, "
        "checkpointing on/off and why) and stop before Ray Train starts",
    )
    packing: bool = Field(
        True,
        description="a micro-batch's examples concatenated into one row without padding, positions "
        "restarting and attention kept within each example; the loss is the same as padded",
    )
    fused_loss: bool = Field(
        True,
        description="the LM head and cross-entropy only on target positions, in chunks: the "
        "[tokens x vocab] logits are never materialized",
    )
    trust_remote_code: bool = False

    log_every_steps: int = Field(
        5,
        ge=1,
        description="rank 0 prints a progress line (step, loss, learning rate, tokens/s, elapsed, "
        "time left) every N optimizer steps, and at least every log_every_seconds",
    )
    log_every_seconds: float = Field(
        60.0, gt=0, description="the longest silence between two progress lines"
    )
    eval_every_steps: int | None = Field(
        None,
        ge=1,
        description="checkpoint + held-out evaluation every N optimizer steps; default once per epoch",
    )
    eval_batch_size: int = Field(4, ge=1)
    max_train_examples: int | None = Field(
        None, ge=1, description="smoke runs: a deterministic sample of the training folds"
    )
    max_eval_examples: int | None = Field(
        None, ge=1, description="smoke runs: held-out examples, whole sessions first"
    )
    select_on: Literal["expected", "greedy"] = Field(
        "expected",
        description="which held-out score makes heldout_selection_score: 'expected' (Σ s·p(s) over "
        "the score token's digits; what `care-ray score --score-logprobs` reports) or 'greedy' "
        "(the decoded score). Both are printed and kept in metrics.json",
    )
    selection_metric: str = Field(
        "heldout_selection_score",
        description="reported metric that picks the checkpoint kept as best (higher is better)",
    )
    num_to_keep: int = Field(
        2, ge=1, description="checkpoints kept by Ray Train, ranked by selection_metric"
    )
    max_failures: int = Field(
        2, ge=-1, description="worker-group restarts from the latest checkpoint (-1: unlimited)"
    )
    merge: bool = Field(
        False, description="also write merged full weights of the best LoRA checkpoint"
    )
    ray_address: str | None = Field(
        None, description="connect to this cluster; default: RAY_ADDRESS, else a local Ray"
    )
    scaling: ScalingSettings = Field(default_factory=ScalingSettings)
    fault_injection: FaultInjection | None = None

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        per_step = self.micro_batch_size * self.scaling.num_workers
        if self.effective_batch_size % per_step:
            raise ValueError(
                f"effective_batch_size {self.effective_batch_size} is not a multiple of "
                f"micro_batch_size × num_workers = {per_step}"
            )
        return self

    @property
    def grad_accum_steps(self) -> int:
        return self.effective_batch_size // (self.micro_batch_size * self.scaling.num_workers)


class ConfigError(UserError):
    """The config file is missing, not YAML, or breaks the schema: one line for the user."""


CHECKPOINTS_UNDER_OUT = "ray-results"  # `--out DIR`: Ray Train's storage_path is DIR/ray-results


def out_overrides(out: Path | str) -> dict[str, str]:
    """`--out DIR`: the exported folds and summary in DIR, Ray Train's checkpoints in DIR/ray-results."""
    if "://" in str(out):
        return {
            "output_dir": str(out),
            "storage_path": f"{str(out).rstrip('/')}/{CHECKPOINTS_UNDER_OUT}",
        }
    return {"output_dir": str(out), "storage_path": str(Path(out) / CHECKPOINTS_UNDER_OUT)}


def load_finetune_config(
    path: Path | str | None, overrides: Mapping[str, Any] | None = None
) -> FinetuneConfig:
    """YAML (+ overrides: {dotted key: value}, e.g. from `--set`) → FinetuneConfig, validated as a
    whole, so an override is checked exactly as the same value in the file would be. Relative paths
    stay relative to the working directory (the repo root under `ray job submit --working-dir .`)."""
    from care_ray.common.options import load_options

    try:
        cfg: FinetuneConfig = load_options(FinetuneConfig, path, overrides=overrides)
    except UserError as e:
        raise ConfigError(str(e)) from None
    return cfg
