"""The benchmark harness: suites of trials, reports (tables, CSV/JSON, plots) and the demo."""
