"""Checks a scoring run makes before Ray starts or `--out` is touched: the prompt layout a
fine-tuned model was trained on, an output folder every node can reach, and a run folder that holds
nothing or results of this very configuration (its fingerprint)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from care_ray.cluster.storage import Location
from care_ray.scoring.config import ScoreConfig
from care_ray.scoring.fingerprint import FINGERPRINT_FILE
from care_ray.scoring.results import RunFolder

log = logging.getLogger(__name__)


def check_alignment_fits_the_model(config: ScoreConfig) -> None:
    """A model care-ray fine-tuned is scored with the prompts it was trained on: aligned to the
    same block size (sft-data --align-prefix-blocks N) or not aligned. Padding it never saw changes
    what it answers (the learnability test's model: held-out r 0.985 → 0.00 with it)."""
    from care_ray.cluster.storage import fetch_folder

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
    asked = config.prefix_alignment()
    if asked and "://" not in str(config.model):
        _probe_alignment(config)


# a session of two turns: enough for the builder to see whether the prompt's pieces tokenise apart
_PROBE_TURNS = [
    {"role": "client", "text": "I have felt stuck at work for weeks."},
    {"role": "counselor", "text": "That sounds heavy. What happens on a typical day?"},
]


def _probe_alignment(config: ScoreConfig) -> None:
    """Build one probe session's prompts with the model's tokenizer and the padding asked for:
    a tokenizer or chat template the padding cannot apply to is refused here, in one line, rather
    than in a Ray Data stage."""
    from care_ray.scoring.prompts import load_tokenizer
    from care_ray.scoring.stages import BuildItemPrompts

    # the builders the scoring stage makes, with this model's tokenizer and the padding asked for
    builder = BuildItemPrompts.make_builders(
        config, load_tokenizer(config.model, config.trust_remote_code)
    ).for_language(config.language)
    builder.item_prompts(_PROBE_TURNS, builder.rubric.items)


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


def check_run_folder(out: Path | str, config: ScoreConfig) -> None:
    """Refuse, touching nothing, an `out` that holds results of another configuration."""
    prepare_run_folder(out, config, check_only=True)


def prepare_run_folder(out: Path | str, config: ScoreConfig, check_only: bool = False) -> str:
    """Make sure `out` holds nothing or results of this very configuration, then claim it; returns
    the fingerprint. A mismatch is refused before anything in `out` is touched."""
    from care_ray.scoring.fingerprint import FingerprintMismatch, differences, digest_of

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
