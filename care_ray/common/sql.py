"""DuckDB, one way: `connect` makes every connection care-ray opens (the scoring driver, analyze,
ingest's sort, benchmarks), with its memory limit, spill folder and insertion-order setting bound
as configuration — never formatted into SQL text — and Parquet folders bound as views. The SQL
itself lives in queries/*.sql, read by `read_query`; each file names its input views and runs
from the duckdb CLI too."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import duckdb

from care_ray.common.paths import queries_dir


def parquet_glob(folder: Path | str) -> str:
    return str(Path(folder) / "**" / "*.parquet")


def connect(
    memory_limit: str | None = None,
    *,
    views: Mapping[str, Path | str] | None = None,
    database: str | Path = ":memory:",
    temp_directory: str | Path | None = None,
    keep_insertion_order: bool = False,
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection. `memory_limit` caps it (joins and sorts spill to `temp_directory`),
    so a driver's footprint does not grow with the data; `keep_insertion_order=False` lets
    DuckDB stream results in any order (every query here that needs an order says ORDER BY).
    Each name in `views` becomes a view over that folder's Parquet files (hive partitions read)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "preserve_insertion_order": keep_insertion_order
    }
    if memory_limit:
        config["memory_limit"] = memory_limit
    if temp_directory is not None:
        config["temp_directory"] = str(temp_directory)
    con = duckdb.connect(str(database), config=config)
    for name, folder in (views or {}).items():
        if not name.isidentifier():
            raise ValueError(f"view name {name!r} is not an identifier")
        rel = con.read_parquet(parquet_glob(folder), hive_partitioning=True, union_by_name=True)
        rel.create_view(name)
    return con


def read_query(name: str) -> str:
    path = queries_dir() / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"no query {name!r} in {queries_dir()}")
    return path.read_text(encoding="utf-8")
