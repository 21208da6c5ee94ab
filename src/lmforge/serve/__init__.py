"""Serving: an HTTP API over bundles, with API keys, metering, quotas, limits and a playground.

`main.py` assembles the FastAPI app from `routers/`; `settings.py` holds every knob in one object;
`registry.py` loads each bundle into its engine (`engines/`: classification, generation);
`billing/` holds who calls and what they pay (keys, quota reservations, the usage ledger).
Only the CLI imports this package.
"""
