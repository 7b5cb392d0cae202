"""Vanilla RNN family: state h, h_t = tanh(W x_t + U h_{t-1} + b)."""

from __future__ import annotations

from torch import nn

from streamer.models.recurrent import RecurrentModel


class RNNModel(RecurrentModel):
    """Stacked tanh RNN with Keras initialisation."""

    state_names = ("h",)
    gates = 1
    rnn_class = nn.RNN
