"""Recurrent model families (RNN, LSTM, GRU) shared by training and serving."""

from __future__ import annotations

from streamer.models.config import FAMILIES, HEADS, ModelConfig, value_head
from streamer.models.gru import GRUModel
from streamer.models.lstm import LSTMModel
from streamer.models.recurrent import Plan, RecurrentModel, default_strategy, make_plan
from streamer.models.rnn import RNNModel

_FAMILY_CLASSES: dict[str, type[RecurrentModel]] = {"rnn": RNNModel, "lstm": LSTMModel, "gru": GRUModel}


def build_model(cfg: ModelConfig) -> RecurrentModel:
    """A freshly initialised model of cfg's family."""
    return _FAMILY_CLASSES[cfg.family](cfg)


__all__ = [
    "FAMILIES",
    "HEADS",
    "GRUModel",
    "LSTMModel",
    "ModelConfig",
    "Plan",
    "RNNModel",
    "RecurrentModel",
    "build_model",
    "default_strategy",
    "make_plan",
    "value_head",
]
