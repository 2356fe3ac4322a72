"""The research report: ``shoplens report`` -> one static, accessible HTML file.

:func:`build_report` regenerates ``docs/report.html`` from the stored run results
(eval JSON files, MLflow training runs, benchmark files, sample grids).
"""

from shoplens.report.build import build_report

__all__ = ["build_report"]
