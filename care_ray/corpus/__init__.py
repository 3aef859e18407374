"""corpus: sources → a validated sessions corpus and back — ingest (formats, mapping, quarantine,
manifest), reading a corpus (reader: datasets, canonical dicts, validation, export), the rating a
session carries for each item (ratings), client-disjoint folds (folds), and de-identification
with consistent pseudonyms before the text travels (redact/).

May import: common, contracts, cluster."""
