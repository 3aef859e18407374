"""analytics: findings mined from a corpus and its scores (or its own labels) — interaction
features (Polars), drivers (regressions), group contrasts, challenges in low-scored rationales,
links of predicted alliance with outcomes (outcomes), ruptures and repairs within sessions
(timeline), what an analysis is asked for (specs), the intervals every table carries
(intervals), and the `analyze` job that runs the SQL of queries/ and writes the tables (analyze,
with what it left out and why in notes), the counselor cards' figures (cards) and a synthetic
scored corpus with planted effects for benchmarks and the demo (synthetic).

May import: common, contracts, cluster, corpus, scoring, evaluation."""
