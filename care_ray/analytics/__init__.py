"""analytics: findings mined from a corpus and its scores (or its own labels) — interaction
features (Polars), drivers (regressions), group contrasts, challenges in low-scored rationales,
and the `analyze` job that runs the SQL of queries/ and writes the tables.

May import: common, contracts, cluster, corpus, scoring, evaluation."""
