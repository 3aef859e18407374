"""Analytics at scale (issue 7): `care-ray analyze` end to end on a synthetic scored corpus of a million
sessions (goals: ≤ 120 s wall and ≤ 6 GiB peak RSS on 2 cores), and the same computations in pandas on
a subset, side by side in one run (goal: care-ray ≥ 5× pandas, per session).

The corpus comes from benchmarks/synthetic_corpus.py and is cached under the benchmarks' work folder
(`$CARE_RAY_BENCH_DIR`, default /tmp/care-ray-bench); generating it is not measured.

Measured:
1. `python -m care_ray analyze --sessions C --scores C/scores --by source --out OUT` on the whole corpus, as a
   subprocess: wall time, peak RSS of its process tree (sampled), CPU seconds;
2. the same command on the subset (the corpus's first chunks) — the same-size comparison;
3. pandas (pyarrow-backed dtypes, vectorised: explode, .struct, .str, groupby) on the subset: per-session
   features from the exploded turns (counts, words, questions, strategy/reaction/transition shares with
   the per-source rule), the transitions table, population statistics, counselor means with the same
   empirical-Bayes pooling, and per-client trajectories. Not the regressions, contrasts or rationale
   statistics, which care-ray's time includes, so the ratio is conservative.
The pandas figures are then checked against care-ray's tables for the subset: the two did the same work.

    .venv/bin/python benchmarks/analyze_scale.py [--sessions 1000000 --pandas-sessions 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
from _common import PeakRSS, workdir
from synthetic_corpus import generate

GIB = 2**30
DIMENSIONS = ["goal", "task", "bond"]
LOW_THRESHOLD = 2.0
Z95 = 1.959963984540054
PANDAS_BACKENDS = ("pyarrow", "numpy")


# --- corpus ------------------------------------------------------------------------------------------


def corpus_dir(n_sessions: int, seed: int, chunk: int) -> Path:
    return workdir() / f"synthetic-{n_sessions}-seed{seed}-chunk{chunk}"


def ensure_corpus(n_sessions: int, seed: int, chunk: int) -> Path:
    path = corpus_dir(n_sessions, seed, chunk)
    if not (path / "truth.json").exists():
        print(f"generating {n_sessions:,} sessions into {path} (not measured)", flush=True)
        started = time.perf_counter()
        generate(
            path,
            n_sessions,
            seed=seed,
            chunk_size=chunk,
            log=lambda line: print("  " + line, flush=True),
        )
        print(f"generated in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def subset_corpus(corpus: Path, n_chunks: int) -> Path:
    """The corpus's first n_chunks chunks as a corpus of their own (files linked, scores/sessions filtered)."""
    out = corpus.with_name(f"{corpus.name}-first{n_chunks}")
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for f in chunk_files(corpus, n_chunks):
        target = out / f.relative_to(corpus)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(f)
    ids = pq.read_table(
        [f for f in chunk_files(corpus, n_chunks) if "sessions" in f.parts], columns=["session_id"]
    ).column("session_id")
    scores = pq.read_table(corpus / "scores" / "sessions")
    (out / "scores" / "sessions").mkdir(parents=True)
    pq.write_table(
        scores.filter(pc.is_in(scores.column("session_id"), value_set=ids)),
        out / "scores" / "sessions" / "part-00000.parquet",
    )
    (out / "done").write_text("")
    return out


def chunk_files(corpus: Path, n_chunks: int) -> list[Path]:
    wanted = {f"part-{k:05d}.parquet" for k in range(n_chunks)}
    return sorted(
        f
        for f in [
            *(corpus / "sessions").glob("source=*/*.parquet"),
            *(corpus / "scores" / "items").glob("*.parquet"),
        ]
        if f.name in wanted
    )


# --- care-ray ----------------------------------------------------------------------------------------


def run_analyze(corpus: Path, out: Path) -> dict:
    """`care-ray analyze` as a subprocess: wall time, sampled peak RSS of its process tree, CPU seconds."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "care_ray",
        "analyze",
        "--sessions",
        str(corpus),
        "--scores",
        str(corpus / "scores"),
        "--by",
        "source",
        "--out",
        str(out),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    with open(out / "stdout.json", "w") as stdout, open(out / "stderr.log", "w") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        with PeakRSS(proc.pid, interval=0.1) as rss:
            code = proc.wait()
        wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if code != 0:
        raise SystemExit(f"care-ray analyze failed (exit {code}); see {out / 'stderr.log'}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "command": " ".join(cmd),
        "wall_s": wall,
        "peak_rss_gib": rss.peak / GIB,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "n_sessions": manifest["n_sessions"],
        "tables": manifest["tables"],
        "manifest_seconds": manifest["seconds"],
    }


# --- pandas: the same computations ------------------------------------------------------------------


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._t
        self._t = now


def read_turns(files: list[Path], backend: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(sessions, one row per turn) read with pandas.

    backend "pyarrow": Arrow-backed dtypes throughout (explode and .struct stay columnar) — the fastest
    pandas can do. backend "numpy": pandas' defaults — the turns arrive as Python dicts and become a
    frame with pd.DataFrame(list of dicts), as most pandas code does it."""
    kwargs = {"dtype_backend": "pyarrow"} if backend == "pyarrow" else {}
    columns = ["session_id", "client_id", "counselor_id", "session_index", "language", "turns"]
    frames = [
        pd.read_parquet(f, columns=columns, **kwargs).assign(
            source=f.parent.name.removeprefix("source=")
        )
        for f in files
        if "sessions" in f.parts
    ]
    sessions = pd.concat(frames, ignore_index=True)
    exploded = sessions[["session_id", "source", "language", "turns"]].explode(
        "turns", ignore_index=True
    )
    if backend == "pyarrow":
        fields = exploded["turns"].struct.explode()
    else:
        fields = pd.DataFrame(exploded["turns"].tolist(), index=exploded.index)
    turns = pd.concat(
        [exploded.drop(columns="turns"), fields[["role", "text", "strategy", "reaction"]]], axis=1
    )
    return sessions.drop(columns="turns"), turns


def word_counts(text: pd.Series, by_characters: pd.Series) -> pd.Series:
    """Whitespace-separated words; characters (less whitespace) for languages written without spaces.
    Each branch only on its own rows."""
    words = pd.Series(0, index=text.index, dtype="int64")
    spaced = text[~by_characters].str.split()
    words[~by_characters] = (
        spaced.list.len() if isinstance(spaced.dtype, pd.ArrowDtype) else spaced.str.len()
    )
    words[by_characters] = text[by_characters].str.replace(r"\s+", "", regex=True).str.len()
    return words


def pandas_analysis(
    corpus: Path, n_chunks: int, backend: str
) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    stages = Stages()
    files = chunk_files(corpus, n_chunks)
    sessions, turns = read_turns(files, backend)
    stages.lap("read + explode")
    scores = pd.read_parquet(corpus / "scores" / "sessions", columns=["session_id", *DIMENSIONS])
    scores = scores[scores["session_id"].isin(sessions["session_id"])]

    by_characters = turns["language"].str.lower().str.startswith(("zh", "ja")).astype(bool)
    turns["words"] = word_counts(turns["text"], by_characters)
    turns["question"] = turns["text"].str.contains(r"[?？]", regex=True).astype(bool)
    turns["is_client"] = (turns["role"] == "client").astype(bool)
    turns["is_counselor"] = (turns["role"] == "counselor").astype(bool)
    sid = pd.Series(pd.factorize(turns["session_id"])[0], index=turns.index)
    client_reaction = turns["reaction"].fillna("").where(turns["is_client"])
    next_reaction = client_reaction.shift(-1).bfill()
    next_sid = sid.where(turns["is_client"]).shift(-1).bfill()
    turns["next_reaction"] = next_reaction.where((next_sid == sid) & (next_reaction != ""))
    stages.lap("turn columns")

    turns["client_words"] = turns["words"].where(turns["is_client"], 0)
    turns["counselor_words"] = turns["words"].where(turns["is_counselor"], 0)
    turns["counselor_question"] = turns["question"] & turns["is_counselor"]
    counts = turns.groupby("session_id").agg(
        source=("source", "first"),
        n_turns=("role", "size"),
        client_turns=("is_client", "sum"),
        counselor_turns=("is_counselor", "sum"),
        client_words=("client_words", "sum"),
        counselor_words=("counselor_words", "sum"),
        counselor_questions=("counselor_question", "sum"),
    )
    features = counts.assign(
        client_words_per_turn=counts["client_words"]
        / counts["client_turns"].where(counts["client_turns"] > 0),
        counselor_words_per_turn=counts["counselor_words"]
        / counts["counselor_turns"].where(counts["counselor_turns"] > 0),
        counselor_talk_share=counts["counselor_words"]
        / (counts["client_words"] + counts["counselor_words"]),
        counselor_question_rate=counts["counselor_questions"]
        / counts["counselor_turns"].where(counts["counselor_turns"] > 0),
    ).drop(columns="counselor_questions")
    stages.lap("session counts")

    counselor_turns = turns[turns["is_counselor"] & turns["strategy"].notna()]
    pairs = counselor_turns[counselor_turns["next_reaction"].notna()]
    families = {
        "strategy": counselor_turns.assign(label=counselor_turns["strategy"]),
        "reaction": turns[turns["is_client"] & turns["reaction"].notna()].assign(
            label=lambda t: t["reaction"]
        ),
        "transition": pairs.assign(label=pairs["strategy"] + "->" + pairs["next_reaction"]),
    }
    for family, labelled in families.items():
        n = labelled.groupby(["session_id", "label"]).size()
        share = (n / n.groupby(level="session_id").transform("sum")).unstack("label")
        sources_using = labelled.groupby("label")["source"].unique()
        has_family = features.index.isin(share.index)
        share = share.reindex(features.index)
        for label in share.columns:
            present = has_family & features["source"].isin(sources_using[label]).to_numpy()
            share[label] = share[label].where(~present, share[label].fillna(0.0))
        features = features.join(share.add_prefix(f"{family}:"))
    stages.lap("label shares")

    transitions = (
        pairs.groupby(["source", "strategy", "next_reaction"]).size().rename("n").reset_index()
    )
    transitions["share"] = transitions["n"] / transitions.groupby(["source", "strategy"])[
        "n"
    ].transform("sum")
    stages.lap("transitions")

    frame = sessions[["session_id", "client_id", "counselor_id", "session_index", "source"]].merge(
        scores, on="session_id"
    )
    long = frame.melt(
        id_vars=["session_id", "client_id", "counselor_id", "session_index", "source"],
        value_vars=DIMENSIONS,
        var_name="outcome",
    ).dropna(subset=["value"])
    long["value"] = long["value"].astype("float64")
    stages.lap("outcomes")

    grouped = pd.concat(
        [long.assign(group_by="all", grp="all"), long.assign(group_by="source", grp=long["source"])]
    )
    grouped["low"] = (grouped["value"] <= LOW_THRESHOLD).astype("float64")
    g = grouped.groupby(["group_by", "grp", "outcome"])["value"]
    population = pd.DataFrame(
        {
            "n": g.size(),
            "mean": g.mean(),
            "sd": g.std(),
            "q25": g.quantile(0.25),
            "median": g.median(),
            "q75": g.quantile(0.75),
            "low_share": grouped.groupby(["group_by", "grp", "outcome"])["low"].mean(),
        }
    ).reset_index()
    stages.lap("population")

    counselors = pooled_counselor_means(long)
    stages.lap("counselor means")

    trajectories, trajectory_clients, trajectory_summary = client_trajectories(long)
    stages.lap("trajectories")
    tables = {
        "features": features.reset_index(),
        "transitions": transitions,
        "population": population,
        "counselor_profiles": counselors,
        "trajectories": trajectories,
        "trajectory_clients": trajectory_clients,
        "trajectory_summary": trajectory_summary,
    }
    return tables, stages.seconds


def pooled_counselor_means(long: pd.DataFrame, min_sessions: int = 5) -> pd.DataFrame:
    """Per outcome and counselor: raw mean and the empirical-Bayes pooled mean.

    The method of queries/counselor_profiles.sql.
    """
    per = (
        long.dropna(subset=["counselor_id"])
        .groupby(["outcome", "counselor_id"])["value"]
        .agg(n="size", m="mean", s2="var")
        .reset_index()
    )
    multi = per[per["n"] > 1]
    sigma2 = ((multi["n"] - 1) * multi["s2"]).groupby(multi["outcome"]).sum() / (
        multi["n"] - 1
    ).groupby(multi["outcome"]).sum()
    per["sigma2"] = per["outcome"].map(sigma2)
    per["sigma2_n"] = per["sigma2"] / per["n"]
    tau2 = (per.groupby("outcome")["m"].var() - per.groupby("outcome")["sigma2_n"].mean()).clip(
        lower=0
    )
    per["tau2"] = per["outcome"].map(tau2)
    per["w"] = 1 / (per["tau2"] + per["sigma2_n"])
    mu = (per["w"] * per["m"]).groupby(per["outcome"]).sum() / per.groupby("outcome")["w"].sum()
    mu_var = 1 / per.groupby("outcome")["w"].sum()
    per["mu"], per["mu_var"] = per["outcome"].map(mu), per["outcome"].map(mu_var)
    per = per[per["n"] >= min_sessions].copy()
    shrink = per["tau2"] / (per["tau2"] + per["sigma2_n"])
    per["pooled_mean"] = per["mu"] + shrink * (per["m"] - per["mu"])
    se = np.sqrt(shrink * per["sigma2_n"] + (1 - shrink) ** 2 * per["mu_var"])
    per["pooled_lo"], per["pooled_hi"] = (
        per["pooled_mean"] - Z95 * se,
        per["pooled_mean"] + Z95 * se,
    )
    per["rank"] = (
        per.groupby("outcome")["pooled_mean"].rank(ascending=False, method="min").astype(int)
    )
    per["is_strength"] = per["pooled_lo"] > per["mu"]
    return per.rename(columns={"n": "n_sessions", "m": "raw_mean"})[
        [
            "counselor_id",
            "outcome",
            "n_sessions",
            "raw_mean",
            "pooled_mean",
            "pooled_lo",
            "pooled_hi",
            "rank",
            "is_strength",
        ]
    ]


def client_trajectories(long: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per client × outcome with two or more sessions: first, last, least-squares slope over session_index."""
    points = long.dropna(subset=["client_id", "session_index"]).copy()
    points = points[points.groupby(["client_id", "outcome"])["value"].transform("size") >= 2]
    points["x"] = points["session_index"].astype("float64")
    points = points.sort_values(["outcome", "client_id", "x"])
    points["xy"], points["xx"] = points["x"] * points["value"], points["x"] ** 2
    g = points.groupby(["client_id", "outcome"])
    sums = g.agg(
        n_sessions=("x", "size"),
        sx=("x", "sum"),
        sy=("value", "sum"),
        sxy=("xy", "sum"),
        sxx=("xx", "sum"),
        first=("value", "first"),
        last=("value", "last"),
    )
    sums["slope"] = (sums["n_sessions"] * sums["sxy"] - sums["sx"] * sums["sy"]) / (
        sums["n_sessions"] * sums["sxx"] - sums["sx"] ** 2
    )
    sums["rises"] = sums["last"] > sums["first"]
    trajectories = sums[["n_sessions", "first", "last", "slope", "rises"]].reset_index()
    clients = (
        trajectories.groupby("outcome")
        .agg(
            n_clients=("client_id", "size"),
            share_rising=("rises", "mean"),
            mean_slope=("slope", "mean"),
        )
        .reset_index()
    )
    summary = (
        points.groupby(["outcome", "session_index"])["value"]
        .agg(n="size", mean="mean")
        .reset_index()
    )
    return trajectories, clients, summary


# --- checking that pandas and care-ray did the same work ---------------------------------------------


def max_difference(
    ours: pd.DataFrame, theirs: pd.DataFrame, keys: list[str], columns: list[str]
) -> float:
    """Largest absolute difference over `columns` after joining on `keys` (inf when the rows differ)."""
    a = ours[keys + columns].copy()
    b = theirs[keys + columns].copy()
    for k in keys:
        a[k], b[k] = a[k].astype(str), b[k].astype(str)
    merged = a.merge(b, on=keys, how="outer", suffixes=("_pd", "_cr"), indicator=True)
    if (merged["_merge"] != "both").any():
        return float("inf")
    worst = 0.0
    for c in columns:
        x, y = (
            merged[f"{c}_pd"].astype("float64").to_numpy(),
            merged[f"{c}_cr"].astype("float64").to_numpy(),
        )
        if not np.array_equal(np.isnan(x), np.isnan(y)):
            return float("inf")
        both = ~np.isnan(x)
        worst = max(worst, float(np.max(np.abs(x[both] - y[both]), initial=0.0)))
    return worst


def compare(pandas_tables: dict[str, pd.DataFrame], analysis: Path) -> dict[str, float]:
    def read(name: str) -> pd.DataFrame:
        return pd.read_parquet(analysis / f"{name}.parquet")

    features = read("features")
    share_columns = [c for c in pandas_tables["features"].columns if ":" in c]
    base = [
        "n_turns",
        "client_turns",
        "counselor_turns",
        "client_words",
        "counselor_words",
        "counselor_talk_share",
        "counselor_question_rate",
    ]
    transitions = pandas_tables["transitions"].rename(columns={"next_reaction": "reaction"})
    return {
        "features (base)": max_difference(
            pandas_tables["features"], features, ["session_id"], base
        ),
        f"features ({len(share_columns)} label shares)": max_difference(
            pandas_tables["features"], features, ["session_id"], share_columns
        ),
        "transitions": max_difference(
            transitions, read("transitions"), ["source", "strategy", "reaction"], ["n", "share"]
        ),
        "population": max_difference(
            pandas_tables["population"],
            read("population"),
            ["group_by", "grp", "outcome"],
            ["n", "mean", "sd", "q25", "median", "q75", "low_share"],
        ),
        "counselor_profiles": max_difference(
            pandas_tables["counselor_profiles"],
            read("counselor_profiles"),
            ["counselor_id", "outcome"],
            ["n_sessions", "raw_mean", "pooled_mean", "pooled_lo", "pooled_hi", "rank"],
        ),
        "trajectories": max_difference(
            pandas_tables["trajectories"],
            read("trajectories"),
            ["client_id", "outcome"],
            ["n_sessions", "first", "last", "slope"],
        ),
        "trajectory_clients": max_difference(
            pandas_tables["trajectory_clients"],
            read("trajectory_clients"),
            ["outcome"],
            ["n_clients", "share_rising", "mean_slope"],
        ),
    }


# --- planted effects ---------------------------------------------------------------------------------


def planted_effects_found(corpus: Path, analysis: Path) -> dict[str, bool]:
    truth = json.loads((corpus / "truth.json").read_text())
    drivers = pd.read_parquet(analysis / "drivers.parquet")
    profiles = pd.read_parquet(analysis / "counselor_profiles.parquet")
    clients = pd.read_parquet(analysis / "trajectory_clients.parquet")

    def driver(outcome: str, feature: str) -> bool:
        row = drivers[(drivers["outcome"] == outcome) & (drivers["feature"] == feature)]
        return bool(len(row)) and bool(
            (row["coef_std"] > 0).all() and (row["p_adjusted"] < 0.001).all()
        )

    bond = profiles[profiles["outcome"] == "bond"]
    stars = truth["star_counselors"]
    # Counselor effects also vary by chance (sd 0.12 around the stars' +0.6), so a few ordinary
    # ones may rank among them.
    top_share = bond.nsmallest(len(stars), "rank")["counselor_id"].isin(stars).mean()
    return {
        "bond driver " + truth["effects"]["bond"]["feature"]: driver(
            "bond", truth["effects"]["bond"]["feature"]
        ),
        "task driver " + truth["effects"]["task"]["feature"]: driver(
            "task", truth["effects"]["task"]["feature"]
        ),
        f"star counselors >= 90% of the bond top {len(stars)} ({top_share:.0%}) and all is_strength": bool(
            top_share >= 0.9 and bond[bond["counselor_id"].isin(stars)]["is_strength"].all()
        ),
        "mean client slope > 0": bool((clients["mean_slope"] > 0).all()),
    }


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=1_000_000)
    ap.add_argument(
        "--pandas-sessions",
        type=int,
        default=50_000,
        help="pandas runs on the corpus's first chunks, at least this many sessions",
    )
    ap.add_argument("--chunk", type=int, default=50_000, help="sessions per generated chunk")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()

    corpus = ensure_corpus(a.sessions, a.seed, a.chunk)
    truth = json.loads((corpus / "truth.json").read_text())
    n_chunks = min(-(-a.pandas_sessions // a.chunk), -(-a.sessions // a.chunk))
    subset = subset_corpus(corpus, n_chunks)
    out = workdir() / "analyze-scale"
    figures: dict = {
        "corpus": str(corpus),
        "corpus_gib": folder_bytes(corpus) / GIB,
        "truth": {k: truth[k] for k in ("sessions", "turns", "clients", "counselors")},
        "cpus": os.cpu_count(),
    }

    full = run_analyze(corpus, out / "full")
    small = run_analyze(subset, out / "subset")
    figures.update(full=full, subset=small, pandas={})
    for backend in PANDAS_BACKENDS:
        load_before = os.getloadavg()[0]
        with PeakRSS(interval=0.1) as rss:
            rss_at_start = psutil.Process().memory_info().rss
            cpu_before = sum(os.times()[:2])
            started = time.perf_counter()
            tables, stages = pandas_analysis(corpus, n_chunks, backend)
            wall = time.perf_counter() - started
            cpu = sum(os.times()[:2]) - cpu_before
        figures["pandas"][backend] = {
            "sessions": len(tables["features"]),
            "wall_s": wall,
            "cpu_s": cpu,
            "stages_s": stages,
            "peak_rss_gib": rss.peak / GIB,
            "rss_growth_gib": (rss.peak - rss_at_start) / GIB,
            "load_before": load_before,
            "load_after": os.getloadavg()[0],
            "max_abs_diff_vs_care_ray": compare(tables, out / "subset"),
        }
        del tables
    figures["planted_effects_found"] = planted_effects_found(corpus, out / "full")
    rates = {
        "care-ray full": full["n_sessions"] / full["wall_s"],
        "care-ray subset": small["n_sessions"] / small["wall_s"],
    }
    rates |= {f"pandas {b}": r["sessions"] / r["wall_s"] for b, r in figures["pandas"].items()}
    figures["rates_per_s"] = rates
    figures["ratios"] = {
        f"{cr} / pandas {b}": rates[cr] / rates[f"pandas {b}"]
        for cr in ("care-ray full", "care-ray subset")
        for b in PANDAS_BACKENDS
    }
    # CPU seconds per session: steadier than wall time when other work shares the cores
    cpu_per_session = {"care-ray full": full["cpu_s"] / full["n_sessions"]} | {
        f"pandas {b}": r["cpu_s"] / r["sessions"] for b, r in figures["pandas"].items()
    }
    figures["cpu_ratios"] = {
        f"care-ray full / pandas {b}": cpu_per_session[f"pandas {b}"]
        / cpu_per_session["care-ray full"]
        for b in PANDAS_BACKENDS
    }
    (workdir() / f"analyze-scale-{a.sessions}.json").write_text(
        json.dumps(figures, indent=2) + "\n"
    )
    report(figures, truth, corpus)


def report(figures: dict, truth: dict, corpus: Path) -> None:
    """One printed line per figure."""
    full, small = figures["full"], figures["subset"]
    print(
        f"corpus: {truth['sessions']:,} sessions, {truth['turns']:,} turns, "
        f"{12 * truth['sessions']:,} item rows, {truth['clients']:,} clients, "
        f"{truth['counselors']:,} counselors; {figures['corpus_gib']:.2f} GiB on disk at {corpus}"
    )
    for label, run in (
        (f"{full['n_sessions']:,} sessions", full),
        (f"{small['n_sessions']:,} sessions (subset)", small),
    ):
        print(
            f"care-ray analyze, {label}: wall {run['wall_s']:.1f} s (goal <= 120 at 1M), CPU {run['cpu_s']:.1f} s, "
            f"1-min load {run['load_before']:.1f} -> {run['load_after']:.1f} on {figures['cpus']} cores"
        )
        print(
            f"care-ray analyze, {label}: peak RSS {run['peak_rss_gib']:.2f} GiB (goal <= 6 at 1M)"
        )
    for backend, r in figures["pandas"].items():
        print(
            f"pandas ({backend} dtypes), same computations, {r['sessions']:,} sessions: wall "
            f"{r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s, "
            f"RSS growth {r['rss_growth_gib']:.2f} GiB; "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items())
        )
    print(
        "per-session rates: "
        + ", ".join(f"{k} {v:,.0f}/s" for k, v in figures["rates_per_s"].items())
    )
    for k, v in figures["ratios"].items():
        print(f"ratio {k}: {v:.2f}x (goal >= 5)")
    for k, v in figures["cpu_ratios"].items():
        print(f"ratio {k} by CPU seconds per session: {v:.2f}x")
    for backend, r in figures["pandas"].items():
        print(
            f"pandas ({backend}) vs care-ray on the subset, max abs difference: "
            + ", ".join(f"{k} {v:.2g}" for k, v in r["max_abs_diff_vs_care_ray"].items())
        )
    print(
        "planted effects found at full scale: "
        + ", ".join(
            f"{k}: {'yes' if v else 'NO'}" for k, v in figures["planted_effects_found"].items()
        )
    )


if __name__ == "__main__":
    main()
