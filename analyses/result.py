"""`Result` lives in the core (`interp.core.result`); this re-export keeps `from analyses.result import Result` working."""

from interp.core.result import Result, report_html  # noqa: F401
