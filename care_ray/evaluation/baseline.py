"""`care-ray baseline`: what a model must beat — TF-IDF n-grams into ridge regression, trained and
evaluated exactly like the fine-tuned scorer.

The same truth specs as `evaluate` (client_wai, or labels.NAME=DIMENSION), the same client-disjoint
folds (sft-data's folds.parquet, or assigned here the way sft-data assigns them), and a scores
folder in the layout `care-ray score` writes, so `evaluate`, `analyze` and `report` take it like
any scorer. A fine-tuned LLM that does not beat this on the same folds has learned vocabulary, not
alliance. With `--score CORPUS` the models are fitted on every labelled session and the corpus is
streamed through them in batches: a CPU triage pass at corpus scale.

One model per target: per label (its prediction stands for every dimension the label is mapped
to) or, for client_wai, per dimension on the mean of the client's items of that dimension. The
ridge penalty is chosen by an inner cross-validation that is client-disjoint too (GroupKFold by
client_id on the training folds), so no client's words leak into the choice of the penalty."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator

from care_ray.cluster.storage import PathOrURI
from care_ray.common.errors import UserError
from care_ray.common.options import cli
from care_ray.contracts.rubric import Rubric, load_rubric
from care_ray.evaluation import metrics as ev
from care_ray.evaluation.evaluate import CLIENT_WAI, Truth, parse_truth, truth_field

log = logging.getLogger(__name__)

MANIFEST_KIND = "care-ray baseline scores"
MODEL_NAME = "baseline:tfidf-ridge"
DEFAULT_ALPHAS = [float(a) for a in np.logspace(-2, 3, 12)]
# CJK ideographs are tokens of their own (Chinese has no spaces between words); any other run of
# letters or digits is a word. The same split as the rationale overlap in metrics.
_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)
SCORE_COLUMNS = ("goal", "task", "bond")
INNER_SCORING = "r2"


class BaselineError(UserError):
    """A mistake in the baseline's input (a truth spec, a corpus, a folds file)."""


class BaselineConfig(BaseModel):
    """A lexical baseline (TF-IDF word 1–2-grams, Chinese by characters, into ridge regression),
    cross-fitted on client-disjoint folds like the fine-tuned model → a scores folder that
    evaluate, analyze and report read like any scorer's. With --score CORPUS: fitted on every
    labelled session, then the corpus is scored in batches (CPU triage)."""

    model_config = ConfigDict(extra="forbid")

    sessions: PathOrURI = Field(
        description="the labelled corpus folder (`care-ray ingest --out`), a path or a URI"
    )
    out: Path = Field(
        description="folder for sessions/ (the scores), folds.parquet, manifest.json, "
        "fingerprint.json"
    )
    truth: list[str] = truth_field(
        "what to learn, repeatable, as in evaluate: client_wai (one model per dimension on the "
        "mean of the client's items) or labels.NAME=DIMENSION[,DIMENSION] (one model per label, "
        "its prediction standing for those dimensions; ESConv: --truth labels.empathy=bond "
        "--truth labels.relevance=goal,task)"
    )
    folds: PathOrURI | None = Field(
        None,
        description="a folder with folds.parquet (`care-ray sft-data --out`) or the file: the "
        "split the model is evaluated on; default: client-disjoint folds assigned here like "
        "sft-data does (stratified on the session's mean truth, --n-folds, --seed)",
    )
    n_folds: int = Field(5, ge=2, description="folds to assign when --folds is not given")
    seed: int = Field(123, description="seed of the assigned folds (sft-data's default)")
    text: Literal["dialogue", "client", "counselor"] = Field(
        "dialogue", description="which turns feed the model: dialogue (all) | client | counselor"
    )
    alphas: list[float] = Field(
        default_factory=lambda: list(DEFAULT_ALPHAS),
        min_length=1,
        description="ridge penalty grid searched by the inner cross-validation, repeatable "
        "(default: 12 values log-spaced over 0.01..1000)",
        json_schema_extra=cli(flag="--alpha", type=list[str], no_default_text=True),
    )
    inner_folds: int = Field(
        3, ge=2, description="client-disjoint inner folds that choose the penalty"
    )
    max_features: int | None = Field(
        100_000, ge=1, description="keep the most frequent n-grams (none: all)"
    )
    min_df: int = Field(2, ge=1, description="an n-gram must occur in this many sessions")
    score: PathOrURI | None = Field(
        None,
        description="a corpus to score with models fitted on ALL labelled sessions (CPU triage); "
        "its predictions become the sessions/ table instead of the cross-fitted ones",
    )
    batch_size: int = Field(2000, ge=1, description="sessions per batch when reading corpora")
    rubric: Path | None = Field(
        None, description="rubric file (item → dimension, scale); default: the English WAI-SR"
    )

    @model_validator(mode="after")
    def _positive_alphas(self) -> BaselineConfig:
        if any(not a > 0 for a in self.alphas):
            raise ValueError("--alpha: every ridge penalty must be > 0")
        return self


# ---- text ----


def analyze_text(doc: str) -> list[str]:
    """Word 1–2-grams of lower-cased text where every CJK ideograph is a word of its own, so a
    Chinese session is read as character 1–2-grams and an English one as word 1–2-grams (a
    mixed one as both) with one analyzer. Module level, so a fitted model pickles."""
    tokens = _TOKEN.findall(doc.lower())
    return tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]


def session_texts(turns: pa.ChunkedArray | pa.Array, text: str) -> list[str]:
    """Each session's turns of the chosen role(s) joined by newlines ("" when it has none)."""
    frame = pl.DataFrame({"turns": pl.Series("turns", turns)}).with_row_index("row")
    flat = frame.explode("turns").unnest("turns").select("row", "role", "text")
    if text != "dialogue":
        flat = flat.filter(pl.col("role") == text)
    joined = flat.drop_nulls("text").group_by("row").agg(pl.col("text").str.join("\n"))
    out = frame.select("row").join(joined, on="row", how="left").sort("row")
    return out["text"].fill_null("").to_list()


def count_ngrams(texts: list[str]):
    """A fitted CountVectorizer over `texts` and their (sparse) n-gram counts. Counting once for
    all sessions is what keeps the grid search cheap; it decides nothing — which n-grams a model
    keeps and their idf are fitted on its training rows only (select_vocabulary, TfidfTransformer)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(analyzer=analyze_text, dtype=np.float32)
    return vectorizer, vectorizer.fit_transform(texts)


@cache
def _vocabulary_selector() -> type:
    """The training rows' vocabulary as a transformer over the shared count matrix: n-grams in at
    least min_df training sessions, the max_features most frequent of them — what
    TfidfVectorizer(min_df, max_features) keeps when fitted on those rows, so an n-gram that only
    held-out sessions use has no column. Built on first use: sklearn stays out of CLI start-up."""
    from sklearn.base import BaseEstimator, TransformerMixin

    class TrainingVocabulary(TransformerMixin, BaseEstimator):
        def __init__(self, min_df: int = 1, max_features: int | None = None):
            self.min_df = min_df
            self.max_features = max_features

        def fit(self, X, y=None):
            df = np.asarray((X > 0).sum(axis=0)).ravel()
            tf = np.asarray(X.sum(axis=0)).ravel()
            kept = np.flatnonzero(df >= self.min_df)
            if self.max_features is not None and len(kept) > self.max_features:
                kept = np.sort(kept[np.argsort(-tf[kept], kind="stable")[: self.max_features]])
            self.columns_ = kept
            return self

        def transform(self, X):
            return X[:, self.columns_]

    return TrainingVocabulary


def make_pipeline(config: BaselineConfig):
    """Training vocabulary → TF-IDF (sublinear tf, l2) → ridge, over n-gram counts."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    return Pipeline(
        [
            ("vocabulary", _vocabulary_selector()(config.min_df, config.max_features)),
            ("tfidf", TfidfTransformer(sublinear_tf=True)),
            ("ridge", Ridge()),
        ]
    )


# ---- targets ----


@dataclass(frozen=True)
class Target:
    """One model: a label (or a client_wai dimension) and the dimensions its prediction fills."""

    name: str
    dimensions: tuple[str, ...]


def targets_of(truth: Truth, dimensions: list[str]) -> list[Target]:
    if truth.kind == CLIENT_WAI:
        return [Target(f"{CLIENT_WAI}.{d}", (d,)) for d in dimensions]
    by_label: dict[str, list[str]] = {}
    for dim, label in truth.label_of_dimension.items():
        by_label.setdefault(label, []).append(dim)
    return [Target(f"labels.{label}", tuple(dims)) for label, dims in by_label.items()]


def target_values(
    table: pa.Table, truth: Truth, targets: list[Target], rubric: Rubric
) -> dict[str, np.ndarray]:
    """target name → one value per row of `table` (NaN where the session has none)."""
    n = table.num_rows
    if truth.kind == CLIENT_WAI:
        if CLIENT_WAI not in table.column_names:
            return {t.name: np.full(n, np.nan) for t in targets}
        long = ev.wai_dimension_frame(table["session_id"], table[CLIENT_WAI], rubric, "value")
        rows = pl.DataFrame({"session_id": pl.Series(table["session_id"], dtype=pl.String)})
        return {
            t.name: rows.join(
                long.filter(pl.col("dimension") == t.dimensions[0]),
                on="session_id",
                how="left",
                maintain_order="left",
            )["value"]
            .fill_null(np.nan)
            .to_numpy()
            for t in targets
        }
    labels = table["labels"] if "labels" in table.column_names else None
    out = {}
    for t in targets:
        name = t.name.removeprefix("labels.")
        if labels is None:
            out[t.name] = np.full(n, np.nan)
            continue
        values = pc.map_lookup(labels, pa.scalar(name, pa.string()), "first")
        out[t.name] = pl.Series(values, dtype=pl.Float64).fill_null(np.nan).to_numpy()
    return out


# ---- reading the labelled corpus ----


@dataclass
class Labelled:
    """The labelled sessions of a corpus, in memory (a training set is small)."""

    session_ids: list[str] = field(default_factory=list)
    client_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)
    sessions_read: int = 0
    labels_present: set[str] = field(default_factory=set)


READ_COLUMNS = ["session_id", "client_id", "turns", CLIENT_WAI, "labels"]


def _batches(corpus: str | Path, columns: list[str], batch_size: int) -> Iterator[pa.Table]:
    from care_ray.corpus.reader import open_sessions

    dataset = open_sessions(corpus, BaselineError)
    wanted = [c for c in columns if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=wanted, batch_size=batch_size):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def read_labelled(
    config: BaselineConfig, truth: Truth, targets: list[Target], rubric: Rubric
) -> Labelled:
    found = Labelled(values={t.name: [] for t in targets})
    for table in _batches(config.sessions, READ_COLUMNS, config.batch_size):
        found.sessions_read += table.num_rows
        if "labels" in table.column_names:
            for chunk in table["labels"].chunks:
                found.labels_present.update(k for k in chunk.keys.unique().to_pylist() if k)
        values = target_values(table, truth, targets, rubric)
        keep = np.zeros(table.num_rows, dtype=bool)
        for v in values.values():
            keep |= ~np.isnan(v)
        if not keep.any():
            continue
        rows = table.filter(pa.array(keep))
        found.session_ids += rows["session_id"].to_pylist()
        found.client_ids += rows["client_id"].to_pylist()
        found.texts += session_texts(rows["turns"], config.text)
        for name, v in values.items():
            found.values[name] += v[keep].tolist()
    return found


def check_labelled(found: Labelled, truth: Truth, config: BaselineConfig) -> None:
    if truth.kind == "labels":
        missing = sorted(set(truth.label_of_dimension.values()) - found.labels_present)
        if missing:
            have = ", ".join(sorted(found.labels_present)) or "none"
            raise BaselineError(
                f"--truth names label(s) {', '.join(missing)} that no session of "
                f"{config.sessions} has (labels present: {have})"
            )
    if not found.session_ids:
        what = "client_wai" if truth.kind == CLIENT_WAI else "a value of the named labels"
        hint = " (try --truth labels.NAME=DIMENSION)" if truth.kind == CLIENT_WAI else ""
        raise BaselineError(
            f"none of the {found.sessions_read} sessions of {config.sessions} has {what}{hint}"
        )


# ---- folds ----


def labelled_folds(config: BaselineConfig, found: Labelled) -> tuple[np.ndarray, str]:
    """A fold per labelled session (in found's order) and where the folds came from."""
    from care_ray.corpus.folds import assign_folds, read_folds

    if config.folds is None:
        values = np.column_stack([np.asarray(v, dtype=float) for v in found.values.values()])
        means = np.nanmean(values, axis=1)  # at least one value per labelled session
        folds = assign_folds(
            found.session_ids, found.client_ids, means.tolist(), config.n_folds, config.seed
        )
        return np.array([folds[s] for s in found.session_ids]), (
            f"assigned: StratifiedGroupKFold({config.n_folds}, seed={config.seed})"
        )
    table, where = read_folds(config.folds)
    given = dict(zip(table["session_id"].to_pylist(), table["fold"].to_pylist(), strict=True))
    missing = [s for s in found.session_ids if s not in given]
    if missing:
        raise BaselineError(
            f"--folds: {len(missing)} of the {len(found.session_ids)} labelled sessions have no "
            f"fold in {where} (were the folds made from another corpus or truth?)"
        )
    fold = np.array([given[s] for s in found.session_ids])
    per_client = (
        pl.DataFrame({"client": found.client_ids, "fold": fold})
        .group_by("client")
        .agg(pl.col("fold").n_unique())
    )
    split = int((per_client["fold"] > 1).sum())
    if split:
        raise BaselineError(
            f"--folds: {split} client(s) have sessions in two folds of {where}, so a held-out "
            "session could be scored by a model that saw its client"
        )
    if len(np.unique(fold)) < 2:
        raise BaselineError(f"--folds: {where} holds one fold; cross-fitting needs at least two")
    return fold, where


# ---- fitting ----


def fit_target(
    config: BaselineConfig,
    counts,
    y: np.ndarray,
    clients: np.ndarray,
):
    """The grid search over penalties with client-disjoint inner folds; returns (the refitted best
    pipeline, its penalty, its inner-CV score)."""
    from sklearn.model_selection import GridSearchCV, GroupKFold

    n_clients = len(set(clients))
    if n_clients < config.inner_folds:
        raise BaselineError(
            f"{n_clients} clients in a training set cannot fill {config.inner_folds} "
            "client-disjoint inner folds (--inner-folds)"
        )
    search = GridSearchCV(
        make_pipeline(config),
        {"ridge__alpha": config.alphas},
        cv=GroupKFold(n_splits=config.inner_folds),
        scoring=INNER_SCORING,
        refit=True,
        n_jobs=1,
    )
    search.fit(counts, y, groups=clients)
    return (
        search.best_estimator_,
        float(search.best_params_["ridge__alpha"]),
        float(search.best_score_),
    )


def _scale(rubric: Rubric) -> tuple[float, float]:
    return float(min(rubric.scale)), float(max(rubric.scale))


def cross_fit(
    config: BaselineConfig,
    found: Labelled,
    fold: np.ndarray,
    targets: list[Target],
    rubric: Rubric,
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Every labelled session predicted by the model of the fold that held it out: target name →
    predictions (in found's order), and per fold and target the chosen penalty and inner score."""
    low, high = _scale(rubric)
    n = len(found.session_ids)
    predictions = {t.name: np.full(n, np.nan) for t in targets}
    _, counts = count_ngrams(found.texts)
    clients = np.asarray(found.client_ids, dtype=object)
    fits: list[dict[str, Any]] = []
    for k in sorted(np.unique(fold).tolist()):
        test = fold == k
        for t in targets:
            y = np.asarray(found.values[t.name], dtype=float)
            train = ~test & ~np.isnan(y)
            model, alpha, inner = fit_target(config, counts[train], y[train], clients[train])
            predictions[t.name][test] = np.clip(model.predict(counts[test]), low, high)
            fits.append(
                {
                    "fold": int(k),
                    "target": t.name,
                    "alpha": alpha,
                    f"inner_cv_{INNER_SCORING}": inner,
                    "n_train": int(train.sum()),
                    "n_test": int(test.sum()),
                    "n_test_with_truth": int((test & ~np.isnan(y)).sum()),
                }
            )
            log.info(
                "fold %s %s: alpha %.3g, inner %s %.3f", k, t.name, alpha, INNER_SCORING, inner
            )
    return predictions, fits


# ---- writing ----


def sessions_table(
    session_ids: list[str],
    predictions: dict[str, np.ndarray],
    targets: list[Target],
    fold: np.ndarray | None,
) -> pa.Table:
    """The sessions/ table of a scoring run: session_id, goal, task, bond (null where no truth is
    mapped to the dimension), plus the fold that held the session out and the model's name."""
    n = len(session_ids)
    columns: dict[str, pa.Array] = {"session_id": pa.array(session_ids, pa.string())}
    for dim in SCORE_COLUMNS:
        source = next((t for t in targets if dim in t.dimensions), None)
        columns[dim] = (
            pa.array(predictions[source.name], pa.float64(), from_pandas=True)
            if source is not None
            else pa.nulls(n, pa.float64())
        )
    columns["fold"] = pa.array(fold, pa.int32()) if fold is not None else pa.nulls(n, pa.int32())
    columns["model"] = pa.array([MODEL_NAME] * n, pa.string())
    return pa.table(columns)


def settings_of(config: BaselineConfig, truth: Truth, dimensions: list[str]) -> dict[str, Any]:
    """Everything that changes the predictions (the fingerprint's input)."""
    settings = json.loads(config.model_dump_json(exclude={"out", "batch_size"}))
    settings["truth_dimensions"] = truth.describe(dimensions)
    settings["model"] = MODEL_NAME
    return settings


def prepare_out(out: Path) -> None:
    """An out folder holds one run: its sessions/ parts (and a cross-fit's folds.parquet) are
    replaced, never mixed with an earlier run's."""
    from care_ray.corpus.folds import FOLDS_FILE

    (out / FOLDS_FILE).unlink(missing_ok=True)
    sessions = out / "sessions"
    if sessions.is_dir():
        for old in sessions.glob("part-*.parquet"):
            old.unlink()
    sessions.mkdir(parents=True, exist_ok=True)


def write_json(path: Path, content: dict[str, Any]) -> None:
    from care_ray.evaluation.evaluate import _json_safe

    path.write_text(
        json.dumps(_json_safe(content), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )


# ---- the command ----


def score_corpus(
    config: BaselineConfig,
    vectorizer: Any,
    models: dict[str, Any],
    targets: list[Target],
    rubric: Rubric,
    labelled_ids: set[str],
) -> dict[str, Any]:
    """Stream config.score through the fitted models, one sessions/ part per batch."""
    assert config.score is not None
    low, high = _scale(rubric)
    started = time.monotonic()
    n = in_training = part = 0
    for table in _batches(config.score, ["session_id", "turns"], config.batch_size):
        counts = vectorizer.transform(session_texts(table["turns"], config.text))
        ids = table["session_id"].to_pylist()
        predictions = {t.name: np.clip(models[t.name].predict(counts), low, high) for t in targets}
        pq.write_table(
            sessions_table(ids, predictions, targets, None),
            config.out / "sessions" / f"part-{part:05d}.parquet",
        )
        part += 1
        n += len(ids)
        in_training += sum(s in labelled_ids for s in ids)
    seconds = time.monotonic() - started
    return {
        "corpus": str(config.score),
        "sessions_scored": n,
        "parts": part,
        "sessions_also_in_training": in_training,
        "seconds": round(seconds, 3),
        "sessions_per_second": round(n / seconds, 1) if seconds > 0 else None,
    }


def run_baseline(config: BaselineConfig) -> dict[str, Any]:
    """Fit and cross-fit (or fit on all and score a corpus); writes config.out and returns the
    manifest."""
    from care_ray.cluster.storage import location
    from care_ray.common.versions import package_versions
    from care_ray.corpus.folds import write_folds
    from care_ray.scoring.fingerprint import FINGERPRINT_FILE, digest_of

    started = time.monotonic()
    rubric = load_rubric(config.rubric) if config.rubric else load_rubric()
    dimensions = list(rubric.dimensions)
    try:
        truth = parse_truth(config.truth, dimensions)
    except UserError as e:
        raise BaselineError(str(e)) from None
    targets = targets_of(truth, dimensions)
    found = read_labelled(config, truth, targets, rubric)
    check_labelled(found, truth, config)
    n_labelled = len(found.session_ids)
    per_target = {
        t.name: {
            "dimensions": list(t.dimensions),
            "sessions_with_truth": int(np.sum(~np.isnan(np.asarray(found.values[t.name])))),
        }
        for t in targets
    }
    settings = settings_of(config, truth, dimensions)
    fingerprint = digest_of(settings)
    # the folds are read and checked before out is touched: --folds may name out itself
    fold, fold_source = labelled_folds(config, found) if config.score is None else (None, None)
    config.out.mkdir(parents=True, exist_ok=True)
    prepare_out(config.out)
    manifest: dict[str, Any] = {
        "kind": MANIFEST_KIND,
        "model": MODEL_NAME,
        "mode": "score" if config.score is not None else "cross-fit",
        "fingerprint": fingerprint,
        "truth": {
            "spec": config.truth,
            "kind": truth.kind,
            "dimensions": truth.describe(dimensions),
        },
        "targets": per_target,
        "counts": {
            "sessions_read": found.sessions_read,
            "labelled": n_labelled,
            "skipped_no_truth": found.sessions_read - n_labelled,
        },
    }
    if fold is not None:
        predictions, fits = cross_fit(config, found, fold, targets, rubric)
        table = sessions_table(found.session_ids, predictions, targets, fold)
        pq.write_table(table, config.out / "sessions" / "part-00000.parquet")
        write_folds(dict(zip(found.session_ids, fold.tolist(), strict=True)), location(config.out))
        manifest["folds"] = {
            "source": fold_source,
            "n_folds": len(np.unique(fold)),
            "sessions_per_fold": {
                str(k): int(v) for k, v in zip(*np.unique(fold, return_counts=True), strict=True)
            },
        }
        manifest["fits"] = fits
        manifest["counts"]["predicted"] = table.num_rows
    else:
        models: dict[str, Any] = {}
        fits = []
        clients = np.asarray(found.client_ids, dtype=object)
        fit_started = time.monotonic()
        vectorizer, counts = count_ngrams(found.texts)
        for t in targets:
            y = np.asarray(found.values[t.name], dtype=float)
            train = ~np.isnan(y)
            models[t.name], alpha, inner = fit_target(
                config, counts[train], y[train], clients[train]
            )
            fits.append(
                {
                    "fold": None,
                    "target": t.name,
                    "alpha": alpha,
                    f"inner_cv_{INNER_SCORING}": inner,
                    "n_train": int(train.sum()),
                }
            )
        manifest["fits"] = fits
        manifest["fit_seconds"] = round(time.monotonic() - fit_started, 3)
        manifest["scored"] = score_corpus(
            config, vectorizer, models, targets, rubric, set(found.session_ids)
        )
        manifest["counts"]["predicted"] = manifest["scored"]["sessions_scored"]
    manifest["settings"] = settings
    manifest["seconds"] = round(time.monotonic() - started, 3)
    manifest["versions"] = package_versions()
    write_json(config.out / "manifest.json", manifest)
    write_json(
        config.out / FINGERPRINT_FILE,
        {"fingerprint": fingerprint, "settings": settings, "info": {"kind": MANIFEST_KIND}},
    )
    return manifest
