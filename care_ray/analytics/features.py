"""Per-session interaction features from the turns, with Polars, one bounded batch of sessions at a time.

A session's features depend on its own turns only, so the corpus is read in batches of whole
sessions (only the columns needed) and memory is bounded by the batch, not the corpus.

Base features: turns per role, words per role (whitespace-separated; characters other than
whitespace for zh/ja), words per turn, the counselor's share of all words (talk share) and the
share of counselor turns with a question mark, "?" or "？" (question rate).

Label features (counselor strategies, client reactions and strategy→reaction pairs) are shares
within the session: a strategy's share of the counselor turns that carry a strategy, a reaction's
share of the client turns that carry a reaction, and a pair's share of the session's pairs. A pair
joins a counselor turn's strategy with the reaction on the first client turn after it, so every
turn of a counselor's run of turns is paired with the client's answer to that run.

Vocabularies differ between sources, so a label is only meaningful inside a source that uses it:
a label column is 0 for a session whose source uses that label elsewhere and null for a session
whose source never uses it. A spelling that one source lacks therefore never shows up as "this
source uses it less" — pass a vocabulary map to make two spellings one label. The drivers
regression over a multi-source corpus takes only the labels every source uses (driver_features).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from care_ray.common.errors import UserError

FAMILIES = ("strategy", "reaction", "transition")
PAIR_SEPARATOR = "->"
BASE_FEATURES = [
    "n_turns",
    "client_turns",
    "counselor_turns",
    "client_words",
    "counselor_words",
    "client_words_per_turn",
    "counselor_words_per_turn",
    "counselor_talk_share",
    "counselor_question_rate",
]
# Base features that enter the drivers regression: the rest are sums or ratios of these
# (n_turns = client_turns + counselor_turns), which would make the design singular.
DRIVER_BASE_FEATURES = [
    "n_turns",
    "counselor_words_per_turn",
    "counselor_talk_share",
    "counselor_question_rate",
]
TURN_COLUMNS = ["session_id", "source", "language", "turns"]
# Languages written without spaces between words: their length is counted in characters.
CHARACTER_LANGUAGES = ("zh", "ja")


class VocabularyError(UserError):
    """A vocabulary file that cannot be used."""


class Vocabulary(BaseModel):
    """raw label → canonical label, per family; labels not listed keep their spelling."""

    model_config = ConfigDict(extra="forbid")
    strategy: dict[str, str] = {}
    reaction: dict[str, str] = {}


def load_vocabulary(path: Path | None) -> Vocabulary:
    if path is None:
        return Vocabulary()
    path = Path(path)
    if not path.exists():
        raise VocabularyError(f"vocabulary file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return Vocabulary(**loaded) if isinstance(loaded, dict) else Vocabulary(strategy=loaded)
    except (yaml.YAMLError, ValidationError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VocabularyError(
            f"{path}: expected {{strategy: {{raw: canonical}}, reaction: {{raw: canonical}}}} ({first})"
        ) from None


def feature_name(family: str, label: str) -> str:
    return f"{family}:{label}"


def _word_count(by_characters: pl.Series) -> pl.Expr:
    """Words per turn; characters (less whitespace) for the languages written without spaces.
    Only the branch a batch needs is computed: both would double the cost of the string scan."""
    words = pl.col("text").str.count_matches(r"\S+")
    characters = pl.col("text").str.len_chars() - pl.col("text").str.count_matches(r"\s")
    if not by_characters.any():
        return words
    if by_characters.all():
        return characters
    return pl.when(pl.col("by_characters")).then(characters).otherwise(words)


def turn_rows(sessions: pl.DataFrame, vocabulary: Vocabulary | None = None) -> pl.DataFrame:
    """One row per turn: sid (the session's row in `sessions`), role, words, question, strategy,
    reaction and next_reaction (the reaction on the first client turn after this turn in the same
    session). Rows stay in session and turn order."""
    vocabulary = vocabulary or Vocabulary()
    by_characters = pl.any_horizontal(
        pl.col("language").str.to_lowercase().str.starts_with(lang) for lang in CHARACTER_LANGUAGES
    ).fill_null(False)
    flags = sessions.select(by_characters.alias("by_characters")).get_column("by_characters")
    strategy, reaction = (
        pl.col("turns").struct.field("strategy"),
        pl.col("turns").struct.field("reaction"),
    )
    turns = (
        sessions.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("sid"), flags, "turns")
        .explode("turns")
        .filter(pl.col("turns").is_not_null())
        .select(
            "sid",
            "by_characters",
            pl.col("turns").struct.field("role"),
            pl.col("turns").struct.field("text").fill_null(""),
            strategy.replace(vocabulary.strategy) if vocabulary.strategy else strategy,
            reaction.replace(vocabulary.reaction) if vocabulary.reaction else reaction,
        )
        .set_sorted("sid")
    )
    is_client = pl.col("role") == "client"
    # Rows of a session are contiguous after explode: a backward fill finds the next client turn, and
    # comparing its session index stops the fill from crossing into the next session.
    next_client_sid = pl.when(is_client).then(pl.col("sid")).shift(-1).backward_fill()
    next_client_reaction = (
        pl.when(is_client).then(pl.col("reaction").fill_null("")).shift(-1).backward_fill()
    )
    next_reaction = pl.when(next_client_sid == pl.col("sid")).then(next_client_reaction)
    return turns.select(
        "sid",
        "role",
        _word_count(flags).cast(pl.Int64).alias("words"),
        pl.col("text").str.contains(r"[?？]").alias("question"),
        "strategy",
        "reaction",
        pl.when(next_reaction != "").then(next_reaction).alias("next_reaction"),
    )


def session_counts(turns: pl.DataFrame) -> pl.DataFrame:
    """Per sid: turn, word and question counts (the base features before ratios) and how many
    turns carry a strategy, a reaction and a strategy→reaction pair."""
    client, counselor = pl.col("role") == "client", pl.col("role") == "counselor"
    has_strategy = counselor & pl.col("strategy").is_not_null()
    return turns.group_by("sid").agg(
        pl.len().cast(pl.Int64).alias("n_turns"),
        client.sum().cast(pl.Int64).alias("client_turns"),
        counselor.sum().cast(pl.Int64).alias("counselor_turns"),
        pl.col("words").filter(client).sum().alias("client_words"),
        pl.col("words").filter(counselor).sum().alias("counselor_words"),
        (counselor & pl.col("question")).sum().cast(pl.Int64).alias("counselor_questions"),
        has_strategy.sum().alias("_n_strategy"),
        (client & pl.col("reaction").is_not_null()).sum().alias("_n_reaction"),
        (has_strategy & pl.col("next_reaction").is_not_null()).sum().alias("_n_transition"),
    )


def label_counts(turns: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(labels, pairs): labels = sid, family, label, n for strategies on counselor turns, reactions on
    client turns and strategy->reaction pairs; pairs = sid, strategy, reaction, n for each labelled
    counselor turn whose next client turn carries a reaction."""
    counselor, client = pl.col("role") == "counselor", pl.col("role") == "client"
    strategies = (
        turns.filter(counselor & pl.col("strategy").is_not_null())
        .group_by("sid", pl.col("strategy").alias("label"))
        .len("n")
    )
    reactions = (
        turns.filter(client & pl.col("reaction").is_not_null())
        .group_by("sid", pl.col("reaction").alias("label"))
        .len("n")
    )
    pairs = (
        turns.filter(
            counselor & pl.col("strategy").is_not_null() & pl.col("next_reaction").is_not_null()
        )
        .group_by("sid", "strategy", pl.col("next_reaction").alias("reaction"))
        .len("n")
    )
    pair_labels = pairs.select(
        "sid", pl.concat_str("strategy", pl.lit(PAIR_SEPARATOR), "reaction").alias("label"), "n"
    )
    labels = pl.concat(
        [
            frame.with_columns(pl.lit(family).alias("family"))
            for family, frame in (
                ("strategy", strategies),
                ("reaction", reactions),
                ("transition", pair_labels),
            )
        ]
    ).select("sid", "family", "label", pl.col("n").cast(pl.Int64))
    return labels, pairs.with_columns(pl.col("n").cast(pl.Int64))


def transition_table(pairs: pl.DataFrame) -> pl.DataFrame:
    """source, strategy, reaction, n, share: share of the strategy's counselor turns (those followed
    by a client turn with a reaction) whose next client turn shows that reaction."""
    return (
        pairs.group_by("source", "strategy", "reaction")
        .agg(pl.col("n").sum())
        .with_columns((pl.col("n") / pl.col("n").sum().over("source", "strategy")).alias("share"))
        .sort("source", "strategy", "reaction")
    )


TRANSITION_TEST_SCHEMA = {
    "source": pl.String,
    "n": pl.Int64,
    "chi2": pl.Float64,
    "dof": pl.Int64,
    "p_value": pl.Float64,
    "cramers_v": pl.Float64,
}


def transition_statistics(
    transitions: pl.DataFrame, alpha: float
) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """Inference on the strategy × reaction table of each source, as columns of the tables.

    Returns (the transitions with share_lo, share_hi: the Wilson interval at 1 − alpha of the
    cell's share of the strategy's turns, and residual: the cell's Pearson residual (obs − exp) /
    √exp against independence of reaction and strategy within its source, > 2 = clearly more
    often than independence predicts), (transition_tests: per source, the chi-square test of
    independence — scipy's, with Yates' correction when df = 1 — and Cramér's V), notes. A source
    with fewer than two strategies or two reactions cannot be tested; a note says so."""
    from scipy.stats import chi2_contingency
    from scipy.stats.contingency import association

    from care_ray.analytics.intervals import with_wilson_interval

    row_n = pl.col("n").sum().over("source", "strategy")
    col_n, total = pl.col("n").sum().over("source", "reaction"), pl.col("n").sum().over("source")
    expected = row_n * col_n / total
    cells = transitions.with_columns(
        pl.when(expected > 0)
        .then((pl.col("n") - expected) / expected.sqrt())
        .cast(pl.Float64)
        .alias("residual")
    )
    cells = with_wilson_interval(
        cells,
        alpha,
        share="share",
        successes=cells["n"],
        trials=cells.select(row_n).to_series(),
    )
    tests, notes = [], []
    for source, part in cells.group_by("source", maintain_order=True):
        wide = part.pivot(on="reaction", index="strategy", values="n", aggregate_function="sum")
        counts = wide.drop("strategy").fill_null(0).to_numpy().astype(float)
        counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
        if min(counts.shape) < 2:
            notes.append(
                f"transition_tests: {source[0]}: no test — fewer than two strategies or reactions"
            )
            continue
        result = chi2_contingency(counts)
        tests.append(
            {
                "source": source[0],
                "n": int(counts.sum()),
                "chi2": float(result.statistic),
                "dof": int(result.dof),
                "p_value": float(result.pvalue),
                "cramers_v": float(association(counts.astype(int), method="cramer")),
            }
        )
    return cells, pl.DataFrame(tests, schema=TRANSITION_TEST_SCHEMA), notes


@dataclass
class TurnFeatures:
    sessions: pl.DataFrame  # session_id, source, BASE_FEATURES, then family:label share columns
    transitions: pl.DataFrame  # source, strategy, reaction, n, share
    label_sources: dict[str, dict[str, list[str]]] = field(
        default_factory=dict
    )  # family → label → sources using it
    sources: list[str] = field(default_factory=list)


def _base_features(counts: pl.DataFrame) -> list[pl.Expr]:
    words = pl.col("client_words") + pl.col("counselor_words")
    ratio = lambda num, den: pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den))  # noqa: E731
    return [
        ratio("client_words", "client_turns").alias("client_words_per_turn"),
        ratio("counselor_words", "counselor_turns").alias("counselor_words_per_turn"),
        pl.when(words > 0).then(pl.col("counselor_words") / words).alias("counselor_talk_share"),
        ratio("counselor_questions", "counselor_turns").alias("counselor_question_rate"),
    ]


def batch_features(
    sessions: pl.DataFrame, vocabulary: Vocabulary | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """For one batch of whole sessions (session_id, source, language, turns): (per-session frame with
    the base features, _n_FAMILY counts and the share of each label seen in the batch, null where the
    session lacks it), (family, label, source) seen, and strategy→reaction pair counts per source."""
    turns = turn_rows(sessions, vocabulary)
    ids = sessions.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("sid"),
        "session_id",
        pl.col("source").cast(pl.String),
    )
    counts = session_counts(turns)
    frame = ids.join(counts, on="sid", how="left").with_columns(_base_features(counts))
    labels, pairs = label_counts(turns)
    if not labels.is_empty():
        shares = labels.select(
            "sid",
            pl.concat_str("family", pl.lit(":"), "label").alias("name"),
            (pl.col("n") / pl.col("n").sum().over("sid", "family")).alias("share"),
        )
        frame = frame.join(
            shares.pivot(on="name", index="sid", values="share"), on="sid", how="left"
        )
    seen = labels.join(ids, on="sid").select("family", "label", "source").unique()
    pair_counts = (
        pairs.join(ids, on="sid").group_by("source", "strategy", "reaction").agg(pl.col("n").sum())
    )
    return frame.drop("sid"), seen, pair_counts


def _fill_label_shares(
    sessions: pl.DataFrame, label_sources: dict[str, dict[str, list[str]]]
) -> pl.DataFrame:
    """0 for a label the session's source uses but the session does not; null where the source never
    uses it or the session has no labelled turn of that family."""
    fills = []
    for family in FAMILIES:
        for label, sources in sorted(label_sources.get(family, {}).items()):
            name = feature_name(family, label)
            present = (pl.col(f"_n_{family}") > 0) & pl.col("source").is_in(sources)
            fills.append(
                pl.when(present)
                .then(pl.col(name).fill_null(0.0))
                .otherwise(pl.col(name))
                .alias(name)
            )
    names = [feature_name(f, lab) for f in FAMILIES for lab in sorted(label_sources.get(f, {}))]
    return sessions.with_columns(fills).select("session_id", "source", *BASE_FEATURES, *names)


def features_from_batches(
    frames: list[pl.DataFrame], seen: list[pl.DataFrame], pairs: list[pl.DataFrame]
) -> TurnFeatures:
    """Assemble the per-session table from the batch_features parts (pure; see compute_features)."""
    label_sources: dict[str, dict[str, list[str]]] = {}
    for row in (
        pl.concat(seen)
        .group_by("family", "label")
        .agg(pl.col("source").unique().sort())
        .iter_rows(named=True)
    ):
        label_sources.setdefault(row["family"], {})[row["label"]] = row["source"]
    sessions = _fill_label_shares(pl.concat(frames, how="diagonal_relaxed"), label_sources)
    pair_counts = pl.concat(pairs)
    transitions = (
        transition_table(pair_counts)
        if not pair_counts.is_empty()
        else pl.DataFrame(
            schema={
                "source": pl.String,
                "strategy": pl.String,
                "reaction": pl.String,
                "n": pl.Int64,
                "share": pl.Float64,
            }
        )
    )
    return TurnFeatures(
        sessions=sessions.sort("session_id"),
        transitions=transitions,
        label_sources=label_sources,
        sources=sorted(sessions.get_column("source").unique().to_list()),
    )


def compute_features(
    corpus: Path,
    vocabulary: Vocabulary | None = None,
    batch_size: int = 20000,
    session_ids: pl.Series | None = None,
) -> TurnFeatures:
    """Stream the corpus's sessions (session_id, source, language, turns only) in batches of whole
    sessions; return the per-session features and the strategy→reaction transitions over them.
    With `session_ids`, only those sessions are read."""
    root = _sessions_root(corpus)
    scan = pl.scan_parquet(root, hive_partitioning=True).select(TURN_COLUMNS)
    if session_ids is not None:
        scan = scan.filter(pl.col("session_id").is_in(session_ids.implode()))
    frames, seen, pairs = [], [], []
    for batch in scan.collect_batches(chunk_size=batch_size, maintain_order=False):
        if batch.height == 0:
            continue
        frame, batch_seen, batch_pairs = batch_features(batch, vocabulary)
        frames.append(frame)
        seen.append(batch_seen)
        pairs.append(batch_pairs)
    if not frames:
        raise ValueError(f"no sessions in {corpus}")
    return features_from_batches(frames, seen, pairs)


def _sessions_root(corpus: Path) -> Path:
    corpus = Path(corpus)
    return corpus / "sessions" if (corpus / "sessions").is_dir() else corpus


def driver_features(
    features: TurnFeatures, families: tuple[str, ...] = FAMILIES, min_sessions: int = 10
) -> tuple[list[str], list[str]]:
    """The feature columns for a regression over the whole corpus, and notes on what was left out.

    A label feature enters only if every source that uses its family uses that label (so sessions
    from a source that spells it differently are not dropped or compared) and at least
    `min_sessions` sessions show it. Shares within a family sum to 1, so the most common label of
    each family is left out as the reference: the other shares' coefficients are relative to it."""
    chosen, notes = list(DRIVER_BASE_FEATURES), []
    frame = features.sessions
    for family in families:
        labels = features.label_sources.get(family, {})
        if not labels:
            continue
        family_sources = sorted({s for srcs in labels.values() for s in srcs})
        shared = [lab for lab, srcs in labels.items() if sorted(srcs) == family_sources]
        not_shared = sorted(set(labels) - set(shared))
        if not_shared:
            notes.append(
                f"drivers: {family} labels not used by every source "
                f"({', '.join(family_sources)}) left out: {', '.join(not_shared)} (map "
                "spellings with --vocabulary)"
            )
        support = {
            lab: int((frame.get_column(feature_name(family, lab)).fill_null(0) > 0).sum())
            for lab in shared
        }
        rare = sorted(lab for lab in shared if support[lab] < min_sessions)
        if rare:
            notes.append(
                f"drivers: {family} labels seen in fewer than {min_sessions} sessions left out: {', '.join(rare)}"
            )
        kept = [lab for lab in shared if lab not in rare]
        if len(kept) < 2:
            continue
        reference = max(kept, key=lambda lab: (support[lab], lab))
        notes.append(
            f"drivers: {family} shares are relative to the most common label, {reference!r} (left out as the reference)"
        )
        chosen += [feature_name(family, lab) for lab in sorted(kept) if lab != reference]
    return chosen, notes
