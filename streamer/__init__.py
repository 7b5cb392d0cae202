"""streamer: stateful LSTM/GRU models over unbounded Kafka sensor streams."""

__version__ = "0.1.0"
