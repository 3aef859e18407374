"""The one Ray start-up every job uses (scoring, drafting, fine-tuning): join the cluster named by
an address or by RAY_ADDRESS (set inside `ray job submit`), else start a private local one.

Ray's own default would attach to whatever cluster a stale /tmp/ray/ray_current_cluster names (and
wait forever if it is gone, or die with its `ray stop`), so "no address" means a private local
Ray. Locally, token authentication is off unless the user chose otherwise: it needs a token file
and buys nothing on a one-user machine. Every worker gets the offline switches."""

from __future__ import annotations

import os


def start_ray(address: str | None = None, *, log_to_driver: bool = False) -> None:
    """Connect to `address` / RAY_ADDRESS, or start a private local Ray; a no-op when Ray is up.
    `log_to_driver`: stream the workers' output to this console (training's rank-0 progress)."""
    import ray

    from care_ray.cluster.offline import go_offline, offline_runtime_env

    go_offline()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address != "local":
        ray.init(address=address, log_to_driver=log_to_driver, runtime_env=offline_runtime_env())
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        log_to_driver=log_to_driver,
        include_dashboard=False,
        runtime_env={
            **offline_runtime_env(),
            "worker_process_setup_hook": "care_ray.cluster.ray.quiet_state_api_pollers",
        },
    )


# Ray Train's placement-group cleaner asks the state API (served by the dashboard) every second
# whether the controller lives; a local Ray here runs without the dashboard, so each ask would
# print a warning on the console for the whole fine-tune. Quiet, it changes nothing: without the
# state API it cannot tell either way, and Ray removes the group with the job that made it.
STATE_API_POLLERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def quiet_state_api_pollers() -> None:
    """worker_process_setup_hook of a local Ray: errors only from the STATE_API_POLLERS."""
    import logging

    for name in STATE_API_POLLERS:
        logging.getLogger(name).setLevel(logging.ERROR)
