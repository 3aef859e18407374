"""Trajectories: how clients with repeated sessions move over their sessions — the mean per-client
slope and the share of clients whose last session beats their first, with the intervals the
analysis computed over clients (trajectory_clients), and the mean outcome by session number."""

from __future__ import annotations

import polars as pl
from matplotlib.ticker import MaxNLocator

from care_ray.report.blocks import Block, Bullets, Paragraph, Plot, Section, Table
from care_ray.report.figures import MUTED_COLOR, figure, plot
from care_ray.report.format import est_ci, integer, level, pct_ci
from care_ray.report.load import Findings

INTERVAL_COLUMNS = ("mean_slope_lo", "mean_slope_hi", "share_rising_lo", "share_rising_hi")


def _figure(summary: pl.DataFrame, fig_id: str) -> Plot:
    outcomes = list(dict.fromkeys(summary["outcome"].to_list()))
    fig = figure(7.5, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for i, outcome in enumerate(outcomes):
        s = summary.filter(pl.col("outcome") == outcome).sort("session_index")
        top.plot(s["session_index"].to_list(), s["mean"].to_list(), marker="o", label=outcome)
        if i == 0:
            bottom.bar(
                s["session_index"].to_list(), s["n"].fill_null(0).to_list(), color=MUTED_COLOR
            )
    top.set_ylabel("mean score")
    top.legend(fontsize=8, loc="best")
    bottom.set_ylabel("clients")
    bottom.set_xlabel("session number")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return plot(
        fig,
        fig_id,
        "Mean outcome by session number over clients with repeated sessions (bottom: clients "
        "contributing at each session number).",
    )


def _client_blocks(clients: pl.DataFrame, ci_level: str) -> list[Block]:
    rows = clients.to_dicts()
    has_ci = set(INTERVAL_COLUMNS) <= set(clients.columns)

    def slope(r: dict) -> str:
        return est_ci(r["mean_slope"], r.get("mean_slope_lo"), r.get("mean_slope_hi"), 3)

    def rising(r: dict) -> str:
        return pct_ci(r["share_rising"], r.get("share_rising_lo"), r.get("share_rising_hi"))

    sentences = [
        f"{r['outcome']}: over {integer(r['n_clients'])} clients with repeated sessions, the "
        f"mean change per session is {slope(r)}"
        + (f" ({ci_level} CI)" if has_ci else "")
        + f", and {rising(r)} of clients rise over their sessions"
        + (f" (Wilson {ci_level} CI)." if has_ci else ".")
        for r in rows
    ]
    headers = (
        [
            "outcome",
            "clients",
            f"mean slope per session [{ci_level} CI]",
            f"share rising [{ci_level} CI]",
        ]
        if has_ci
        else ["outcome", "clients", "mean slope per session", "share rising"]
    )
    return [
        Paragraph(
            "Per-client trend of each outcome over the client's sessions (the slope of a "
            "line through the client's scores)."
        ),
        Bullets(sentences),
        Table(
            headers, [[r["outcome"], integer(r["n_clients"]), slope(r), rising(r)] for r in rows]
        ),
    ]


def trajectories_section(an: Findings, sid: str) -> Section | None:
    summary = an.tables.get("trajectory_summary")
    if summary is not None:
        summary = summary.drop_nulls(["session_index", "mean"])
    clients = an.tables.get("trajectory_clients")
    has_clients = clients is not None and clients.height > 0
    if not has_clients and (summary is None or summary.height == 0):
        return None
    blocks: list[Block] = []
    if clients is not None and has_clients:
        blocks += _client_blocks(clients, level(an.alpha))
    if summary is not None and summary.height:
        blocks.append(_figure(summary, f"{sid}-fig"))
    return Section(sid, "Trajectories", blocks)
