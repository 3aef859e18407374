"""corpus: sources → a validated sessions corpus and back — ingest (formats, mapping, quarantine,
manifest), reading a corpus (reader: datasets, canonical dicts, validation, export), the rating a
session carries for each item (ratings) and client-disjoint folds (folds).

May import: common, contracts, cluster."""
