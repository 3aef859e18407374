"""The fine-tuning job's configuration: one pydantic model, loadable from YAML (configs/finetune-*.yaml)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

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
        for name, amount in self.resources_per_worker.items():
            if name in ("CPU", "GPU"):
                raise ValueError(
                    f"resources_per_worker: give {name} with {name.lower()}s_per_worker, not "
                    "as a custom resource"
                )
            if amount <= 0:
                raise ValueError(f"resources_per_worker: {name} must be > 0, got {amount:g}")
        return self


class FaultInjection(_Strict):
    """Chaos testing of the resume path: worker `rank` exits hard once, at optimizer step
    `at_step`, the first time (the flag file records that it happened)."""

    at_step: int = Field(ge=1)
    flag_file: Path
    rank: int = 0


class FinetuneConfig(_Strict):
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
        description="auto: on only where the longest micro-batch's activations would not fit the "
        "device's free memory (never on CPU); the decision is logged",
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


class ConfigError(ValueError):
    """The config file is missing, not YAML, or breaks the schema: one line for the user."""


CHECKPOINTS_UNDER_OUT = "ray-results"  # `--out DIR`: Ray Train's storage_path is DIR/ray-results


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set` entries (`KEY=VALUE`, KEY dotted into nested settings such as `lora.r`) → {KEY: value}.
    VALUE is read as YAML, as it would be in the file: `folds=[0]` is a list, `lora.r=32` a number,
    `max_train_examples=null` unsets a limit; the schema then checks it like any file value."""
    overrides: dict[str, Any] = {}
    for entry in pairs:
        key, sep, text = entry.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set takes KEY=VALUE with a dotted KEY such as lora.r=32, got {entry!r}"
            )
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--set {key}: {text!r} is not a YAML value: {str(e).splitlines()[0]}"
            ) from None
    return overrides


def out_overrides(out: Path | str) -> dict[str, str]:
    """`--out DIR`: the exported folds and summary in DIR, Ray Train's checkpoints in DIR/ray-results."""
    if "://" in str(out):
        return {
            "output_dir": str(out),
            "storage_path": f"{str(out).rstrip('/')}/{CHECKPOINTS_UNDER_OUT}",
        }
    return {"output_dir": str(out), "storage_path": str(Path(out) / CHECKPOINTS_UNDER_OUT)}


def apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any], origin: str = "override"
) -> dict[str, Any]:
    """`raw` with each (possibly dotted) key of `overrides` set; a mapping value merges into the
    mapping it replaces, anything else replaces it. Raises ConfigError where a dotted key runs
    through a setting that is not a mapping (`epochs.x=1`)."""
    merged = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = merged
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(
                    f"{origin} {key}: {'.'.join(parents[: depth + 1])} is {child!r}, not a group of settings"
                )
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = apply_overrides(node[leaf], value, origin)
        else:
            node[leaf] = copy.deepcopy(value)
    return merged


def load_finetune_config(
    path: Path | str, overrides: Mapping[str, Any] | None = None, origin: str = "override"
) -> FinetuneConfig:
    """YAML (+ overrides: {dotted key: value}, e.g. from `--set`) → FinetuneConfig, validated as a
    whole, so an override is checked exactly as the same value in the file would be. Relative paths
    stay relative to the working directory (the repo root under `ray job submit --working-dir .`)."""
    from pydantic import ValidationError

    from care_ray.yaml_files import read_yaml_mapping

    raw = read_yaml_mapping(path, "config", "a mapping of settings", ConfigError)
    raw = apply_overrides(raw, overrides or {}, origin)
    overridden = {tuple(str(k).split(".")) for k in (overrides or {})}

    def where(loc: tuple) -> str:
        path = ".".join(map(str, loc)) or "config"
        from_override = any(tuple(map(str, loc[: len(k)])) == k for k in overridden)
        return f"{path} ({origin})" if from_override else path

    try:
        return FinetuneConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(
            f"{Path(path)}: "
            + "; ".join(f"{where(err['loc'])}: {err['msg']}" for err in e.errors())
        ) from None
