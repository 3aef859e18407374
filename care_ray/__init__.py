"""care-ray: client-perceived therapeutic alliance (WAI-SR) predicted and mined at corpus scale.

Data flows one way, and each room (a subpackage) owns one stage of it:

    contracts ─► corpus ─► scoring ─┬─► evaluation ─┐
                   │          ▲     ├─► rationales ─┼─► training
                   │          │     └─► analytics ──┴─► report ─► cli
    common, cluster, models: what every stage stands on

A room imports only the rooms below it (ROOMS lists what each may import; tests/test_layout.py
holds the package to it and to having no import circles). The core of each stage is pure
functions over Arrow/Polars tables; Ray appears at the edges (cluster, scoring's stages and
pipeline, training's trainer)."""

# room: the rooms it may import (a room's own modules import each other freely)
_MAY_IMPORT = {
    "common": "",
    "contracts": "common",
    "cluster": "common",
    "models": "common cluster",
    "corpus": "common contracts cluster",
    "scoring": "common contracts cluster models corpus",
    "evaluation": "common contracts cluster corpus scoring",
    "rationales": "common contracts cluster models corpus scoring",
    "training": "common contracts cluster models corpus scoring rationales evaluation",
    "analytics": "common contracts cluster corpus scoring evaluation",
    "report": "common contracts cluster models corpus scoring evaluation rationales training analytics",
    "cli": "common contracts cluster models corpus scoring evaluation rationales training analytics report",
}
ROOMS: dict[str, tuple[str, ...]] = {
    room: tuple(deps.split()) for room, deps in _MAY_IMPORT.items()
}
