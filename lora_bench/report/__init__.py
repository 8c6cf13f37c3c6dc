"""The study's analysis as a self-contained HTML page: `render_report` for stored run folders,
`render_imported` for someone else's results table.

Modules, one job each: `load` (records or a CSV into one flat table), `stats` (intervals, tests,
equivalence, plateau, noise floor), `cells` (a configuration's seeds and estimate; comparisons),
`study` (slices that vary one factor), `pareto` (frontiers, memory budgets), `svg` (charts),
`charts` (the charts sections share), `text` (table cells and finding phrases), `sections` (the
seven questions), `render` (index.html and results.csv), `cli` (`lora-bench report`)."""

from .render import render_imported, render_report

__all__ = ["render_imported", "render_report"]
