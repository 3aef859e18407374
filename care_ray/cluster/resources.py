"""What a job asks of the cluster, checked before anything is scheduled: CPUs per engine actor
that leave Ray Data's own tasks room, and custom resources the alive nodes can really give (Ray
would keep an actor that asks for more pending forever, a hang with no message)."""

from __future__ import annotations

import json
import logging

from care_ray.common.errors import UserError

log = logging.getLogger(__name__)


RESERVE_CPUS = 1.25  # Ray Data's file-listing task (a whole CPU) and the prompt actor's quarter


def engine_cpus(
    node_resources: list[dict[str, float]], engine_resources: dict[str, float]
) -> tuple[float, float]:
    """(CPUs engines may use, CPUs of every other node): with --engine-resources, engines run only
    on the nodes that have all of them, so those nodes' CPUs are theirs to share."""
    if not engine_resources:
        return sum(n.get("CPU", 0.0) for n in node_resources), 0.0
    pinned = [all(n.get(k, 0.0) > 0 for k in engine_resources) for n in node_resources]
    cpus = [n.get("CPU", 0.0) for n in node_resources]
    return (
        sum(c for c, p in zip(cpus, pinned, strict=True) if p),
        sum(c for c, p in zip(cpus, pinned, strict=True) if not p),
    )


def plan_cpus(
    total_cpus: float,
    num_engines: int,
    requested: float | None,
    gpus_per_engine: float,
    cpus_elsewhere: float = 0.0,
) -> float:
    """CPUs per engine actor such that read, prompt and write tasks always keep a share of the
    node: 2 engine actors at 1 CPU each on a 2-core node deadlock the pipeline, and so does one
    engine at 1 CPU, since Ray Data's file-listing task always asks for a whole CPU. The reserve
    is that CPU plus the prompt actor's quarter (CPUs are logical: the engine still computes
    on the cores it finds). `total_cpus`: the CPUs the engines may run on (the pinned nodes'
    with --engine-resources, see engine_cpus); `cpus_elsewhere`: other nodes' CPUs, where the
    light tasks can go instead, so only what they lack is reserved on the engines' nodes."""
    if gpus_per_engine > 0:
        return requested or 1.0
    reserve = max(0.0, RESERVE_CPUS - cpus_elsewhere)
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


def check_custom_amounts(resources: dict[str, float], option: str, per: str) -> None:
    """Custom resources asked per replica: positive amounts of names other than CPU and GPU,
    which have options of their own (`per`: how those are spelled, e.g. "--{}s-per-engine")."""
    for name, amount in resources.items():
        if name in ("CPU", "GPU"):
            raise ValueError(
                f"{option}: give {name} with {per.format(name.lower())}, not as a custom resource"
            )
        if amount <= 0:
            raise ValueError(f"{option}: {name} must be > 0, got {amount:g}")


class MissingClusterResources(UserError):
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
