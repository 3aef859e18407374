"""One way to configure every command (care_ray.common.options, care_ray.cli.options): defaults <
--config file < the command line, a key given twice on the command line refused, one error format
naming the option as the user gave it; and every job command takes --config and --set."""

from __future__ import annotations

import click
import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from care_ray.cli import app
from care_ray.cli.options import Derived, command
from care_ray.common.errors import UserError
from care_ray.common.options import cli, load_options

JOB_COMMANDS = (
    ("score",),
    ("sft-data",),
    ("finetune",),
    ("rationales", "draft"),
    ("evaluate",),
    ("analyze",),
    ("report",),
    ("plan",),
)


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    r: int = Field(8, ge=1)


class Settings(BaseModel):
    """A command's settings, for the tests."""

    model_config = ConfigDict(extra="forbid")
    out: str = Field(description="where")
    epochs: int = Field(3, ge=1, description="epochs")
    tag: str = Field("x", description="a tag", json_schema_extra=cli(flag="--label"))
    lora: Group = Field(default_factory=Group)
    secret: str | None = Field(None, json_schema_extra=cli(hidden=True))


def test_precedence_defaults_then_file_then_command_line(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("out: from-file\nepochs: 5\nlora: {r: 4}\n")
    s = load_options(Settings, f)
    assert (s.out, s.epochs, s.lora.r, s.tag) == ("from-file", 5, 4, "x")
    s = load_options(Settings, f, ["lora.r=16"], {"epochs": 7})
    assert (s.out, s.epochs, s.lora.r) == ("from-file", 7, 16)


def test_one_key_twice_on_the_command_line_is_refused():
    with pytest.raises(UserError, match="--epochs and --set epochs both set epochs; give one"):
        load_options(Settings, None, ["epochs=2"], {"out": "o", "epochs": 3})
    out = ("out",)
    with pytest.raises(UserError, match="--run sets out; drop --set out or --run"):
        load_options(Settings, None, ["out=x"], {}, {"--run": (out, {"out": "y"})})


@pytest.mark.parametrize(
    ("sets", "flags", "file_text", "expected"),
    [
        ([], {}, None, "--out is required"),
        (
            [],
            {"out": "o", "epochs": 0},
            None,
            "--epochs: Input should be greater than or equal to 1",
        ),
        (["lora.r=0"], {"out": "o"}, None, "lora.r (--set): Input should be greater than or equal"),
        (["lora.rank=2"], {"out": "o"}, None, "unknown key 'lora.rank' in --set (did you mean"),
        ([], {}, "out: o\nepoch: 2\n", "unknown key 'epoch' in"),
        ([], {}, "out: o\nepochs: 0\n", ": epochs: Input should be greater than or equal to 1"),
        (["lora"], {}, None, "--set takes KEY=VALUE"),
    ],
)
def test_every_mistake_is_one_line_naming_the_option(tmp_path, sets, flags, file_text, expected):
    f = None
    if file_text is not None:
        f = tmp_path / "run.yaml"
        f.write_text(file_text)
    with pytest.raises(UserError) as e:
        load_options(Settings, f, sets, flags)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_a_model_becomes_a_command_with_its_flags_config_and_set(tmp_path):
    seen = []
    demo = typer.Typer()
    command(
        demo,
        "go",
        Settings,
        seen.append,
        derived=[Derived("--run", "everything under one folder", ("out",), lambda v: {"out": v})],
    )

    @demo.callback()
    def main() -> None:  # a group, so the command keeps its name
        pass

    runner = CliRunner()
    help_text = runner.invoke(demo, ["go", "--help"]).output
    for flag in ("--out", "--epochs", "--label", "--config", "--set", "--run"):
        assert flag in help_text
    assert "--secret" not in help_text and "[default: 3]" in help_text
    ok = runner.invoke(demo, ["go", "--run", "r", "--label", "t", "--set", "lora.r=2"])
    assert ok.exit_code == 0, ok.output
    assert (seen[-1].out, seen[-1].tag, seen[-1].lora.r) == ("r", "t", 2)
    bad = runner.invoke(demo, ["go", "--out", "o", "--epochs", "0"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --epochs: ")


@pytest.mark.parametrize("path", JOB_COMMANDS, ids=[" ".join(p) for p in JOB_COMMANDS])
def test_every_job_command_takes_config_and_set(path):
    group = typer.main.get_command(app)
    ctx = click.Context(group)
    cmd = group
    for name in path:
        cmd = cmd.get_command(ctx, name)  # type: ignore[attr-defined]
    options = {opt for p in cmd.params for opt in p.opts}
    assert {"--config", "--set"} <= options
