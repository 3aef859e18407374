"""Recurring challenges, read from the rationales of low-scored items (the paper did this by hand).

- `distinctive_terms`: the words most typical of one group's rationales (e.g. low-scored Task items)
  against all other groups', by the weighted log-odds ratio with an informative Dirichlet prior of
  Monroe, Colaresi & Quinn (2008, "Fightin' words", eq. 16–22). With y the term's count in the group,
  r its count in the other groups, n_y and n_r their token totals, and a prior α_w = prior_scale ×
  (the term's count in all groups), α0 = Σ α_w:
      log_odds = log((y + α_w) / (n_y + α0 − y − α_w)) − log((r + α_w) / (n_r + α0 − r − α_w))
      z        = log_odds / sqrt(1 / (y + α_w) + 1 / (r + α_w))
- `cluster_rationales`: groups of similar rationales within each group (TF-IDF, LSA, k-means), each
  with its top terms and the rationale nearest its centre as an example.

Tokens: English text by words (lowercased, scikit-learn's English stop words removed, unigrams and
bigrams); Chinese text by characters (1–2 character n-grams over the Han characters only; n-grams do
not cross punctuation or Latin words). A document counts as Chinese when at least CJK_SHARE of its
non-space characters are Han, or when its language starts with "zh" and it has any Han character
(so an English rationale of a Chinese session is read as English).
Rationales can quote the transcript: nothing here logs text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

log = logging.getLogger(__name__)

TERM_SCHEMA = {
    "dimension": pl.String,
    "term": pl.String,
    "count": pl.Int64,
    "log_odds": pl.Float64,
    "z": pl.Float64,
}
CLUSTER_SCHEMA = {
    "dimension": pl.String,
    "cluster": pl.Int64,
    "size": pl.Int64,
    "top_terms": pl.String,
    "example_rationale": pl.String,
    "example_quote": pl.String,
}
CJK_SHARE = 0.3
HAN = r"\p{Han}"
# Below this many documents a group is one cluster: k-means and silhouettes mean little there.
MIN_CLUSTER_DOCS = 10
MAX_K = 8
TOP_TERMS_PER_CLUSTER = 8
LSA_COMPONENTS = 50
K_SEARCH_SAMPLE = 3000


def distinctive_terms(
    docs: pl.DataFrame,
    group_col: str = "dimension",
    text_col: str = "rationale",
    language_col: str | None = "language",
    top_k: int = 20,
    prior_scale: float = 1.0,
    max_docs: int | None = 100_000,
    seed: int = 0,
) -> pl.DataFrame:
    """The top_k terms by z of each group against all the other groups; empty with fewer than 2 groups.

    Above max_docs documents, a uniform sample of max_docs (fixed seed) is counted, so `count` is
    the count in the sample. Raises ValueError when a named column is missing."""
    _check_columns(docs, [group_col, text_col, language_col])
    docs = _usable(docs, group_col, text_col)
    if max_docs is not None and docs.height > max_docs:
        log.info(
            "distinctive terms: counting a sample of %d of %d documents (seed %d)",
            max_docs,
            docs.height,
            seed,
        )
        docs = docs.sample(n=max_docs, seed=seed)
    groups = docs[group_col].cast(pl.String)
    names = sorted(groups.unique().to_list())
    if len(names) < 2:
        return pl.DataFrame(schema=TERM_SCHEMA)
    matrix, terms = term_matrix(
        docs[text_col], is_chinese(docs, text_col, language_col), _count_vectorizer
    )
    if not terms:
        return pl.DataFrame(schema=TERM_SCHEMA)
    codes = groups.replace_strict(names, list(range(len(names))), return_dtype=pl.Int64).to_numpy()
    membership = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(names), len(codes))
    )
    counts = np.asarray((membership @ matrix).todense())
    log_odds, z = log_odds_z(counts, prior_scale)
    return _top_terms_table(names, np.asarray(terms, dtype=object), counts, log_odds, z, top_k)


def log_odds_z(counts: np.ndarray, prior_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(groups × terms) counts → each group's weighted log-odds ratio against the rest, and its z."""
    counts = np.asarray(counts, dtype=float)
    alpha = prior_scale * counts.sum(axis=0)
    alpha0 = alpha.sum()
    rest = counts.sum(axis=0) - counts
    n_group = counts.sum(axis=1, keepdims=True)
    n_rest = counts.sum() - n_group
    with np.errstate(divide="ignore", invalid="ignore"):
        log_odds = np.log((counts + alpha) / (n_group + alpha0 - counts - alpha)) - np.log(
            (rest + alpha) / (n_rest + alpha0 - rest - alpha)
        )
        z = log_odds / np.sqrt(1 / (counts + alpha) + 1 / (rest + alpha))
    return log_odds, z


def _top_terms_table(names, terms, counts, log_odds, z, top_k) -> pl.DataFrame:
    frames = []
    for i, name in enumerate(names):
        scores = np.where((counts[i] > 0) & np.isfinite(z[i]), z[i], -np.inf)
        k = min(top_k, int(np.isfinite(scores).sum()))
        if k == 0:
            continue
        top = np.array(
            sorted(np.argpartition(-scores, k - 1)[:k], key=lambda j: (-scores[j], terms[j])),
            dtype=np.int64,
        )
        frames.append(
            pl.DataFrame(
                {
                    "dimension": name,
                    "term": terms[top].tolist(),
                    "count": counts[i, top].astype(np.int64),
                    "log_odds": log_odds[i, top],
                    "z": z[i, top],
                },
                schema=TERM_SCHEMA,
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame(schema=TERM_SCHEMA)


def cluster_rationales(
    docs: pl.DataFrame,
    group_col: str = "dimension",
    text_col: str = "rationale",
    quote_col: str | None = "quotes",
    k: int | None = None,
    max_docs: int = 20000,
    seed: int = 0,
    language_col: str | None = "language",
) -> pl.DataFrame:
    """Clusters of similar rationales in each group, largest first (cluster 0), one row per cluster.

    k=None picks k in 2..8 by the best silhouette (on a sample of up to 3,000 documents). A group
    above max_docs documents is clustered on a sample (fixed seed) and `size` scaled back to the
    whole group. A group with fewer than 10 documents, or fewer than 3 distinct ones, is one cluster.
    Raises ValueError when a named column is missing."""
    _check_columns(docs, [group_col, text_col, quote_col, language_col])
    docs = _usable(docs, group_col, text_col).with_columns(pl.col(group_col).cast(pl.String))
    frames = [
        _cluster_group(
            str(name),
            docs.filter(pl.col(group_col) == name),
            text_col,
            quote_col,
            language_col,
            k,
            max_docs,
            seed,
        )
        for name in sorted(docs[group_col].unique().to_list())
    ]
    return pl.concat(frames) if frames else pl.DataFrame(schema=CLUSTER_SCHEMA)


def _cluster_group(
    name, group, text_col, quote_col, language_col, k, max_docs, seed
) -> pl.DataFrame:
    total = group.height
    if total > max_docs:
        log.info(
            "clusters: group %s clustered on a sample of %d of %d documents (seed %d)",
            name,
            max_docs,
            total,
            seed,
        )
        group = group.sample(n=max_docs, seed=seed)
    matrix, terms = term_matrix(
        group[text_col], is_chinese(group, text_col, language_col), _tfidf_vectorizer(group.height)
    )
    distinct = group[text_col].n_unique()
    if group.height < MIN_CLUSTER_DOCS or distinct < 3 or not terms:
        labels = np.zeros(group.height, dtype=np.int64)
        centre_distance = _distance_to_mean(matrix)
    else:
        labels, centre_distance = _kmeans(matrix, k, min(MAX_K, distinct - 1), seed)
    return _cluster_table(
        name,
        group,
        text_col,
        quote_col,
        matrix,
        np.asarray(terms, dtype=object),
        labels,
        centre_distance,
        total,
    )


def _kmeans(
    matrix: sp.csr_matrix, k: int | None, max_k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels, and each document's distance to its cluster's centre, in the LSA space.

    Without k, each k in 2..max_k is fitted on a sample of up to K_SEARCH_SAMPLE documents and the
    best silhouette there wins; the chosen k is then fitted on all documents."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    space = _lsa(matrix, seed)
    if k is None:
        rows = np.random.default_rng(seed).permutation(space.shape[0])[:K_SEARCH_SAMPLE]
        sample = space[np.sort(rows)]
        models = {
            n: KMeans(n_clusters=n, n_init=1, random_state=seed).fit(sample)
            for n in range(2, max_k + 1)
        }
        scored = {
            n: silhouette_score(sample, m.labels_)
            for n, m in models.items()
            if len(np.unique(m.labels_)) > 1
        }
        k = max(scored, key=lambda n: (scored[n], -n)) if scored else 2
    model = KMeans(n_clusters=min(max(k, 1), max_k + 1), n_init=3, random_state=seed).fit(space)
    distance = model.transform(space)[np.arange(space.shape[0]), model.labels_]
    return model.labels_.astype(np.int64), distance


def _lsa(matrix: sp.csr_matrix, seed: int) -> np.ndarray:
    """TF-IDF rows reduced by truncated SVD and scaled to unit length (k-means on cosine geometry)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.preprocessing import normalize

    components = min(LSA_COMPONENTS, matrix.shape[0] - 1, matrix.shape[1] - 1)
    if components < 2:
        return normalize(matrix.toarray())
    return normalize(TruncatedSVD(n_components=components, random_state=seed).fit_transform(matrix))


def _distance_to_mean(matrix: sp.csr_matrix) -> np.ndarray:
    """Minus each row's dot product with the mean row: smaller is nearer (rows are unit TF-IDF)."""
    centre = np.asarray(matrix.mean(axis=0)).ravel()
    return -np.asarray(matrix @ centre).ravel()


def _cluster_table(
    name, group, text_col, quote_col, matrix, terms, labels, centre_distance, total
) -> pl.DataFrame:
    clusters = np.unique(labels)
    sizes = np.array([(labels == c).sum() for c in clusters])
    order = np.lexsort((clusters, -sizes))
    membership = sp.csr_matrix(
        (np.ones(len(labels)), (labels, np.arange(len(labels)))),
        shape=(labels.max() + 1, len(labels)),
    )
    weights = (
        np.asarray((membership @ matrix).todense())
        if len(terms)
        else np.zeros((labels.max() + 1, 0))
    )
    quotes = group[quote_col] if quote_col else None
    rows = []
    for rank, pos in enumerate(order):
        c = clusters[pos]
        members = np.flatnonzero(labels == c)
        example = int(members[np.argmin(centre_distance[members])])
        rows.append(
            {
                "dimension": name,
                "cluster": rank,
                "size": int(round(sizes[pos] * total / len(labels))),
                "top_terms": ", ".join(_top(weights[c], terms)),
                "example_rationale": group[text_col][example],
                "example_quote": _first_quote(quotes[example]) if quotes is not None else None,
            }
        )
    return pl.DataFrame(rows, schema=CLUSTER_SCHEMA)


def _top(weights: np.ndarray, terms: np.ndarray) -> list[str]:
    positive = np.flatnonzero(weights > 0)
    return [
        terms[j]
        for j in sorted(positive, key=lambda j: (-weights[j], terms[j]))[:TOP_TERMS_PER_CLUSTER]
    ]


def _first_quote(quotes) -> str | None:
    if quotes is None:
        return None
    if isinstance(quotes, str):
        return quotes or None
    items = quotes.to_list() if isinstance(quotes, pl.Series) else list(quotes)
    return next((q for q in items if q), None)


def _check_columns(docs: pl.DataFrame, columns: list[str | None]) -> None:
    missing = [c for c in columns if c is not None and c not in docs.columns]
    if missing:
        raise ValueError(f"challenges: no column(s) {', '.join(missing)} in the rationales")


def _usable(docs: pl.DataFrame, group_col: str, text_col: str) -> pl.DataFrame:
    return docs.filter(
        pl.col(group_col).is_not_null() & (pl.col(text_col).str.strip_chars().str.len_chars() > 0)
    )


def is_chinese(docs: pl.DataFrame, text_col: str, language_col: str | None) -> np.ndarray:
    """Per document: tokenise by Han characters rather than by words (see the module notes)."""
    text = pl.col(text_col)
    han = text.str.count_matches(HAN)
    share = han / text.str.replace_all(r"\s", "").str.len_chars().clip(lower_bound=1)
    by_language = (
        pl.col(language_col)
        .cast(pl.String)
        .str.to_lowercase()
        .str.starts_with("zh")
        .fill_null(False)
        & (han > 0)
        if language_col
        else pl.lit(False)
    )
    return docs.select(((share >= CJK_SHARE) | by_language).fill_null(False)).to_series().to_numpy()


def term_matrix(
    texts: pl.Series, chinese: np.ndarray, make_vectorizer: Callable[[bool], object]
) -> tuple[sp.csr_matrix, list[str]]:
    """Documents × terms, rows in the order of `texts`; English and Chinese documents are vectorised
    apart (each with its own vocabulary) and their columns placed side by side."""
    blocks, names, order = [], [], []
    for chinese_part in (False, True):
        rows = np.flatnonzero(chinese == chinese_part)
        if not len(rows):
            continue
        part = texts.gather(rows)
        if chinese_part:
            part = part.str.replace_all(r"[^\p{Han}]+", " ")
        block, terms = _vectorize(part.to_list(), make_vectorizer(chinese_part), chinese_part)
        blocks.append(block)
        names.extend(terms)
        order.append(rows)
    if not blocks:
        return sp.csr_matrix((0, 0)), []
    inverse = np.argsort(np.concatenate(order))
    return sp.block_diag(blocks, format="csr")[inverse], names


def _vectorize(texts: list[str], vectorizer, chinese: bool) -> tuple[sp.csr_matrix, list[str]]:
    from sklearn.preprocessing import normalize

    try:
        block = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # nothing left after stop words / min_df: the part adds no terms
        return sp.csr_matrix((len(texts), 0)), []
    terms = vectorizer.get_feature_names_out()
    if chinese:  # character n-grams that span the space put between Han runs are not terms
        keep = np.flatnonzero(np.char.find(terms.astype(str), " ") < 0)
        block, terms = block[:, keep], terms[keep]
        if getattr(vectorizer, "norm", None):
            block = normalize(block, norm=vectorizer.norm)
    return block, terms.tolist()


def _count_vectorizer(chinese: bool):
    from sklearn.feature_extraction.text import CountVectorizer

    if chinese:
        return CountVectorizer(analyzer="char", ngram_range=(1, 2))
    return CountVectorizer(lowercase=True, stop_words="english", ngram_range=(1, 2))


def _tfidf_vectorizer(n_docs: int) -> Callable[[bool], object]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Terms in a single document cannot make a cluster; only drop them when there are enough documents.
    min_df = 2 if n_docs >= 50 else 1

    def make(chinese: bool):
        if chinese:
            return TfidfVectorizer(
                analyzer="char",
                ngram_range=(1, 2),
                min_df=min_df,
                sublinear_tf=True,
                max_features=20000,
            )
        return TfidfVectorizer(
            lowercase=True,
            stop_words="english",
            ngram_range=(1, 2),
            min_df=min_df,
            sublinear_tf=True,
            max_features=20000,
        )

    return make
