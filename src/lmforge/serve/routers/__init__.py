"""One router per concern; each owns its prefix and its auth dependency."""
