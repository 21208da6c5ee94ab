"""Serving: an HTTP API over bundles, with API keys, metering, quotas, limits and a playground.

`main.py` assembles the FastAPI app from `routers/`; `settings.py` holds every knob in one object.
Only the CLI imports this package.
"""
