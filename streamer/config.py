"""Settings of streamer, read from STREAMER_* environment variables (nested with __) and an optional .env file.

This is the only module that reads the environment. A wrong setting fails at start-up with its name.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from streamer.cpu_quota import cpu_quota
from streamer.errors import ConfigError

RESERVED_PREFIX = "STREAMER_TEST_"  # variables of the test harness (STREAMER_TEST_BOOTSTRAP), not settings
SECRET_WORDS = ("password", "secret", "token")  # client options whose key holds one of these are masked


def _comma_list(value: object) -> object:
    """A list setting given as text: a JSON list, or comma-separated names."""
    if isinstance(value, str) and not value.lstrip().startswith("["):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, str):
        return json.loads(value)
    return value


def _json_object(value: object) -> object:
    """An options setting given as text: a JSON object."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg}); give a JSON object such as {{\"fetch_max_bytes\": 1000000}}") from None
    if not isinstance(parsed, dict):
        raise ValueError("give a JSON object such as {\"fetch_max_bytes\": 1000000}")
    return parsed


ClientOptions = Annotated[dict[str, Any], NoDecode]


class KafkaSettings(BaseModel):
    """Where the readings come from and where the outputs go."""

    model_config = ConfigDict(extra="forbid")

    bootstrap_servers: str = Field(default="127.0.0.1:19092", description="comma-separated host:port list")
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["readings"], description="topics of readings: comma-separated or a JSON list")
    input_pattern: str | None = Field(
        default=None, description="regular expression of input topics; replaces input_topics when set")
    forecast_topic: str = Field(default="forecasts", description="topic of forecasts (one per cadence step)")
    alert_topic: str = Field(default="alerts", description="topic of anomaly alerts (firing, updated, resolved)")
    event_topic: str = Field(default="events", description="topic of detected events (onset, offset, silent)")
    dead_letter_topic: str = Field(default="dead-letters",
                                   description="topic of records that could not be processed, with the reason")
    group_id: str = Field(default="streamer", description="consumer group: instances sharing it share the partitions")
    client_id: str = Field(default="streamer", description="client id shown in broker logs and quotas")
    changelog_topic: str | None = Field(
        default=None,
        description="compacted per-stream state topic, co-partitioned with input; default: <group_id>-state-changelog")
    instance_id: str | None = Field(
        default=None, description="static group membership id: a restart takes its partitions back at once; "
        "`streamer serve` defaults it to the environment variable POD_NAME when set (a StatefulSet's stable name)")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a partition without a committed offset starts")
    output_partitions: int | None = Field(
        default=None, gt=0, description="partitions of the forecast, alert, event and dead-letter topics the "
        "daemon creates; default: the input's count (the changelog always has the input's)")
    replication_factor: int = Field(
        default=-1, ge=-1, description="replication factor of the topics the daemon creates; -1: the broker's "
        "default.replication.factor (Kafka 2.4 or newer)")
    consumer_options: ClientOptions = Field(
        default_factory=dict, description="more kafka-python KafkaConsumer options, as a JSON object, e.g. "
        "{\"fetch_max_bytes\": 52428800}; unknown keys fail at start-up")
    producer_options: ClientOptions = Field(
        default_factory=dict, description="more kafka-python KafkaProducer options, as a JSON object, e.g. "
        "{\"compression_type\": \"lz4\"}")
    admin_options: ClientOptions = Field(
        default_factory=dict, description="more kafka-python KafkaAdminClient options, as a JSON object, e.g. "
        "{\"request_timeout_ms\": 60000}")
    session_timeout_ms: int = Field(
        default=10_000, ge=6_000, description="a member silent this long leaves the group; its partitions move")
    transaction_timeout_ms: int = Field(
        default=15_000, ge=1_000, description="the broker aborts a crashed instance's open transaction after this")
    # Exactly once: outputs and consumer offsets in one transaction; consumers read committed data only.
    exactly_once: bool = Field(default=True, description="outputs and offsets in one transaction")
    transactional_id: str | None = Field(
        default=None, description="stable per instance; default: <group_id>-<hostname>")
    max_record_bytes: int = Field(default=1_048_576, gt=0, description="larger input records are dead-lettered")
    dead_letter_original_bytes: int = Field(
        default=65_536, ge=0, le=524_288, description="bytes of a bad record kept (as base64) in its dead letter, "
        "with the whole record's size and sha256; bounded so that a dead letter always fits a topic")
    max_partition_fetch_bytes: int = Field(
        default=4_194_304, ge=65_536, description="most bytes one fetch returns per partition; 4 MiB holds a "
        "full batch of 20k small readings, so the engine steps whole batches (Kafka's default, 1 MiB, does not)")
    commit_interval_ms: int = Field(
        default=50, ge=0, description="outputs, state and offsets are committed together this often (after "
        "the batch in which the interval ends)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how clients talk to the brokers")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism (SASL_* protocols)")
    sasl_username: str | None = Field(default=None, description="SASL user (SASL_* protocols)")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password; never logged")
    ssl_cafile: str | None = Field(default=None, description="CA bundle that signs the brokers' certificates")
    ssl_certfile: str | None = Field(default=None, description="client certificate (mutual TLS)")
    ssl_keyfile: str | None = Field(default=None, description="client private key (mutual TLS)")
    ssl_password: SecretStr | None = Field(default=None, description="password of the client key; never logged")
    startup_timeout_s: float | None = Field(
        default=None, gt=0, description="give up (exit non-zero) when no broker answered this long after start-up; "
        "default: retry for ever (with capped exponential backoff; /healthz answers 200, /readyz 503 meanwhile)")

    changelog_segment_bytes: int = Field(
        default=16 * 2**20, ge=2**20, description="segment size of the changelog topic the daemon creates: compaction "
        "cleans closed segments only, so this bounds what a restore reads beyond one snapshot per stream")
    changelog_segment_ms: int = Field(
        default=600_000, ge=60_000, description="the changelog's open segment is closed (and so compactable) after "
        "this long even when it is not full")
    changelog_min_cleanable_dirty_ratio: float = Field(
        default=0.2, gt=0, lt=1, description="the changelog is compacted once this share of it is superseded "
        "snapshots (Kafka's default, 0.5, lets it grow to twice its compacted size)")

    @property
    def changelog_config_settings(self) -> dict[str, str]:
        """The setting behind each config of the changelog topic (named when an existing topic differs)."""
        return {"cleanup.policy": "cleanup.policy=compact (no setting: the daemon needs it)",
                "segment.bytes": "STREAMER_KAFKA__CHANGELOG_SEGMENT_BYTES",
                "segment.ms": "STREAMER_KAFKA__CHANGELOG_SEGMENT_MS",
                "min.cleanable.dirty.ratio": "STREAMER_KAFKA__CHANGELOG_MIN_CLEANABLE_DIRTY_RATIO"}

    @property
    def changelog_configs(self) -> dict[str, str]:
        """The topic configs of the changelog: compacted, in segments small enough to be cleaned often."""
        return {"cleanup.policy": "compact", "segment.bytes": str(self.changelog_segment_bytes),
                "segment.ms": str(self.changelog_segment_ms),
                "min.cleanable.dirty.ratio": str(self.changelog_min_cleanable_dirty_ratio)}

    @property
    def changelog(self) -> str:
        """The changelog topic's name, derived from the group id unless set."""
        return self.changelog_topic or f"{self.group_id}-state-changelog"

    @field_validator("input_topics", mode="before")
    @classmethod
    def _topics_from_text(cls, value: object) -> object:
        return _comma_list(value)

    @field_validator("consumer_options", "producer_options", "admin_options", mode="before")
    @classmethod
    def _options_from_text(cls, value: object) -> object:
        return _json_object(value)

    @field_validator("replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be -1 (the broker's default) or at least 1")
        return value

    @field_validator("input_topics")
    @classmethod
    def _at_least_one_topic(cls, topics: list[str]) -> list[str]:
        if not topics or any(not t.strip() for t in topics):
            raise ValueError("needs at least one non-empty topic name")
        return topics

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(f"STREAMER_KAFKA__SECURITY_PROTOCOL={self.security_protocol} needs "
                             "STREAMER_KAFKA__SASL_USERNAME and STREAMER_KAFKA__SASL_PASSWORD")
        return self


RANDOM_MODEL = "random"  # STREAMER_MODEL__CHECKPOINT's spelling for a freshly initialised, seeded network
RANDOM_MODEL_FIELDS = ("family", "n_features", "hidden", "layers", "seed")


class ModelSettings(BaseModel):
    """The model to serve: the built-in checkpoint, a checkpoint folder, or (`random`) a seeded fresh network."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["rnn", "lstm", "gru"] = Field(
        default="gru", description="recurrent cell (with checkpoint `random` only)")
    n_features: int = Field(default=1, gt=0, description="values per reading (with checkpoint `random` only)")
    hidden: int = Field(default=32, gt=0, description="hidden units per layer (with checkpoint `random` only)")
    layers: int = Field(default=1, gt=0, description="stacked recurrent layers (with checkpoint `random` only)")
    seed: int = Field(default=0, description="seed of the initial weights (with checkpoint `random` only)")
    checkpoint: str | None = Field(
        default=None, description="checkpoint folder to serve (from `streamer train`); unset: the built-in model "
        "shipped with streamer (a GRU forecaster of one channel fitted on NAB's AWS CPU series, "
        "streamer/builtin/); `random`: a freshly initialised network as family, n_features, hidden, layers and "
        "seed describe (those five are refused with any other value, since a checkpoint brings its architecture)")
    reload_interval_s: float = Field(
        default=10.0, ge=0, description="how often the checkpoint folder is checked for a new version; 0: never")

    @model_validator(mode="after")
    def _random_fields(self) -> ModelSettings:
        given = [f for f in RANDOM_MODEL_FIELDS if f in self.model_fields_set]
        if given and self.checkpoint != RANDOM_MODEL:
            names = ", ".join(f"STREAMER_MODEL__{f.upper()}" for f in given)
            raise ValueError(f"STREAMER_MODEL__CHECKPOINT: {names} set: those describe a random model, served only "
                             f"with STREAMER_MODEL__CHECKPOINT={RANDOM_MODEL} (now "
                             f"{self.checkpoint or 'unset: the built-in model'}, which brings its own architecture)")
        if self.checkpoint is not None and not self.checkpoint.strip():
            raise ValueError("STREAMER_MODEL__CHECKPOINT: empty; leave it unset for the built-in model")
        return self


class EngineSettings(BaseModel):
    """How many streams are held and how readings are batched."""

    model_config = ConfigDict(extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when visible")
    capacity: int = Field(default=100_000, gt=0, description="streams held in memory; least recently used go first")
    idle_ttl_s: float | None = Field(default=None, gt=0, description="evict streams idle this long (seconds)")
    max_batch_readings: int = Field(
        default=20_000, gt=0, description="records per poll and batch (capped at the capacity)")
    max_wait_ms: int = Field(default=100, ge=0, description="longest wait for a batch to fill")
    threads: int | None = Field(
        default=None, gt=0, description="torch CPU threads; default half the cores, at most the container's CPU limit "
        "(cgroup quota), at least 1: the Kafka "
        "clients' threads and the broker need the rest, and spinning OpenMP threads on a busy core are slow")
    switch_interval_ms: float = Field(
        default=1.0, gt=0, le=100, description="Python's thread switch interval while serving "
        "(sys.setswitchinterval): the loop holds the interpreter for long stretches, and kafka-python's network "
        "thread and the commit worker need it for every broker round trip; at Python's 5 ms each waits up to that")
    state_dir: str | None = Field(
        default=None, description="folder of the on-disk cold state store (default: the temp folder)")
    max_future_s: float = Field(
        default=86_400.0, gt=0, description="readings stamped further ahead of the wall clock are dead-lettered")
    min_ts_ms: int = Field(default=0, description="readings stamped before this (ms since epoch) are dead-lettered")
    restore_slice_ms: int = Field(
        default=200, gt=0, description="longest stretch of changelog restore between two polls of the input "
        "(partitions already restored are processed in between)")


class OutputSettings(BaseModel):
    """What the daemon publishes and how often."""

    model_config = ConfigDict(extra="forbid")

    forecast_every: int = Field(
        default=1, gt=0, description="publish a stream's forecast after every n-th of its readings")
    forecast_records: Literal["batch", "input"] = Field(
        default="batch", description="batch: one forecast record per stream per batch, with a list per field "
        "(a few records for many readings); input: one per input record, mirroring its shape")
    max_forecast_record_bytes: int = Field(
        default=262_144, ge=1024, description="a forecast record holding more is split into several (keep it under "
        "the forecast topic's max.message.bytes)")
    anomalies: bool = Field(
        default=True, description="score forecast errors per stream and publish anomaly alerts")
    event_on: float | None = Field(
        default=None, ge=0, le=1, description="event head: an event starts at this probability (default: the "
        "checkpoint's calibrated threshold, else 0.6)")
    event_off: float | None = Field(
        default=None, ge=0, le=1, description="event head: and ends below this one (default: the checkpoint's "
        "calibrated threshold, else 0.4)")
    event_min_run: int | None = Field(
        default=None, gt=0, description="event head: readings beyond a level to start or end (default: the "
        "checkpoint's `[events] min_run`, else 1 with its calibrated threshold, whose per-reading decisions training "
        "scored, else 3)")
    silent_after_s: float | None = Field(
        default=None, gt=0, description="publish a 'silent' event for a stream without readings this long")

    @model_validator(mode="after")
    def _hysteresis(self) -> OutputSettings:
        if self.event_off is not None and self.event_on is not None and self.event_off > self.event_on:
            raise ValueError(f"STREAMER_OUTPUT__EVENT_OFF ({self.event_off}) must not exceed "
                             f"STREAMER_OUTPUT__EVENT_ON ({self.event_on})")
        return self


class DetectorsSettings(BaseModel):
    """The anomaly pipeline (streamer/detectors/pipeline.py PipelineConfig), one field each; unset (None): the
    served checkpoint's `detectors` metadata, else the product default (streamer/detection.py PRODUCT_PIPELINE)."""

    norm_halflife: float | None = Field(default=None, gt=0, description="input normalisation EWMA half-life, "
                                        "in readings (`streamer eval nab` only: the daemon uses the checkpoint's)")
    error_halflife: float | None = Field(default=None, gt=0, description="forecast-error mean/variance half-life")
    error_warmup: int | None = Field(default=None, ge=0, description="readings before error z-scores are emitted")
    error_zmax: float | None = Field(default=None, gt=0, description="error z-scores are clipped to [0, this]")
    value_weight: float | None = Field(
        default=None, ge=0, description="raw score = max(error z, this * |normalised reading|); 0: errors only")
    season_ms: int | None = Field(
        default=None, ge=0, description="seasonal view: the error is the smaller of the model's and that of the "
        "value this long earlier (e.g. 86400000, a day); 0: off. Its memory is part of every stream's state")
    season_max: int | None = Field(
        default=None, gt=1, description="readings kept for the seasonal view: one per (period + slack) / (this - 1) "
        "ms, so that they reach one period back at any sampling rate")
    season_slack_ms: int | None = Field(
        default=None, ge=0, description="seasonal view: readings this close to one period earlier count too (a "
        "daily job a few minutes late); 0: only the nearest")
    season_also_ms: int | None = Field(
        default=None, ge=0, description="seasonal view: a second period (e.g. 604800000, a week); 0: none")
    season_also_max: int | None = Field(
        default=None, gt=1, description="readings kept for the second period (as season_max)")
    value_short: int | None = Field(
        default=None, ge=0, description="value view: likelihood of the mean |normalised reading| over this many "
        "readings; 0: off")
    short: int | None = Field(default=None, gt=0, description="likelihood: short window of raw scores")
    long_halflife: float | None = Field(
        default=None, gt=0, description="likelihood: half-life of the long-run distribution, in readings")
    likelihood_warmup: int | None = Field(
        default=None, ge=0, description="readings before the likelihood is emitted (alerts cannot fire before)")
    dt_window: int | None = Field(
        default=None, ge=0, description="Telemanom threshold window of smoothed errors (a diagnostic: alerts do "
        "not use it); 0: off. Its window is part of every stream's state")
    dt_span: float | None = Field(default=None, gt=0, description="Telemanom threshold: EWMA span of the smoothing")
    dt_every: int | None = Field(default=None, gt=0, description="Telemanom threshold: recomputed this often")
    alert_on: float | None = Field(default=None, ge=0, le=1, description="an alert fires at or above this score")
    alert_off: float | None = Field(default=None, ge=0, le=1, description="an alert resolves below this score ...")
    resolve_after: int | None = Field(default=None, gt=0, description="... for this many readings")
    suppress: int | None = Field(
        default=None, ge=0, description="the score is damped for this many readings after an alert fired; 0: off")
    damp: float | None = Field(default=None, ge=0, le=1, description="factor on the score while damped")

    def overrides(self) -> dict[str, float | int]:
        """The fields that are set."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class MetricsSettings(BaseModel):
    """The HTTP port with /metrics, /healthz and /readyz."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="serve /metrics, /healthz and /readyz")
    host: str = Field(default="0.0.0.0", description="address the HTTP endpoints listen on")
    port: int = Field(default=9108, ge=0, le=65535, description="port of the HTTP endpoints; 0: any free port")
    liveness_timeout_s: float = Field(
        default=60.0, gt=0, description="/healthz fails when the loop has not turned for this long")
    stall_timeout_s: float = Field(
        default=300.0, gt=0, description="/healthz fails when there was work (a restore, or input lag) and no "
        "partition made progress for this long")
    unhealthy_after_failed_commits: int = Field(
        default=5, gt=0, description="/healthz fails after this many commits in a row failed (the loop keeps "
        "retrying the same work with backoff), until one succeeds")


class Settings(BaseSettings):
    """All settings of the daemon; STREAMER_KAFKA__BOOTSTRAP_SERVERS sets kafka.bootstrap_servers, and so on."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMER_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    detectors: DetectorsSettings = Field(default_factory=DetectorsSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log_format: Literal["text", "json"] = Field(default="text", description="json: one object per line")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")

    def masked(self) -> dict:
        """The settings as JSON-ready data with secrets masked, for the start-up log."""
        data = self.model_dump(mode="json")
        for name in ("consumer_options", "producer_options", "admin_options"):
            options = data["kafka"][name]
            for key in options:
                if any(word in key.lower() for word in SECRET_WORDS):
                    options[key] = "**********"
        return data


def known_variables() -> set[str]:
    """Every STREAMER_* variable that is a setting, the groups (e.g. STREAMER_KAFKA, as JSON) included."""
    names = {row[0] for row in settings_reference()}
    names.update(f"STREAMER_{name.upper()}" for name in Settings.model_fields)
    return names


def unknown_variables(env_file: str | Path | None = ".env") -> list[str]:
    """A problem for every STREAMER_* variable of the environment or the .env file that is no setting."""
    known = known_variables()
    leaves = sorted(row[0] for row in settings_reference())  # suggestions: the settings, not their groups
    sources: list[tuple[str, Mapping[str, str | None]]] = [("environment", os.environ)]
    if env_file is not None and Path(env_file).is_file():
        sources.append((str(env_file), dotenv_values(env_file)))
    problems = []
    for where, names in sources:
        for name in names:
            key = name.upper()
            if not key.startswith("STREAMER_") or key.startswith(RESERVED_PREFIX) or key in known:
                continue
            close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.8)
            hint = f"did you mean {close[0]}?" if close else "`streamer settings --reference` lists the settings"
            problems.append(f"{name} (in the {where}): no such setting; {hint}")
    return problems


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise ConfigError naming each bad setting as its environment variable."""
    unknown = unknown_variables(Settings.model_config.get("env_file"))
    if unknown:
        raise ConfigError("invalid settings: " + "; ".join(unknown))
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a value the settings source could not even parse (e.g. a group's bad JSON)
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"STREAMER_{field.group(1).upper()}" if field else "settings"
        raise ConfigError(f"invalid settings: {name}: not valid JSON ({exc.__cause__})") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if msg.startswith("STREAMER_"):  # a check across settings names them itself
                problems.append(msg)
                continue
            path = "__".join(str(p) for p in err["loc"]).upper()
            problems.append(f"STREAMER_{path}: {msg}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from None


def requested_log_format() -> str:
    """STREAMER_LOG_FORMAT alone (environment, then .env), so that errors before the settings are read, such as
    a wrong setting, come out in the format asked for; 'text' unless it says 'json'."""
    env_file = Settings.model_config.get("env_file")
    dotenv = dotenv_values(env_file) if env_file is not None and Path(env_file).is_file() else {}
    for source in (os.environ, dotenv):
        for name, value in source.items():
            if name.upper() == "STREAMER_LOG_FORMAT" and value is not None:
                return "json" if value.strip().lower() == "json" else "text"
    return "text"


def derive_instance_id(settings: Settings) -> Settings:
    """The settings with kafka.instance_id defaulted to the pod name (POD_NAME), for `streamer serve`.

    One daemon runs per pod, so the pod's name is unique in the group; a StatefulSet's pod keeps its name
    across restarts, so static membership hands a restarted pod its partitions back without a rebalance.
    Only the serving process derives it: tests and tools that run several services in one process do not.
    """
    pod = os.environ.get("POD_NAME", "").strip()
    if settings.kafka.instance_id or not pod:
        return settings
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"instance_id": pod})})


def resolve_device(choice: str) -> str:
    """Turn 'auto' into 'cuda' when a GPU is visible, else 'cpu'; refuse 'cuda' without one."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("STREAMER_ENGINE__DEVICE: 'cuda' was asked for but no CUDA device is visible")
    return choice


def resolve_threads(threads: int | None) -> int:
    """The torch CPU thread count: the setting, or half of this machine's cores capped by the cgroup's CPU quota."""
    return threads if threads is not None else max(1, min((os.cpu_count() or 2) // 2, cpu_quota() or 1 << 30))


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


def effective_variables(settings: Settings) -> list[tuple[str, str]]:
    """(environment variable, value) for every setting as it is in effect, secrets masked; values as one would
    set them (text as is, everything else as JSON; null: unset)."""
    rows = []

    def walk(data: dict, prefix: str) -> None:
        for name, value in data.items():
            if isinstance(value, dict) and prefix == "STREAMER_":  # a group, not an options object
                walk(value, f"{prefix}{name.upper()}__")
                continue
            rows.append((f"{prefix}{name.upper()}", value if isinstance(value, str) else json.dumps(value)))

    walk(settings.masked(), "STREAMER_")
    return rows


def settings_markdown() -> str:
    """The settings reference as a Markdown table (README and docs embed exactly this)."""
    lines = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{v}` | `{t}` | `{d}` | {m} |" for v, t, d, m in settings_reference()]
    return "\n".join(lines)
