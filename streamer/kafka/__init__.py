"""Everything that touches kafka-python: clients, topic admin, polling, committing, the changelog reader, replay,
and the fast paths over kafka-python's internals (confined to streamer.kafka.fast_paths)."""
