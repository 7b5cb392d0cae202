#!/usr/bin/env bash
# Start, stop or query a single-node Apache Kafka broker (KRaft, broker+controller in one JVM)
# assembled from Maven Central jars. Listeners bind 127.0.0.1 only.
#   kafka.sh up | down | stop | start | status | fetch
#   up: a fresh broker (data wiped); down: stop it and wipe its data;
#   stop: stop it and keep its data; start: start it again on the kept data (a broker restart).
# Environment: KAFKA_PORT (default 19092; the controller takes KAFKA_PORT+1),
#              KAFKA_DATA_DIR (default ${TMPDIR:-/tmp}/streamer-kafka-$KAFKA_PORT),
#              KAFKA_HEAP (default 512m), KAFKA_START_TIMEOUT seconds (default 90),
#              KAFKA_SASL_PORT (optional): a SASL_PLAINTEXT listener there with PLAIN and
#              SCRAM-SHA-256/512, user "streamer", password from KAFKA_SASL_PASSWORD (default streamer-secret).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
port="${KAFKA_PORT:-19092}"
controller_port=$((port + 1))
data="${KAFKA_DATA_DIR:-${TMPDIR:-/tmp}/streamer-kafka-$port}"
jars="$here/.jars"
pidfile="$data/broker.pid"
bootstrap="127.0.0.1:$port"

die() { echo "local-kafka: $*" >&2; exit 1; }

need_tools() {
  command -v java >/dev/null 2>&1 || die "Java 17 or newer is required (no 'java' on PATH); on Debian: apt-get install openjdk-17-jre-headless"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | cut -d. -f1)
  [ -n "$major" ] && [ "$major" -ge 17 ] || die "Java 17 or newer is required, found specification version '${major:-unknown}'"
}

fetch_jars() {
  [ -f "$jars/.complete" ] && return 0
  command -v mvn >/dev/null 2>&1 || die "Maven is required to fetch the Kafka jars (no 'mvn' on PATH); on Debian: apt-get install maven"
  echo "local-kafka: fetching Kafka jars from Maven Central into $jars" >&2
  rm -rf "$jars"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -Djar.dir="$jars" >&2 \
    || die "Maven could not fetch the Kafka jars (see the output above)"
  touch "$jars/.complete"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

sasl_port="${KAFKA_SASL_PORT:-}"
sasl_password="${KAFKA_SASL_PASSWORD:-streamer-secret}"

write_config() {
  mkdir -p "$data/logs"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
  local advertised="PLAINTEXT://127.0.0.1:$port"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [ -n "$sasl_port" ]; then
    listeners="$listeners,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    advertised="$advertised,SASL_PLAINTEXT://127.0.0.1:$sasl_port"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
  fi
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$data/kraft-logs
num.partitions=1
# One broker: every internal topic has one replica and one in-sync replica, or
# group commits and transactions wait for replicas that never come.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
# Abort the open transactions of crashed producers soon after their timeout, not up to 10 s later.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
# The cleaner's default 128 MiB dedupe buffer does not fit a small heap.
log.cleaner.dedupe.buffer.size=4194304
log.cleaner.backoff.ms=1000
PROPS
  if [ -n "$sasl_port" ]; then
    # PLAIN users live in the JAAS line; SCRAM credentials are written into the metadata log at format time.
    cat >> "$data/server.properties" <<PROPS
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_streamer="$sasl_password";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
  fi
}

up() {
  if running; then
    echo "$bootstrap"
    return 0
  fi
  need_tools
  fetch_jars
  port_open "$port" && die "port $port is already in use by another process; set KAFKA_PORT"
  rm -rf "$data"
  write_config
  local cluster_id
  # base64url of 16 random bytes; one starting with '-' would be read as an option (Kafka's own random-uuid
  # avoids those the same way)
  cluster_id=-
  while [[ "$cluster_id" == -* ]]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  java -cp "$jars/*" -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$data/logs" \
    kafka.tools.StorageTool format --standalone -t "$cluster_id" -c "$data/server.properties" \
    ${sasl_port:+--add-scram "SCRAM-SHA-256=[name=streamer,password=$sasl_password]"} \
    ${sasl_port:+--add-scram "SCRAM-SHA-512=[name=streamer,password=$sasl_password]"} \
    > "$data/logs/format.log" 2>&1 || { cat "$data/logs/format.log" >&2; die "storage format failed"; }
  launch
}

# Start the JVM on the configured data dir and wait until the broker serves.
launch() {
  local cp="$jars/*"
  local start=$SECONDS
  # A restart must not mistake the previous run's "Kafka Server started" for its own.
  if [ -f "$data/logs/server.log" ]; then mv "$data/logs/server.log" "$data/logs/server.log.$start.prev"; fi
  # setsid: the broker outlives the shell that started it and ignores its terminal's signals.
  setsid java -Xmx"${KAFKA_HEAP:-512m}" -Xms"${KAFKA_HEAP:-512m}" -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$data/logs" \
    -cp "$cp" kafka.Kafka "$data/server.properties" \
    > "$data/logs/stdout.log" 2>&1 < /dev/null &
  echo $! > "$pidfile"
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-90}))
  until port_open "$port" && grep -q "Kafka Server started" "$data/logs/server.log" 2>/dev/null; do
    if ! running; then
      tail -n 40 "$data/logs/stdout.log" "$data/logs/server.log" >&2 2>/dev/null || true
      die "the broker exited during start-up (logs in $data/logs)"
    fi
    [ $SECONDS -lt $deadline ] || { down >/dev/null; die "the broker did not start within ${KAFKA_START_TIMEOUT:-90}s (logs in $data/logs)"; }
    sleep 0.2
  done
  echo "local-kafka: broker up in $((SECONDS - start))s, data in $data" >&2
  echo "$bootstrap"
}

stop() {
  if running; then
    local pid
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    echo "local-kafka: broker on $bootstrap stopped" >&2
  fi
}

down() {
  stop
  rm -rf "$data"
}

start() {
  if running; then
    echo "$bootstrap"
    return 0
  fi
  [ -f "$data/server.properties" ] || die "no broker data in $data to start on; use 'up' for a fresh broker"
  need_tools
  port_open "$port" && die "port $port is already in use by another process; set KAFKA_PORT"
  launch
}

case "${1:-}" in
  up) up ;;
  fetch) need_tools; fetch_jars ;;
  down) down ;;
  stop) stop ;;
  start) start ;;
  status) if running; then echo "running on $bootstrap (pid $(cat "$pidfile"))"; else echo "not running"; exit 1; fi ;;
  *) echo "usage: $0 up|down|stop|start|status|fetch" >&2; exit 2 ;;
esac
