"""Every knob of the server in one pydantic object: the CLI fills it, the app reads it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeSettings(BaseModel):
    """What `lmforge serve` was asked for. Limits are per server process."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: list[str] = Field(min_length=1, description="[NAME=]BUNDLE specs.")
    host: str = Field("127.0.0.1", description="Address to bind; 127.0.0.1 keeps it local.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    db: str | None = Field(None, description="SQLAlchemy URL of keys and usage; None: default.")
    auth: bool = Field(True, description="Require an API key on every /v1 route.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_batch_size: int = Field(
        32, ge=1, description="Texts per forward pass at most (classification and generation)."
    )
    max_wait_ms: float = Field(5.0, ge=0, description="How long a batch waits to fill up.")
    max_queue: int = Field(1024, ge=1, description="Requests waiting per model; more get 503.")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Request bodies above get 413.")
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens (generation).")
    timeout_s: float = Field(30.0, gt=0, description="Per-request time limit (504 past it).")
    cache_s: float = Field(
        2.0, ge=0, description="Keys and quota usage are re-read from the database this often."
    )
    log_conversations: bool = Field(
        False, description="Log every assistant conversation (masked) in the database."
    )
