"""One way to configure every command: a pydantic model, filled by `load_options` from, in order,
the model's defaults, a YAML `--config` file (the same keys), then the command line — flags and
`--set KEY=VALUE` overrides (KEY dotted into nested settings, VALUE read as YAML). A key given
both as a flag and with --set is refused, so the precedence never surprises. Every mistake is one
line that names the option the way the user gave it (`--max-model-len: …`, `lora.r (--set): …`,
`run.yaml: epochs: …`, `--out is required`).

A field says how it appears on the command line with `json_schema_extra=cli(...)`; the Typer side
(care_ray.cli.options) reads that, so a config model lives with the library code it configures."""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from care_ray.common.errors import UserError


def cli(**meta: Any) -> dict[str, Any]:
    """A field's command-line shape, for `Field(json_schema_extra=cli(...))`: flag="--name" (or
    "--on/--off"), hidden=True (config file and --set only), argument=True (positional),
    type=T (what the command line parses when it differs from the field's type), help="…"."""
    return {"cli": meta}


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set` entries (`KEY=VALUE`, KEY dotted into nested settings such as `lora.r`) → {KEY:
    value}. VALUE is read as YAML, as it would be in the file: `folds=[0]` is a list, `lora.r=32`
    a number, `max_train_examples=null` unsets a limit."""
    overrides: dict[str, Any] = {}
    for entry in pairs:
        key, sep, text = entry.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise UserError(
                f"--set takes KEY=VALUE with a dotted KEY such as lora.r=32, got {entry!r}"
            )
        try:
            overrides[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise UserError(
                f"--set {key}: {text!r} is not a YAML value: {str(e).splitlines()[0]}"
            ) from None
    return overrides


def apply_overrides(
    raw: dict[str, Any], overrides: Mapping[str, Any], origin: str = "--set"
) -> dict[str, Any]:
    """`raw` with each (possibly dotted) key of `overrides` set; a mapping value merges into the
    mapping it replaces, anything else replaces it."""
    merged = copy.deepcopy(raw)
    for key, value in overrides.items():
        *parents, leaf = str(key).split(".")
        node = merged
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(
                    f"{origin} {key}: {'.'.join(parents[: depth + 1])} is {child!r}, not a group "
                    "of settings"
                )
            node = child
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = apply_overrides(node[leaf], value, origin)
        else:
            node[leaf] = copy.deepcopy(value)
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    from care_ray.common.yamlfile import read_yaml_mapping

    loaded = read_yaml_mapping(path, "config", "a mapping of option names to values", UserError)
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def flag_of(model_cls: type[BaseModel], name: str) -> str | None:
    """The flag a top-level field has on the command line, or None (hidden, or no such field)."""
    field = model_cls.model_fields.get(name)
    if field is None:
        return None
    meta = cli_meta(field)
    if meta.get("hidden") or cli_type_of(field.annotation, meta) is None:
        return None
    if meta.get("argument"):
        return name.upper()
    return str(meta.get("flag") or "--" + name.replace("_", "-")).split("/")[0]


def load_options(
    model_cls: type[BaseModel],
    config_file: str | Path | None = None,
    sets: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    derived: Mapping[str, tuple[Sequence[str], Mapping[str, Any]]] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Any:
    """The command's settings: defaults < --config file < the command line (flags, derived
    flags — `{flag: (the keys it sets, their values)}` — and --set, given as text or already
    parsed as `overrides`; one key given twice on the command line is refused). Raises UserError
    with one line naming the option where anything is wrong."""
    origins: dict[str, str] = {}  # top-level or dotted key → where its value came from
    values: dict[str, Any] = {}
    file_label = str(config_file) if config_file is not None else None
    if config_file is not None:
        values = read_config_file(config_file)
        origins.update({k: "file" for k in values})
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    from_derived: dict[str, str] = {}
    for flag, (_keys, expanded) in (derived or {}).items():
        for key, value in expanded.items():
            if key in given:
                raise UserError(
                    f"{flag} sets {key}, and so does {flag_of(model_cls, key) or key}; give one"
                )
            given[key] = value
            from_derived[key] = flag
    overrides = {**parse_overrides(sets), **(overrides or {})}
    for key in overrides:
        top = key.split(".")[0]
        if top in from_derived:
            flag = from_derived[top]
            keys = (derived or {})[flag][0]
            raise UserError(f"{flag} sets {' and '.join(keys)}; drop --set {key} or {flag}")
        if top in given:
            raise UserError(
                f"{flag_of(model_cls, top) or top} and --set {key} both set {top}; give one"
            )
    values = apply_overrides(values, given, "flag")
    values = apply_overrides(values, overrides, "--set")
    origins.update({k: "flag" for k in given})
    origins.update(from_derived)
    origins.update({k: "--set" for k in overrides})
    try:
        return model_cls.model_validate(values)
    except ValidationError as e:
        raise UserError(validation_message(e, model_cls, origins, file_label)) from None


def _origin(loc: tuple[str, ...], origins: Mapping[str, str]) -> str | None:
    for n in range(len(loc), 0, -1):
        key = ".".join(loc[:n])
        if key in origins:
            return origins[key]
    return None


def _known_keys(model_cls: type[BaseModel], prefix: tuple[str, ...]) -> list[str]:
    """The valid keys beside an unknown one at `prefix` (nested models followed by name)."""
    cls: Any = model_cls
    for part in prefix:
        field = getattr(cls, "model_fields", {}).get(part)
        cls = _nested_model(field.annotation) if field is not None else None
        if cls is None:
            return []
    return [".".join((*prefix, k)) for k in getattr(cls, "model_fields", {})]


def validation_message(
    e: ValidationError,
    model_cls: type[BaseModel],
    origins: Mapping[str, str] | None = None,
    file_label: str | None = None,
) -> str:
    """A pydantic error as one line, naming each option as the user gave it."""
    origins = origins or {}
    parts = []
    for err in e.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        loc = tuple(str(x) for x in err["loc"])
        key = ".".join(loc)
        origin = _origin(loc, origins) if loc else None
        if err["type"] == "missing":
            flag = flag_of(model_cls, loc[0]) if len(loc) == 1 else None
            parts.append(f"{flag or key} is required")
            continue
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(key, _known_keys(model_cls, loc[:-1]), n=1)
            where = {"--set": " in --set", "file": f" in {file_label}"}.get(origin or "", "")
            parts.append(
                f"unknown key {key!r}{where}" + (f" (did you mean {near[0]!r}?)" if near else "")
            )
            continue
        if not loc:
            parts.append(msg)
        elif origin == "--set":
            parts.append(f"{key} (--set): {msg}")
        elif origin == "file":
            parts.append(f"{file_label}: {key}: {msg}")
        elif origin == "flag" and len(loc) == 1 and flag_of(model_cls, loc[0]):
            parts.append(f"{flag_of(model_cls, loc[0])}: {msg}")
        elif origin and origin.startswith("--"):
            parts.append(f"{origin} ({key}): {msg}")
        else:
            parts.append(f"{key}: {msg}")
    return "; ".join(parts)


def cli_meta(field: Any) -> dict[str, Any]:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    meta = extra.get("cli") or {}
    return dict(meta) if isinstance(meta, dict) else {}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip_optional(args[0])
    return annotation


def cli_type_of(annotation: Any, meta: Mapping[str, Any]) -> Any:
    """What the command line parses for a field, or None where only a file or --set can say it
    (nested settings, unions of several kinds)."""
    if "type" in meta:
        return meta["type"]
    t = _strip_optional(annotation)
    if t in (bool, int, float, str, Path):
        return t
    origin = get_origin(t)
    if origin is Literal:
        return str
    if origin in (list, tuple) and get_args(t) and _strip_optional(get_args(t)[0]) in (str, Path):
        return list[_strip_optional(get_args(t)[0])]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        kinds = {_strip_optional(a) for a in get_args(t) if a is not type(None)}
        if all(get_origin(k) is Literal or k in (str, bool) for k in kinds):
            return str  # e.g. Literal["auto"] | bool: pydantic reads "true" and "auto" alike
    return None
