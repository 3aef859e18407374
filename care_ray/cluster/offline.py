"""Nothing ever reaches a model hub: the offline switches of huggingface_hub, transformers and vLLM
are set for the driver and, through the runtime environment, for every Ray worker, so no code path
can try a download (weights are passed as local folders; a transcript job has no business on the
network)."""

from __future__ import annotations

import json
import os
from typing import Any

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def go_offline() -> None:
    """Switch this process's hub clients off for good (the user cannot opt back in: weights are
    passed as folders, and a transcript job has no business on the network)."""
    os.environ.update(OFFLINE_ENV)


def job_env_vars() -> dict[str, str]:
    """The env vars of the runtime_env a submitted job (`ray job submit`) runs under; {} elsewhere."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:
        return {}
    job = json.loads(os.environ[RAY_JOB_CONFIG_JSON_ENV_VAR])
    return ((job.get("runtime_env") or {}).get("env_vars")) or {}


def offline_runtime_env() -> dict[str, Any]:
    """The runtime_env that carries the offline switches to every Ray worker. Keys a submitted job
    already sets are left to the job: Ray refuses to merge the same env var from two places."""
    job_env = job_env_vars()
    return {"env_vars": {k: v for k, v in OFFLINE_ENV.items() if k not in job_env}}
