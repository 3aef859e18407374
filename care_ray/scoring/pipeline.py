"""Scoring a corpus: sessions Parquet → (session, item) prompts → engine replicas → validated item
scores, on Ray Data.

Outputs under `out` (see care_ray.scoring.results for the commit protocol): items/ (one row per
scored session × item), errors/ (every item that could not be scored, with the reason and raw
output), sessions/ (dimension scores), manifest.json, fingerprint.json. Reruns resume: pairs
already in items/ or errors/ are skipped; a data file counts once its commit marker exists, so a
killed run leaves only whole files and nothing needs renaming (object stores have no rename)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from care_ray.cluster.ray import start_ray
from care_ray.cluster.resources import check_custom_resources, engine_cpus, plan_cpus
from care_ray.common.versions import package_versions
from care_ray.scoring.checks import (
    check_alignment_fits_the_model,
    check_output_reachable,
    check_run_folder,
    prepare_run_folder,
)
from care_ray.scoring.config import ScoreConfig
from care_ray.scoring.results import RunFolder
from care_ray.scoring.stages import BuildItemPrompts, ScoreItemsActor, _write_results_batch

log = logging.getLogger(__name__)

# Up to this many pending sessions the driver reads them itself (a few MB of transcripts) and
# hands them to Ray Data; above it, Ray Data's read tasks stream the corpus.
SMALL_PLAN_SESSIONS = 2_000


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


def score_corpus(config: ScoreConfig) -> dict[str, Any]:
    """Run the whole scoring job on the current Ray cluster (local by default)."""
    from care_ray.cluster.offline import go_offline
    from care_ray.common.guard import refuse_in_fast_tests
    from care_ray.models.checks import check_adapter_folder, check_model_folder

    go_offline()
    # every argument check comes before Ray starts and before --out is created or touched
    check_model_folder(config.model)
    if config.adapter:
        from care_ray.cluster.storage import fetch_folder

        check_adapter_folder(fetch_folder(config.adapter), config.model)
    check_alignment_fits_the_model(config)
    import ray

    from care_ray.contracts.rubric import rubric_for_language
    from care_ray.corpus.reader import sessions_dataset
    from care_ray.scoring.results import pending_plan, release_errors

    started = time.time()
    rubric = rubric_for_language(None, config.rubric, config.language)
    items = rubric.select(config.items)
    if config.timeline and config.timeline_items:  # a typo fails now, not after the full run
        rubric.select(config.timeline_items, "--timeline-items")
    session_ids = config.selected_sessions()
    item_ids = [i.id for i in items]
    run = RunFolder(config.out)
    check_run_folder(config.out, config)  # before Ray starts: a refused rerun answers at once
    refuse_in_fast_tests("a scoring run (engine actors)")  # the checks above are quick
    start_ray(config.ray_address)
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
    # engines pinned with --engine-resources are sized from their nodes' CPUs, not the cluster's
    pinned_cpus, other_cpus = engine_cpus(
        [n["Resources"] for n in alive_nodes], config.engine_resources
    )
    cpus = plan_cpus(
        pinned_cpus or 1.0,
        config.num_engines,
        config.cpus_per_engine,
        config.gpus_per_engine,
        cpus_elsewhere=other_cpus,
    )
    light_cpus = 0.25
    if pending_sessions:
        # the whole corpus, nothing done: no plan to ship (it would be every session)
        everything = (
            pending_sessions == sessions_dataset(config.sessions).count_rows()
            and pairs_done_before == 0
        )
        plan_ref = None if everything else ray.put(plan)
        prompt_stage = config.prompt_stage() or BuildItemPrompts
        columns = list(prompt_stage.columns)
        corpus = sessions_dataset(config.sessions)
        if plan_ref is not None and pending_sessions <= SMALL_PLAN_SESSIONS:
            # a --limit or a resume with little left: read just those sessions here rather than
            # streaming the whole corpus through the prompt stage to drop nearly all of it
            wanted = pc.field("session_id").isin(plan.column("session_id"))
            sessions_ds: ray.data.Dataset = ray.data.from_arrow(
                corpus.to_table(columns=columns, filter=wanted)
            )
        else:
            sessions_ds = ray.data.read_parquet(
                corpus.files, filesystem=corpus.filesystem, partitioning=None, num_cpus=light_cpus
            ).select_columns(columns)
        ds_ = (
            sessions_ds.repartition(target_num_rows_per_block=config.sessions_per_block)
            .map_batches(
                prompt_stage,
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
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Ray Data stages:\n%s", ds_.stats())
    manifest = finalize(
        config.out,
        session_ids,
        item_ids,
        config,
        started,
        {"pairs_done_before": pairs_done_before, "errors_released_for_retry": released},
        fingerprint,
    )
    if config.timeline:
        manifest["timeline"] = score_timeline(config, session_ids)
        run.loc.join("manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def score_timeline(config: ScoreConfig, session_ids: Sequence[str] | pa.ChunkedArray) -> dict:
    """The cut points of the selected sessions (care_ray.scoring.timeline), scored as a run of
    their own into OUT/timeline/ on the same Ray cluster, and OUT/timeline/points.parquet."""
    from care_ray.contracts.rubric import rubric_for_language
    from care_ray.scoring.timeline import (
        TIMELINE_DIR,
        default_items,
        remove_cut_corpus,
        write_cut_corpus,
        write_points,
    )

    rubric = rubric_for_language(None, config.rubric, config.language)
    folder, cuts = write_cut_corpus(config.sessions, session_ids, config.timeline)
    try:
        sub = config.model_copy(
            update=dict(
                sessions=str(folder),
                out=RunFolder(config.out).loc.join(TIMELINE_DIR).uri,
                items=config.timeline_items or default_items(rubric),
                score_only=True,
                timeline=0,
                limit=None,
                # a block holds as many sessions' cut points as the full run's block holds
                # sessions: one session's cuts share a block, and so the prefix cache
                sessions_per_block=config.sessions_per_block * config.timeline,
            )
        )
        log.info(
            "timeline: %d cut points of %d sessions × items %s",
            cuts.num_rows,
            len(set(cuts.column("session_id").to_pylist())),
            sub.items,
        )
        manifest = score_corpus(sub) if cuts.num_rows else {}
        answered = _answer_drops(config, sub, folder, cuts) if cuts.num_rows else 0
        points = write_points(config.out, cuts) if cuts.num_rows else 0
    finally:
        remove_cut_corpus(folder)
    return {
        "cut_points": cuts.num_rows,
        "items": sub.items,
        "items_scored": manifest.get("items_scored", 0),
        "items_errors": manifest.get("items_errors", 0),
        "answered_after_drops": answered,
        "points": points,
        "folder": str(sub.out),
    }


def _answer_drops(config: ScoreConfig, sub: ScoreConfig, folder: Path, cuts: pa.Table) -> int:
    """Full answers (rationale and quotes) for the cut points after a drop of at least
    --timeline-drop, into OUT/timeline/answers/ (a run folder of its own): what the client would
    say at that moment. Returns the cut points answered."""
    from care_ray.scoring.timeline import (
        ANSWERS_DIR,
        drop_cuts,
        remove_cut_corpus,
        write_subset_corpus,
    )

    if not config.timeline_drop:
        return 0
    drops = drop_cuts(config.out, cuts, config.timeline_drop)
    ids = sorted(set(drops.column("cut_id").to_pylist()))
    if not ids:
        return 0
    subset = write_subset_corpus(folder, ids)
    try:
        score_corpus(
            sub.model_copy(
                update=dict(
                    sessions=str(subset),
                    out=RunFolder(sub.out).loc.join(ANSWERS_DIR).uri,
                    items=",".join(
                        str(i) for i in sorted(set(drops.column("item_id").to_pylist()))
                    ),
                    score_only=config.score_only,
                )
            )
        )
    finally:
        remove_cut_corpus(subset)
    return len(ids)


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
    from care_ray.scoring.results import consolidate_and_count, reconcile, write_session_scores

    run = RunFolder(out)
    orphans = run.remove_orphans()
    dropped, pair_counts = consolidate_and_count(run, session_ids, item_ids)
    run.ensure_tables()
    counts = reconcile(run, session_ids, pair_counts)
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
        "versions": package_versions(),
    }
    run.loc.join("manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
