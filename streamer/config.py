"""Settings of streamer, read from STREAMER_* environment variables (nested with __) and an optional .env file.

This is the only module that reads the environment. A wrong setting fails at start-up with its name.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamer.errors import ConfigError


class KafkaSettings(BaseModel):
    """Where the readings come from and where the outputs go."""

    bootstrap_servers: str = "127.0.0.1:19092"
    input_topics: list[str] = Field(default_factory=lambda: ["readings"])
    output_topic: str = "outputs"
    dead_letter_topic: str = "dead-letters"
    group_id: str = "streamer"
    client_id: str = "streamer"
    # Exactly once: outputs and consumer offsets in one transaction; consumers read committed data only.
    exactly_once: bool = True
    transactional_id: str | None = None
    max_record_bytes: int = Field(default=1_048_576, gt=0)

    @field_validator("input_topics")
    @classmethod
    def _at_least_one_topic(cls, topics: list[str]) -> list[str]:
        if not topics or any(not t.strip() for t in topics):
            raise ValueError("needs at least one non-empty topic name")
        return topics


class ModelSettings(BaseModel):
    """The model to serve until a checkpoint is configured: a freshly initialised network, seeded."""

    family: Literal["rnn", "lstm", "gru"] = "gru"
    n_features: int = Field(default=1, gt=0)
    hidden: int = Field(default=32, gt=0)
    layers: int = Field(default=1, gt=0)
    seed: int = 0


class EngineSettings(BaseModel):
    """How many streams are held and how readings are batched."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    capacity: int = Field(default=100_000, gt=0)
    idle_ttl_s: float | None = Field(default=None, gt=0)
    max_batch_readings: int = Field(default=5_000, gt=0)
    max_wait_ms: int = Field(default=100, ge=0)


class Settings(BaseSettings):
    """All settings of the daemon; STREAMER_KAFKA__BOOTSTRAP_SERVERS sets kafka.bootstrap_servers, and so on."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise ConfigError naming each bad setting as its environment variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path = "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"STREAMER_{path}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def resolve_device(choice: str) -> str:
    """Turn 'auto' into 'cuda' when a GPU is visible, else 'cpu'; refuse 'cuda' without one."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("STREAMER_ENGINE__DEVICE: 'cuda' was asked for but no CUDA device is visible")
    return choice
