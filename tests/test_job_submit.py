"""The README's `ray job submit` commands, run verbatim against a local head started as the README
says (token authentication on), in a copy of this checkout as a user would have it: the fine-tuning
section's first commands make out/, then the rehearsal block submits a scoring and a fine-tuning job."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- job-submit-rehearsal"


def bash_block_after(text: str, marker: str) -> str:
    start = text.index(marker)
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def fine_tuning_prerequisites(text: str) -> str:
    """The fine-tuning section's commands that make out/: ingest, tiny model, SFT data."""
    block = bash_block_after(text, "## Fine-tuning")
    keep = [
        line
        for line in block.splitlines()
        if line.startswith(
            ("source .venv", "care-ray ingest", "care-ray tiny-model", "care-ray sft-data")
        )
    ]
    assert len(keep) == 4, block
    return "\n".join(keep)


def checkout_copy(dest: Path) -> Path:
    """The tracked files of this repository, with ../shared beside it and a .venv whose activate
    script is this one's (the copy's .gitignore keeps .venv/ out of the job's upload)."""
    repo = dest / "care-ray"
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        if (REPO / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, repo / f)
    (dest / "shared").symlink_to(REPO.parent / "shared")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "activate").write_text(
        f"source {Path(sys.executable).parent / 'activate'}\n"
    )
    return repo


def test_readme_submit_commands_work_verbatim_against_a_local_head(tmp_path):
    import ray

    ray.shutdown()  # the local Ray of earlier tests holds default ports the head wants
    readme = (REPO / "README.md").read_text()
    script = (
        "set -euo pipefail\n"
        + fine_tuning_prerequisites(readme)
        + "\n"
        + bash_block_after(readme, MARKER)
    )
    repo = checkout_copy(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(tmp_path / "home"), PATH="/usr/local/bin:/usr/bin:/bin"
    )  # no token yet: the README's head makes one
    (tmp_path / "home").mkdir()
    try:
        p = subprocess.run(
            ["bash", "-c", script], cwd=repo, env=env, capture_output=True, text=True, timeout=1200
        )
    finally:
        subprocess.run(
            ["bash", "-c", f"source {repo}/.venv/bin/activate && ray stop --force"],
            env=env,
            capture_output=True,
            timeout=120,
        )
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert (
        tmp_path / "home" / ".ray" / "auth_token"
    ).exists()  # the head ran with token authentication
    scores = json.loads((repo / "out" / "scores-job" / "manifest.json").read_text())
    assert scores["items_in"] == 16 and scores["items_scored"] + scores["items_errors"] == 16
    summary = json.loads((repo / "out" / "finetune-job" / "summary.json").read_text())
    assert (
        summary["folds"] == [0]
        and (repo / "out" / "finetune-job" / "fold0" / "adapter" / "adapter_config.json").exists()
    )
    assert "runtime_resources" not in json.dumps(
        summary
    )  # results landed where the user asked, not in Ray's temporary copy
