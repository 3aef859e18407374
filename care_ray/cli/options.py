"""One way to add a command: `command(app, name, Model, run)` turns a config model into a Typer
command — one option per field (its description is the help, its default is shown), plus
--config and --set — that loads the settings with care_ray.common.options.load_options and calls
`run(settings)`. A user's mistake is one line on stderr and exit code 2 (`care-ray -v` logs the
traceback)."""

from __future__ import annotations

import inspect
import logging
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from care_ray.common.options import cli_meta, cli_type_of, load_options

log = logging.getLogger("care_ray")

SET_HELP = (
    "override a setting: KEY=VALUE, KEY dotted into groups (lora.r=32), VALUE as in YAML "
    "(folds=[0]); repeatable"
)
CONFIG_HELP = "YAML file with the same keys as these options (unknown keys are refused)"


def fail(msg: str) -> typing.NoReturn:
    """The user's mistake as one line on stderr, exit code 2."""
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(2)


@dataclass(frozen=True)
class Derived:
    """A flag that stands for other settings (finetune --out → output_dir and storage_path)."""

    flag: str
    help: str
    keys: tuple[str, ...]
    expand: Callable[[Any], dict[str, Any]]
    type: Any = str


def _default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined or value is None or value == [] or value == {}:
        return ""
    shown = str(value).lower() if isinstance(value, bool) else value
    return f" \\[default: {shown}]"  # \\[: not rich markup


def _parameters(model_cls: type[BaseModel]) -> list[inspect.Parameter]:
    params = []
    for name, field in model_cls.model_fields.items():
        meta = cli_meta(field)
        cli_type = cli_type_of(field.annotation, meta)
        if meta.get("hidden") or cli_type is None:
            continue
        help_text = (meta.get("help") or field.description or name.replace("_", " ")) + (
            "" if meta.get("no_default_text") else _default_text(field)
        )
        if meta.get("argument"):
            info: Any = typer.Argument(None, help=help_text, show_default=False)
        else:
            flag = str(meta.get("flag") or "--" + name.replace("_", "-"))
            if cli_type is bool and "/" not in flag and field.default is True:
                flag = f"{flag}/--no-{flag[2:]}"
            decls = [flag, *meta.get("aliases", ())]
            info = typer.Option(None, *decls, help=help_text, show_default=False)
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=cli_type | None
            )
        )
    return params


# Errors a command reports as one line: the user's input (UserError and other ValueErrors raised
# by checks, FileNotFoundError and other OSErrors of the paths they gave).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)


def command(
    app: typer.Typer,
    name: str,
    model_cls: type[BaseModel],
    run: Callable[..., None],
    *,
    help: str | None = None,
    derived: Sequence[Derived] = (),
    user_errors: tuple[type[BaseException], ...] = USER_ERRORS,
) -> None:
    """Register `name` on `app`: options from `model_cls`'s fields, --config and --set, and
    `run(settings)` called with the loaded model. Errors in `user_errors` end in one line."""
    params = _parameters(model_cls)
    taken = {p.name for p in params}
    extra = [
        inspect.Parameter(
            f"derived_{i}",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, d.flag, help=d.help, show_default=False),
            annotation=d.type | None,
        )
        for i, d in enumerate(derived)
    ]
    config_name = "config_file" if "config_file" not in taken else "config_file_"
    tail = [
        inspect.Parameter(
            config_name,
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--config", help=CONFIG_HELP, show_default=False),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "set_overrides",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, "--set", help=SET_HELP, show_default=False),
            annotation=list[str] | None,
        ),
    ]

    def invoke(**kwargs: Any) -> None:
        config_file = kwargs.pop(config_name)
        sets = kwargs.pop("set_overrides") or []
        given_derived = {
            d.flag: (d.keys, d.expand(kwargs[f"derived_{i}"]))
            for i, d in enumerate(derived)
            if kwargs.get(f"derived_{i}") is not None
        }
        for i in range(len(derived)):
            kwargs.pop(f"derived_{i}", None)
        try:
            settings = load_options(model_cls, config_file, sets, kwargs, given_derived)
            if "config_file" in inspect.signature(run).parameters:
                run(settings, config_file=config_file)  # to name the file in its messages
            else:
                run(settings)
        except typer.Exit:
            raise
        except user_errors as e:
            log.debug("%s failed", name, exc_info=True)
            fail(str(e))

    signature = inspect.Signature([*params, *extra, *tail])
    invoke.__signature__ = signature  # type: ignore[attr-defined]
    invoke.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    invoke.__name__ = name.replace("-", "_")
    invoke.__doc__ = help or model_cls.__doc__
    app.command(name, help=help or model_cls.__doc__)(invoke)
