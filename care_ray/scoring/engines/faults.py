"""TEST DOUBLE for fault injection — not an engine. Wraps a real engine and kills its whole
process once (the first batch of the first actor to see no marker file), so tests can prove
that Ray restarts a dead engine actor and the job still completes with every item scored."""

from __future__ import annotations

import os
from pathlib import Path

from care_ray.scoring.engines.base import Engine, Generation


class CrashOnceEngine:
    def __init__(self, inner: Engine, marker: Path):
        self.inner = inner
        self.marker = marker
        self.name = f"crash-once({inner.name})"

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.inner.generate(prompts, max_tokens)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os._exit(17)  # as abrupt as an OOM kill: no cleanup, no exception for Ray to catch

    def shutdown(self) -> None:
        self.inner.shutdown()


class FailWhileMarkerEngine:
    """TEST DOUBLE for fault injection: every batch raises, as a transient engine failure would,
    for as long as the marker file exists; then the real engine answers."""

    def __init__(self, inner: Engine, marker: Path):
        self.inner = inner
        self.marker = marker
        self.name = inner.name

    def generate(self, prompts: list[list[int]], max_tokens: int | list[int]) -> list[Generation]:
        if self.marker.exists():
            raise RuntimeError(f"injected engine failure while {self.marker.name} exists")
        return self.inner.generate(prompts, max_tokens)

    def shutdown(self) -> None:
        self.inner.shutdown()
