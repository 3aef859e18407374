"""How every command reports a user's mistake: one line on stderr, exit code 2, no traceback.
Its own module, so the command modules (training, analytics, evaluation, report, plan) and the
app that assembles them import it, not each other."""

from __future__ import annotations

import difflib

import typer


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2, no traceback."""


def fail(msg: str) -> None:
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


def validation_message(e, known: list[str] | None = None) -> str:
    """A pydantic error as one line, in the user's words: '--max-model-len must be ≥ 256',
    '--out is required', an unknown key with the nearest valid one, or the check's own sentence."""
    parts = []
    for err in e.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        field = ".".join(map(str, err["loc"]))
        option = "--" + field.replace("_", "-") if field else ""
        if err["type"] == "missing":
            parts.append(f"{option} is required")
        elif err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(field, known or [], n=1)
            parts.append(
                f"unknown key {field!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            )
        else:
            parts.append(f"{option}: {msg}" if option else msg)
    return "; ".join(parts)


def load_options(model_cls, config_file, given: dict):
    """A command's settings: a YAML file (same keys as the options) overlaid with the options
    given on the command line; a mistake in either is one line and exit 2."""
    from pydantic import ValidationError

    from care_ray.yaml_files import read_yaml_mapping

    values: dict = {}
    if config_file is not None:
        try:
            loaded = read_yaml_mapping(config_file, "config", "a mapping of option names to values")
        except ValueError as e:
            fail(str(e))
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in given.items() if v is not None})
    try:
        return model_cls(**values)
    except ValidationError as e:
        fail(validation_message(e, list(model_cls.model_fields)))
