"""Kafka clients of the daemon: their settings, the consumer, the producer and the partitioner.

Everything that touches kafka-python lives in the streamer.kafka package; the fast paths over its internals are
confined to streamer.kafka.fast_paths.
"""

from __future__ import annotations

import difflib
import socket

from kafka import KafkaAdminClient, KafkaProducer
from kafka import KafkaConsumer as KafkaConsumer  # re-exported: the demo's reader is typed with it
from kafka.partitioner.default import murmur2

from streamer.config import KafkaSettings
from streamer.errors import ConfigError, KafkaUnavailable
from streamer.kafka import fast_paths


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2), computed once per stream."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def common_config(kafka: KafkaSettings) -> dict:
    """Client settings shared by consumer, producer and admin, security included."""
    cfg: dict = {"bootstrap_servers": kafka.bootstrap_servers.split(","), "client_id": kafka.client_id,
                 "security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL"):
        cfg.update(sasl_mechanism=kafka.sasl_mechanism, sasl_plain_username=kafka.sasl_username,
                   sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    if kafka.security_protocol.endswith("SSL"):
        cfg.update({k: v for k, v in {"ssl_cafile": kafka.ssl_cafile, "ssl_certfile": kafka.ssl_certfile,
                                      "ssl_keyfile": kafka.ssl_keyfile}.items() if v})
        if kafka.ssl_password is not None:
            cfg["ssl_password"] = kafka.ssl_password.get_secret_value()
    return cfg


def bootstrap_addresses(kafka: KafkaSettings) -> list[tuple[str, int]]:
    """(host, port) of every bootstrap server ("host:port", "[v6]:port"; Kafka's port 9092 when none is given)."""
    out = []
    for server in kafka.bootstrap_servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or "]" in port:  # no port ("broker" or "[::1]")
            host, port = server.strip(), "9092"
        out.append((host.strip("[]"), int(port)))
    return out


def reachable(kafka: KafkaSettings, timeout_s: float = 2.0) -> None:
    """Return once a bootstrap server accepts a TCP connection; raise KafkaUnavailable with every server's error.

    A cheap gate before a Kafka client is made: kafka-python's bootstrap retries an absent broker for 30 s,
    logging an error per try, where this answers at once (refused) or after `timeout_s` (unroutable).
    """
    addresses, errors = bootstrap_addresses(kafka), []
    for host, port in addresses:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}" if len(addresses) == 1 else f"{host}:{port}: {exc}")
    raise KafkaUnavailable("; ".join(errors))


_SECURITY = {key: "STREAMER_KAFKA__SECURITY_PROTOCOL and the SASL/SSL settings" for key in (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password", "ssl_cafile",
    "ssl_certfile", "ssl_keyfile", "ssl_password")}
_COMMON = {"bootstrap_servers": "STREAMER_KAFKA__BOOTSTRAP_SERVERS", "client_id": "STREAMER_KAFKA__CLIENT_ID",
           **_SECURITY}
# Keys an option must not set: a setting of its own covers them, or exactly-once and the record format rely on them.
RESERVED_OPTIONS: dict[str, dict[str, str]] = {
    "consumer": {**_COMMON, "group_id": "STREAMER_KAFKA__GROUP_ID", "group_instance_id": "STREAMER_KAFKA__INSTANCE_ID",
                 "session_timeout_ms": "STREAMER_KAFKA__SESSION_TIMEOUT_MS",
                 "auto_offset_reset": "STREAMER_KAFKA__AUTO_OFFSET_RESET",
                 "max_partition_fetch_bytes": "STREAMER_KAFKA__MAX_PARTITION_FETCH_BYTES",
                 "enable_auto_commit": "the daemon (offsets are committed with the outputs)",
                 "isolation_level": "the daemon (read_committed, for exactly-once)",
                 "key_deserializer": "the daemon (it decodes raw bytes)",
                 "value_deserializer": "the daemon (it decodes raw bytes)"},
    "producer": {**_COMMON, "transactional_id": "STREAMER_KAFKA__TRANSACTIONAL_ID",
                 "transaction_timeout_ms": "STREAMER_KAFKA__TRANSACTION_TIMEOUT_MS",
                 "enable_idempotence": "the daemon (exactly-once needs it)",
                 "acks": "the daemon (exactly-once needs all)",
                 "key_serializer": "the daemon (it sends raw bytes)",
                 "value_serializer": "the daemon (it sends raw bytes)"},
    "admin": dict(_COMMON),
}
_CLIENTS = {"consumer": KafkaConsumer, "producer": KafkaProducer, "admin": KafkaAdminClient}


def client_options(kafka: KafkaSettings, role: str) -> dict:
    """STREAMER_KAFKA__<ROLE>_OPTIONS, checked against the kafka-python client's own options (ConfigError)."""
    options = getattr(kafka, f"{role}_options")
    name = f"STREAMER_KAFKA__{role.upper()}_OPTIONS"
    known = sorted(_CLIENTS[role].DEFAULT_CONFIG)
    for key in options:
        if key in RESERVED_OPTIONS[role]:
            raise ConfigError(f"{name}: {key!r} is set by {RESERVED_OPTIONS[role][key]}, not by options")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see kafka-python's {_CLIENTS[role].__name__}"
            raise ConfigError(f"{name}: {key!r} is no {_CLIENTS[role].__name__} option; {hint}")
    return dict(options)


def check_client_options(kafka: KafkaSettings) -> None:
    """Fail (ConfigError naming the setting and the key) when an extra client option is unknown or reserved."""
    for role in _CLIENTS:
        client_options(kafka, role)


def consumer_config(kafka: KafkaSettings) -> dict:
    """The KafkaConsumer arguments: a group member that reads committed data only and never commits on its own."""
    static = {"group_instance_id": kafka.instance_id} if kafka.instance_id else {}
    return {
        **common_config(kafka),
        **static,
        "group_id": kafka.group_id,
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": max(1000, kafka.session_timeout_ms // 5),
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": kafka.auto_offset_reset,
        "max_partition_fetch_bytes": max(kafka.max_record_bytes, kafka.max_partition_fetch_bytes),
        **client_options(kafka, "consumer"),
    }


def make_consumer(kafka: KafkaSettings, stock_decoding: bool = False) -> KafkaConsumer:
    """A group consumer (consumer_config); it decodes fetched records with fast_paths unless
    `stock_decoding` (kafka-python's own, e.g. for a baseline) is asked for."""
    consumer = KafkaConsumer(**consumer_config(kafka))
    if not stock_decoding:
        fast_paths.install(consumer)
    return consumer


def make_reader(kafka: KafkaSettings, topics: list[str]) -> KafkaConsumer:
    """A consumer outside any group that reads `topics` from their start, committed records only: how a
    subscriber (the demo) sees the daemon's outputs."""
    return KafkaConsumer(*topics, **common_config(kafka), **client_options(kafka, "consumer"), group_id=None,
                         isolation_level="read_committed", auto_offset_reset="earliest", enable_auto_commit=False)


def producer_config(kafka: KafkaSettings, transactional_id: str | None) -> dict:
    """The KafkaProducer arguments: idempotent; transactional when a transactional id is given."""
    extra = ({"transactional_id": transactional_id, "transaction_timeout_ms": kafka.transaction_timeout_ms}
             if transactional_id else {})
    return {
        **common_config(kafka),
        "acks": "all",
        "enable_idempotence": True,
        # Every send is followed by a flush or a transaction commit (Committer), so nothing waits on the linger:
        # the sender thread stays idle while the loop appends, instead of fighting it for the batch locks. With
        # transactions that holds until the first commit only: kafka-python's sender begins a flush when a
        # transaction ends and never ends it (3.0.12, Sender._maybe_send_pending_request), so from then on
        # a batch goes out whenever the sender runs, which the 1 ms switch interval of the loop makes often.
        "linger_ms": 1000,
        "batch_size": 1024 * 1024,
        "max_request_size": max(kafka.max_record_bytes, 1_048_576) * 2,
        # A transaction's first request right after the previous commit is refused with CONCURRENT_TRANSACTIONS
        # until the broker has written the commit markers; kafka-python retries after retry_backoff_ms (100 by
        # default), which made every commit's send_offsets_to_transaction wait out such backoffs. The
        # Java client retries that error after 20 ms (KAFKA-5477); so does this producer, for all retries.
        "retry_backoff_ms": 20,
        **extra,
        **client_options(kafka, "producer"),
    }


def transactional_id(kafka: KafkaSettings) -> str:
    """Stable per instance, so a restarted instance fences and aborts its predecessor's open transaction."""
    return kafka.transactional_id or f"{kafka.group_id}-{kafka.instance_id or socket.gethostname()}"


def make_producer(kafka: KafkaSettings, transactional_id: str | None) -> KafkaProducer:
    """An idempotent producer (producer_config); transactional when a transactional id is given."""
    return KafkaProducer(**producer_config(kafka, transactional_id))


def admin_config(kafka: KafkaSettings) -> dict:
    """The KafkaAdminClient arguments."""
    return {**common_config(kafka), **client_options(kafka, "admin")}
