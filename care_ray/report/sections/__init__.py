"""The report's sections, one module each. A builder takes one evaluate or analyze folder and
returns a Section of blocks, or None when the folder lacks the table the section shows — so a
section appears exactly when its table does. Builders only phrase and plot what the tables hold;
the statistics behind them were computed when the tables were written."""

from __future__ import annotations

from collections.abc import Callable

from care_ray.report.blocks import Section
from care_ray.report.load import Findings
from care_ray.report.sections.agreement import agreement_section
from care_ray.report.sections.challenges import challenges_section
from care_ray.report.sections.contrasts import contrasts_section
from care_ray.report.sections.counselors import counselor_section
from care_ray.report.sections.drivers import drivers_section
from care_ray.report.sections.outcomes import outcomes_section
from care_ray.report.sections.population import population_section
from care_ray.report.sections.scale import scale_section
from care_ray.report.sections.timeline import timeline_section
from care_ray.report.sections.trajectories import trajectories_section
from care_ray.report.sections.transitions import transitions_section

AnalysisSection = Callable[[Findings, str], Section | None]

# In page order: (name in the section's id, builder)
ANALYSIS_SECTIONS: tuple[tuple[str, AnalysisSection], ...] = (
    ("population", population_section),
    ("counselors", counselor_section),
    ("outcomes", outcomes_section),
    ("drivers", drivers_section),
    ("contrasts", contrasts_section),
    ("transitions", transitions_section),
    ("challenges", challenges_section),
    ("trajectories", trajectories_section),
    ("timeline", timeline_section),
)

__all__ = ["ANALYSIS_SECTIONS", "agreement_section", "analysis_sections", "scale_section"]


def analysis_sections(an: Findings, index: int) -> list[Section]:
    """The sections one analysis folder supports, their ids unique to its place on the page."""
    sections = [build(an, f"a{index}-{name}") for name, build in ANALYSIS_SECTIONS]
    return [s for s in sections if s is not None]
