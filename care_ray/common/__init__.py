"""common: what every room shares and nothing else — where the package finds its files (paths),
the shape of a user's mistake (errors), YAML option files, DuckDB connections and the SQL files of
queries/ (sql), JSON that survives NaN (jsonio), package versions for manifests.

May import: nothing else of care_ray."""
