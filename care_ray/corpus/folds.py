"""Client-disjoint folds: no client in two folds, stratified on the session's mean rating, so a
held-out score never comes from a model that saw the same client. sft-data assigns them and writes
`folds.parquet` (session_id, fold) beside its examples; evaluate and baseline read them back from
that folder, so every scorer is compared on the same split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from care_ray.common.errors import UserError

FOLDS_FILE = "folds.parquet"
# sft-data folders written before folds.parquet existed carry the fold on every example
EXAMPLES_FILE = "examples.parquet"
FOLDS_SCHEMA = pa.schema([("session_id", pa.string()), ("fold", pa.int32())])


class FoldError(UserError):
    """Folds that cannot be made or read (too few clients, a missing or broken folds file)."""


def stratum_labels(mean_scores: Sequence[float], n_splits: int) -> np.ndarray:
    """Rounded session means as strata, with strata smaller than n_splits merged into their
    nearest neighbour (StratifiedGroupKFold cannot spread a class of 2 over 5 folds)."""
    y = np.clip(np.rint(np.asarray(mean_scores, dtype=float)), 1, 5).astype(int)
    while True:
        counts = Counter(y.tolist())
        small = [c for c in sorted(counts, key=lambda c: counts[c]) if counts[c] < n_splits]
        if not small or len(counts) == 1:
            return y
        c = small[0]
        others = [o for o in counts if o != c]
        nearest = min(others, key=lambda o: (abs(o - c), -counts[o]))
        y[y == c] = nearest


def assign_folds(
    session_ids: Sequence[str],
    client_ids: Sequence[str],
    mean_scores: Sequence[float],
    n_splits: int,
    seed: int,
) -> dict[str, int]:
    """session_id → fold: client-disjoint (no client in two folds), stratified on the session's
    mean target score (scikit-learn's StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_clients = len(set(client_ids))
    if n_splits < 2:
        raise FoldError("--folds must be at least 2")
    if n_clients < n_splits:
        raise FoldError(f"{n_clients} clients cannot fill {n_splits} client-disjoint folds")
    y = stratum_labels(mean_scores, n_splits)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds: dict[str, int] = {}
    for k, (_, test_idx) in enumerate(
        splitter.split(np.zeros(len(y)), y, groups=np.asarray(client_ids))
    ):
        for i in test_idx:
            folds[session_ids[i]] = k
    return folds


def write_folds(folds: dict[str, int], folder) -> None:
    """`folder/folds.parquet` (a Location from care_ray.cluster.storage), sorted by session."""
    ids = sorted(folds)
    folder.join(FOLDS_FILE).write_parquet(
        pa.table({"session_id": ids, "fold": [folds[s] for s in ids]}, schema=FOLDS_SCHEMA)
    )


def read_folds(path: str | Path) -> tuple[pa.Table, str]:
    """(session_id, fold) from a folder holding folds.parquet (sft-data, baseline), an older
    sft-data folder's examples.parquet, or either file given directly; and the file it came from.
    One session with two folds is refused."""
    from care_ray.cluster.storage import location

    found = location(path)
    if found.is_dir():
        candidates = [found.join(FOLDS_FILE), found.join(EXAMPLES_FILE)]
        found = next((c for c in candidates if c.exists()), candidates[0])
    if not found.exists():
        raise FoldError(f"--folds: no {FOLDS_FILE} at {path} (run `care-ray sft-data` first)")
    try:
        table = pq.read_table(found.path, filesystem=found.fs, columns=["session_id", "fold"])
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise FoldError(f"--folds: cannot read session_id and fold from {found.uri}: {e}") from None
    import pyarrow.compute as pc

    pairs = table.group_by(["session_id", "fold"]).aggregate([])
    clash = len(pairs) - len(pc.unique(pairs["session_id"]))
    if clash:
        raise FoldError(f"--folds: {clash} session(s) of {found.uri} have two folds")
    return pairs.cast(FOLDS_SCHEMA), found.uri
