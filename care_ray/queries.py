"""Run the SQL files in queries/ with DuckDB over Parquet folders bound as views."""

from __future__ import annotations

from pathlib import Path

import duckdb

from care_ray.paths import queries_dir


def parquet_glob(folder: Path) -> str:
    return str(Path(folder) / "**" / "*.parquet")


def connect(views: dict[str, Path], memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A connection where each name in `views` is a view over that folder's Parquet files."""
    con = duckdb.connect()
    if memory_limit:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    for name, folder in views.items():
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
