"""LSTM family: state (h, c), four gate blocks (i, f, g, o), forget-gate bias 1."""

from __future__ import annotations

from torch import nn

from streamer.models.recurrent import RecurrentModel


class LSTMModel(RecurrentModel):
    """Stacked LSTM with Keras initialisation (unit forget bias)."""

    state_names = ("h", "c")
    gates = 4
    rnn_class = nn.LSTM

    def _init_biases(self) -> None:
        """Total forget bias 1: b_ih forget block = 1, b_hh stays 0 (torch adds both)."""
        hidden = self.config.hidden
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                p[hidden : 2 * hidden] = 1.0
