"""Settings of streamer, read from STREAMER_* environment variables (nested with __) and an optional .env file.

This is the only module that reads the environment. A wrong setting fails at start-up with its name.
"""

from __future__ import annotations

import json
from typing import Literal, get_args, get_origin

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamer.errors import ConfigError


class KafkaSettings(BaseModel):
    """Where the readings come from and where the outputs go."""

    bootstrap_servers: str = Field(default="127.0.0.1:19092", description="comma-separated host:port list")
    input_topics: list[str] = Field(default_factory=lambda: ["readings"],
                                    description="topics of readings, as a JSON list")
    output_topic: str = Field(default="outputs", description="topic of per-reading outputs")
    dead_letter_topic: str = Field(default="dead-letters",
                                   description="topic of records that could not be processed, with the reason")
    group_id: str = Field(default="streamer", description="consumer group: instances sharing it share the partitions")
    client_id: str = Field(default="streamer", description="client id shown in broker logs and quotas")
    changelog_topic: str | None = Field(
        default=None,
        description="compacted per-stream state topic, co-partitioned with input; default: <group_id>-state-changelog")
    instance_id: str | None = Field(
        default=None, description="static group membership id: a restart takes its partitions back at once")
    session_timeout_ms: int = Field(
        default=10_000, ge=6_000, description="a member silent this long leaves the group; its partitions move")
    transaction_timeout_ms: int = Field(
        default=15_000, ge=1_000, description="the broker aborts a crashed instance's open transaction after this")
    # Exactly once: outputs and consumer offsets in one transaction; consumers read committed data only.
    exactly_once: bool = Field(default=True, description="outputs and offsets in one transaction")
    transactional_id: str | None = Field(
        default=None, description="stable per instance; default: <group_id>-<hostname>")
    max_record_bytes: int = Field(default=1_048_576, gt=0, description="larger input records are dead-lettered")

    @property
    def changelog(self) -> str:
        """The changelog topic's name, derived from the group id unless set."""
        return self.changelog_topic or f"{self.group_id}-state-changelog"

    @field_validator("input_topics")
    @classmethod
    def _at_least_one_topic(cls, topics: list[str]) -> list[str]:
        if not topics or any(not t.strip() for t in topics):
            raise ValueError("needs at least one non-empty topic name")
        return topics


class ModelSettings(BaseModel):
    """The model to serve until a checkpoint is configured: a freshly initialised network, seeded."""

    family: Literal["rnn", "lstm", "gru"] = Field(default="gru", description="recurrent cell")
    n_features: int = Field(default=1, gt=0, description="values per reading")
    hidden: int = Field(default=32, gt=0, description="hidden units per layer")
    layers: int = Field(default=1, gt=0, description="stacked recurrent layers")
    seed: int = Field(default=0, description="seed of the initial weights")


class EngineSettings(BaseModel):
    """How many streams are held and how readings are batched."""

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when visible")
    capacity: int = Field(default=100_000, gt=0, description="streams held in memory; least recently used go first")
    idle_ttl_s: float | None = Field(default=None, gt=0, description="evict streams idle this long (seconds)")
    max_batch_readings: int = Field(default=5_000, gt=0, description="records per poll and batch")
    max_wait_ms: int = Field(default=100, ge=0, description="longest wait for a batch to fill")
    state_dir: str | None = Field(
        default=None, description="folder of the on-disk cold state store (default: the temp folder)")


class Settings(BaseSettings):
    """All settings of the daemon; STREAMER_KAFKA__BOOTSTRAP_SERVERS sets kafka.bootstrap_servers, and so on."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    log_format: Literal["text", "json"] = Field(default="text", description="json: one object per line")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")


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


def settings_reference() -> list[tuple[str, str, str, str]]:
    """(environment variable, type, default, description) for every setting, generated from the classes."""
    rows = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name.upper()}__")
                continue
            default = field.get_default(call_default_factory=True)
            if get_origin(ann) is Literal:
                type_name = " or ".join(json.dumps(a) for a in get_args(ann))
            else:
                type_name = str(ann).replace("typing.", "").replace("<class '", "").replace("'>", "")
                type_name = type_name.replace(" | ", " or ")
            rows.append((f"{prefix}{name.upper()}", type_name, json.dumps(default), field.description or ""))

    walk(Settings, "STREAMER_")
    return rows


def settings_markdown() -> str:
    """The settings reference as a Markdown table (README and docs embed exactly this)."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{v}` | `{t}` | `{d}` | {m} |" for v, t, d, m in settings_reference()]
    return "\n".join(lines)
