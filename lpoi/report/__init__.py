"""The run's report: headline metrics (``metrics/summary.json``), ``report/REPORT.md`` and its figures."""
