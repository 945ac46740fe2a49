"""`Result` lives in the core (`interp.result`); this re-export keeps `from analyses.result import Result` working."""

from interp.result import Result, report_html  # noqa: F401
