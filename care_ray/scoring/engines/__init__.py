"""Engines turn rendered prompts into sampled texts. One small protocol; vLLM is the product,
transformers the fallback where vLLM is missing. Heavy imports happen inside `make_engine`."""

from __future__ import annotations

from pathlib import Path

from care_ray.scoring.engines.base import Engine, EngineConfig, Generation, Sample

__all__ = ["Engine", "EngineConfig", "Generation", "Sample", "make_engine"]


def make_engine(config: EngineConfig) -> Engine:
    from care_ray.common.guard import refuse_in_fast_tests

    refuse_in_fast_tests(f"an engine ({config.kind})")
    if config.adapter:
        from care_ray.cluster.storage import fetch_folder

        # an adapter in an object store is copied to this node's disk: the engines load files
        config = config.model_copy(update={"adapter": fetch_folder(config.adapter)})
    if config.kind == "vllm":
        from care_ray.scoring.engines.vllm import VLLMEngine

        engine: Engine = VLLMEngine(config)
    else:
        from care_ray.scoring.engines.hf import HFEngine

        engine = HFEngine(config)
    if config.crash_once_marker:
        from care_ray.scoring.engines.faults import CrashOnceEngine

        engine = CrashOnceEngine(engine, Path(config.crash_once_marker))
    if config.fail_while_marker:
        from care_ray.scoring.engines.faults import FailWhileMarkerEngine

        engine = FailWhileMarkerEngine(engine, Path(config.fail_while_marker))
    return engine
