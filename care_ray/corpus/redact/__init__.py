"""De-identification of a corpus before its text travels (issue 24): Presidio finds the PII,
consistent per-session placeholders keep the dialogue readable, and the output is a corpus in the
same contract.

- engine: Presidio built offline (tldextract snapshot, local spaCy folder or a blank pipeline)
- core: pure choice of findings (threshold, allow-list, relative time) and pseudonyms
- job: the Ray Data job and the manifest
- evaluate: recall and precision on a hand-labelled sample"""

from care_ray.corpus.redact.core import Pseudonyms, RedactionPolicy, redact_session
from care_ray.corpus.redact.engine import build_analyzer, build_anonymizer, check_ner_model
from care_ray.corpus.redact.evaluate import evaluate_labels, evaluation_table
from care_ray.corpus.redact.job import (
    RedactRun,
    load_allow,
    load_key,
    parse_thresholds,
    redact_corpus,
    redact_summary,
)

__all__ = [
    "Pseudonyms",
    "RedactRun",
    "RedactionPolicy",
    "build_analyzer",
    "build_anonymizer",
    "check_ner_model",
    "evaluate_labels",
    "evaluation_table",
    "load_allow",
    "load_key",
    "parse_thresholds",
    "redact_corpus",
    "redact_session",
    "redact_summary",
]
