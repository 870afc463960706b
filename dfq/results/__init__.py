"""Run directories -> comparable result tables (CSV, markdown) and plots: `runs` reads each run's
results, `table` aggregates them over seeds and reads written tables back, `report` writes the tables
and plots, `published` sets dfq's rows beside the published methods."""

from dfq.results.report import to_markdown, write_report
from dfq.results.runs import Result, ResultsError, collect, read_run
from dfq.results.table import aggregate, read_table, write_csv

__all__ = [
    "Result",
    "ResultsError",
    "aggregate",
    "collect",
    "read_run",
    "read_table",
    "to_markdown",
    "write_csv",
    "write_report",
]
