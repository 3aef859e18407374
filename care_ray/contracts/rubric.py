"""Rubric files (schemas/rubrics/*.yaml) → items, dimensions and the prompt wording."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, model_validator

from care_ray.common.paths import schemas_dir

DIMENSIONS = ("goal", "task", "bond")


class RubricItem(BaseModel):
    id: int = Field(ge=1)
    dimension: str
    text: str = Field(min_length=1)


class PromptText(BaseModel):
    system: str
    preamble: str
    client_label: str
    counselor_label: str
    elided: str = Field(description="marker for cut turns; {n} = how many")
    question: str = Field(description="the item question; {item} = the item's text")
    draft_question: str | None = Field(
        None,
        description="`rationales draft`: asks a teacher to explain a known rating; {item}, "
        "{rating} (1-5) and {anchor} (the rating's scale word)",
    )


class Rubric(BaseModel):
    id: str
    language: str
    instrument: str
    scale: dict[int, str]
    dimensions: list[str]
    items: list[RubricItem]
    prompt: PromptText

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        ids = [i.id for i in self.items]
        if len(set(ids)) != len(ids):
            raise ValueError("rubric item ids must be unique")
        unknown = {i.dimension for i in self.items} - set(self.dimensions)
        if unknown:
            raise ValueError(f"items name dimensions not listed in 'dimensions': {sorted(unknown)}")
        if "{item}" not in self.prompt.question or "{n}" not in self.prompt.elided:
            raise ValueError("prompt.question needs {item} and prompt.elided needs {n}")
        draft = self.prompt.draft_question
        if draft is not None and not all(k in draft for k in ("{item}", "{rating}")):
            raise ValueError("prompt.draft_question needs {item} and {rating}")
        return self

    def item(self, item_id: int) -> RubricItem:
        return next(i for i in self.items if i.id == item_id)

    def select(self, spec: str | None, option: str = "--items") -> list[RubricItem]:
        """'all' / None, a dimension name ('task'), or item ids ('1,2,10'); a mistake names
        `option`."""
        if spec is None or spec.strip().lower() in ("", "all"):
            return list(self.items)
        chosen: list[RubricItem] = []
        for part in (p.strip().lower() for p in spec.split(",") if p.strip()):
            if part in self.dimensions:
                chosen += [i for i in self.items if i.dimension == part]
            elif part.isdigit() and int(part) in {i.id for i in self.items}:
                chosen.append(self.item(int(part)))
            else:
                raise ValueError(
                    f"{option}: {part!r} is neither a dimension ({', '.join(self.dimensions)}) nor an item id"
                )
        unique: dict[int, RubricItem] = {}
        for item in chosen:
            unique.setdefault(item.id, item)
        return list(unique.values())


def rubric_path(language: str = "en") -> Path:
    return schemas_dir() / "rubrics" / f"wai-sr-client.{language}.yaml"


def primary_language(tag: str | None) -> str:
    """A BCP-47 tag's primary subtag, lowercased: 'zh-Hans-CN' → 'zh'; none → 'en'."""
    return (str(tag or "en").replace("_", "-").split("-")[0].strip().lower()) or "en"


def rubric_for_language(
    language: str | None,
    rubric_file: Path | str | None = None,
    language_override: str | None = None,
) -> Rubric:
    """The rubric a session is trained and scored with — one rule for sft-data and score, so the
    two prompts of a (session, item) are the same bytes: the user's rubric file if given; else the
    shipped rubric in `language_override` if given, else in the session's own language; else English."""
    if rubric_file:
        return load_rubric(rubric_file)
    if language_override:
        return load_rubric(language=primary_language(language_override))
    lang = primary_language(language)
    return load_rubric(language=lang) if rubric_path(lang).exists() else load_rubric(language="en")


def rubric_files(rubric_file: Path | str | None = None) -> list[Path]:
    """Every rubric file a run may pick from (for fingerprinting what a run read)."""
    if rubric_file:
        return [Path(rubric_file)]
    return sorted((schemas_dir() / "rubrics").glob("wai-sr-client.*.yaml"))


@cache
def load_rubric(path: Path | str | None = None, language: str = "en") -> Rubric:
    p = Path(path) if path else rubric_path(language)
    if not p.exists():
        raise FileNotFoundError(f"rubric file not found: {p}")
    return Rubric.model_validate(yaml.safe_load(p.read_text(encoding="utf-8")))
