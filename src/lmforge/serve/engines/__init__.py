"""The engines that run a served model's requests, one per task: classification (dynamic
batching with load shedding) and generation (continuous batching). registry.py builds them."""
