"""The self-contained HTML export of a dashboard (:mod:`~subnetviz.report.html`) and the dashboard
of an analysis folder (:mod:`~subnetviz.report.dashboard`, ``python -m subnetviz report``)."""
