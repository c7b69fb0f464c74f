"""The report: one self-contained interactive HTML page for a model and an image.

``report(...)`` builds the page's data (predictions, every layer's channels
and statistics, CAM heatmaps with faithfulness scores) and renders it with
one template; ``Report.save(path)`` writes it atomically. The page makes no
network requests (inline CSS/JS, images as data URIs, a Content-Security-
Policy that forbids anything else) and every string from the model is shown
as text.

Example:
    >>> import featuremaps as fm
    >>> fm.report().save("report.html")          # doctest: +SKIP
"""

from __future__ import annotations

from .build import Report, render_report, report

__all__ = ["Report", "report", "render_report"]
