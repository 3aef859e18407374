"""Presidio's analyzer and anonymizer, built without the network: tldextract reads its bundled
public-suffix snapshot (its default fetches the list over the network on first use), and the NLP
engine is a local spaCy folder or a blank English pipeline (pattern recognizers only), never a
model name Presidio would try to download."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from care_ray.common.errors import UserError

# The entity types redacted unless --entities says otherwise. PERSON, LOCATION and ORGANIZATION
# need an NER model; the rest are pattern recognizers. Presidio knows more (US_PASSPORT, UK_NHS,
# ...), but their bare-digit patterns fire on phone numbers and would mislabel them.
NER_ENTITIES = ("PERSON", "LOCATION", "ORGANIZATION")
PATTERN_ENTITIES = (
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "URL",
    "CREDIT_CARD",
    "IBAN_CODE",
    "IP_ADDRESS",
    "US_SSN",
    "DATE_TIME",
    "STREET_ADDRESS",
)
DEFAULT_ENTITIES = (*NER_ENTITIES, *PATTERN_ENTITIES)

_MONTH = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
)
# Presidio's date patterns are numeric only; "March 3, 1990" and "3rd of May" are dates too.
MONTH_NAME_DATE = (
    rf"\b(?:{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s+\d{{4}})?"
    rf"|{_MONTH}\s+\d{{4}})\b"
)
STREET_ADDRESS = (
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\s+){1,3}"
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl)\b\.?"
)


def offline_tldextract() -> None:
    """Point tldextract's module-level extractor (what Presidio's e-mail recognizer calls) at the
    snapshot shipped inside the package: no suffix-list URLs, no cache folder to refresh."""
    import tldextract
    import tldextract.tldextract as tld

    tld.TLD_EXTRACTOR = tldextract.TLDExtract(
        suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True
    )


def check_ner_model(path: Path | None) -> None:
    """A missing folder or one that is not a spaCy pipeline is the user's mistake, said in one
    line before any worker starts."""
    if path is None:
        return
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--ner-model: no such folder {path}")
    if not (path / "config.cfg").is_file() or not (path / "meta.json").is_file():
        raise UserError(
            f"--ner-model: {path} is not a spaCy pipeline folder (no config.cfg/meta.json; save "
            "one with nlp.to_disk or point at the model folder inside an installed package)"
        )


def _extra_recognizers() -> list[Any]:
    from presidio_analyzer import Pattern, PatternRecognizer

    return [
        PatternRecognizer(
            supported_entity="DATE_TIME",
            name="MonthNameDateRecognizer",
            patterns=[Pattern("month name date", MONTH_NAME_DATE, 0.6)],
            global_regex_flags=0x2 | 0x8,  # re.IGNORECASE | re.MULTILINE
        ),
        PatternRecognizer(
            supported_entity="STREET_ADDRESS",
            name="StreetAddressRecognizer",
            patterns=[Pattern("number + street", STREET_ADDRESS, 0.6)],
            global_regex_flags=0x8,
        ),
    ]


def build_analyzer(ner_model: Path | None = None) -> Any:
    """A Presidio AnalyzerEngine over the spaCy pipeline in `ner_model` (its NER gives PERSON,
    LOCATION, ORGANIZATION), or over a blank English pipeline: tokens only, pattern entities."""
    import logging

    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    offline_tldextract()
    # one warning per recognizer of another language (it, es, pl) at every worker start
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    name = str(ner_model) if ner_model is not None else "blank-en"
    nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": name}])
    # set the pipeline ourselves: Presidio's load() downloads a name it does not find
    pipeline = spacy.load(ner_model) if ner_model is not None else spacy.blank("en")
    nlp_engine.nlp = {"en": pipeline}  # type: ignore[assignment]  # declared None until load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(nlp_engine=nlp_engine, languages=["en"])
    for recognizer in _extra_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(nlp_engine=nlp_engine, registry=registry, supported_languages=["en"])


def build_anonymizer() -> Any:
    from presidio_anonymizer import AnonymizerEngine

    return AnonymizerEngine()


def supported_entities(analyzer: Any) -> set[str]:
    return set(analyzer.get_supported_entities(language="en"))
