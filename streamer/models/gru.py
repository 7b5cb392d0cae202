"""GRU family: state h, three gate blocks (r, z, n)."""

from __future__ import annotations

from torch import nn

from streamer.models.recurrent import RecurrentModel


class GRUModel(RecurrentModel):
    """Stacked GRU (torch's reset-after variant, like Keras' reset_after=True) with Keras initialisation."""

    state_names = ("h",)
    gates = 3
    rnn_class = nn.GRU
