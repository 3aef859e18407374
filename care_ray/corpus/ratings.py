"""The rating a session carries for each rubric item: the client's own (`client_wai`) or a proxy
from a session label through a label map (ESConv: the seeker's empathy and relevance ratings).

One rule for every consumer: `sft-data` trains on these ratings and `rationales draft` asks a
teacher to explain them, so a reviewed rationale always explains the score it is trained with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BeforeValidator

from care_ray.common.errors import UserError
from care_ray.contracts.rubric import Rubric, RubricItem

# ESConv's seeker survey, mapped onto WAI-SR dimensions: the supporter's empathy is closest to the
# Bond; relevance (did the talk address my problem) to Goal and Task.
ESCONV_LABEL_MAP: dict[str, str] = {"empathy": "bond", "relevance": "goal,task"}
CLIENT_WAI = "client_wai"  # the label name of a real client rating
# the metadata key of a reference rationale per item (the CounselingWAI layout: one expert-revised
# rationale per item); {item} is the item id
RATIONALE_KEY = "rationale_{item}"


class RatingError(UserError):
    """A mistake in the user's input (bad label map, a label off the rating scale)."""


def label_map_from_text(value: Any) -> Any:
    """`['empathy=bond', 'relevance=goal,task']` (the command line) → a mapping; a mapping (YAML)
    passes through."""
    if value is None or isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        value = [value]
    pairs = {}
    for entry in value:
        name, sep, items = str(entry).partition("=")
        if not sep or not name.strip() or not items.strip():
            raise ValueError(f"takes LABEL=DIMENSIONS_OR_ITEMS, got {entry!r}")
        pairs[name.strip()] = items.strip()
    return pairs


# a label map as settings take it: {LABEL: dimensions or item ids}, or LABEL=… entries
LabelMapSpec = Annotated[dict[str, str], BeforeValidator(label_map_from_text)]


@dataclass(frozen=True)
class LabelMap:
    """Numeric session label → the rubric items it stands in for (a proxy target)."""

    items_by_label: dict[str, tuple[int, ...]]

    def label_of(self, item_id: int) -> str | None:
        return next((name for name, ids in self.items_by_label.items() if item_id in ids), None)


@dataclass(frozen=True)
class ItemRating:
    score: int  # on the rubric's 1..5 scale
    label: str  # "client_wai", or the session label it stands in for
    value: float  # the label's own value (the score before rounding, for proxies)

    @property
    def proxy(self) -> bool:
        return self.label != CLIENT_WAI


def parse_label_map(spec: Mapping[str, str] | Sequence[str], rubric: Rubric) -> LabelMap:
    """{'empathy': 'bond', 'relevance': 'goal,task'} or ['empathy=bond', 'relevance=1,2,10'] →
    LabelMap. Values use the rubric's item selection syntax (dimensions or item ids); an item may
    take its target from one label only."""
    if not isinstance(spec, Mapping):
        pairs = {}
        for entry in spec:
            if "=" not in entry:
                raise RatingError(f"--label-map takes LABEL=DIMENSIONS_OR_ITEMS, got {entry!r}")
            name, value = entry.split("=", 1)
            pairs[name.strip()] = value.strip()
        spec = pairs
    items_by_label: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for name, value in spec.items():
        try:
            ids = tuple(i.id for i in rubric.select(str(value)))
        except ValueError as e:
            raise RatingError(f"label map {name}={value}: {e}".replace("--items: ", "")) from None
        for i in ids:
            if i in owner:
                raise RatingError(f"item {i} is mapped from both {owner[i]!r} and {name!r}")
            owner[i] = name
        items_by_label[str(name)] = ids
    if not items_by_label:
        raise RatingError("the label map is empty")
    return LabelMap(items_by_label)


def as_score(value: float, what: str) -> int:
    if not 1 <= value <= 5:
        raise RatingError(
            f"{what} = {value:g} is outside 1..5; proxy labels must be on the rating scale"
        )
    return int(np.clip(round(value), 1, 5))


def item_ratings(
    session: Mapping[str, Any], items: Sequence[RubricItem], label_map: LabelMap | None
) -> dict[int, ItemRating]:
    """item id → the session's rating of it; items it has no rating for are absent. The client's
    own ratings win; the label map applies only to sessions without `client_wai`."""
    wai = session.get("client_wai")
    labels = session.get("labels") or {}
    out: dict[int, ItemRating] = {}
    for item in items:
        if wai is not None:
            if wai[item.id - 1] is not None:
                score = int(wai[item.id - 1])
                out[item.id] = ItemRating(score, CLIENT_WAI, float(score))
            continue
        label = label_map.label_of(item.id) if label_map else None
        if label is None or labels.get(label) is None:
            continue
        value = float(labels[label])
        what = f"session {session['session_id']} label {label}"
        out[item.id] = ItemRating(as_score(value, what), label, value)
    return out


class LabelMaps:
    """The label map parsed once per rubric (item ids are the rubric's), from a spec or ESConv's."""

    def __init__(self, spec: Mapping[str, str] | Sequence[str] | None = None):
        self.spec = spec if spec is not None else ESCONV_LABEL_MAP
        self._by_rubric: dict[str, LabelMap] = {}

    def for_rubric(self, rubric: Rubric) -> LabelMap:
        found = self._by_rubric.get(rubric.id)
        if found is None:
            found = self._by_rubric[rubric.id] = parse_label_map(self.spec, rubric)
        return found

    def ratings(
        self, session: Mapping[str, Any], rubric: Rubric, items: Sequence[RubricItem]
    ) -> dict[int, ItemRating]:
        label_map = self.for_rubric(rubric) if session.get("client_wai") is None else None
        return item_ratings(session, items, label_map)
