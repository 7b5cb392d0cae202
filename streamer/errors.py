"""The one exception tree of streamer: every error the package raises on purpose derives from StreamerError."""


class StreamerError(Exception):
    """Base of every error streamer raises on purpose."""


class ConfigError(StreamerError):
    """A setting is wrong; the message names the setting and the reason."""


class InvalidRecord(StreamerError):
    """An input record cannot be processed; `reason` is a short machine-readable label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CheckpointError(StreamerError):
    """A checkpoint is missing, tampered with, or does not match what the caller expects."""


class StateError(StreamerError):
    """A state snapshot cannot be restored (wrong version, dtype or shape)."""


class KafkaUnavailable(StreamerError):
    """The Kafka cluster is not usable (yet): no broker answers, or an input topic is missing; names the setting."""


class DataError(StreamerError):
    """A data file is missing or holds a value that cannot be read; the message names the file (and the row)."""


class TransportFailure(StreamerError):
    """The in-memory transport failed a commit or a poll on purpose (a broker outage, in unit tests of the loop)."""
