"""Billing: who calls and what they pay. Every module here answers one question:

database.py  where it is kept: the tables of keys, usage records, quota balances, reservations
keys.py      who calls: API keys (create, list, revoke, look up) and the server's key cache
quota.py     may this call run: the monthly quota period and the tokens a call in flight holds
ledger.py    what was used: one usage record per model call, and the bill-ready summaries
metered.py   a model call as the routers see it, recorded however it ends (group commit)
access.py    the FastAPI dependencies: the key check, a key's rpm and quota, refused calls

Billing rule: a client pays for what it received. A streamed reply is billed for the chunks
sent; any other reply for the whole of it when it succeeded, and nothing when it did not. Every
call is recorded with its status either way.
"""
