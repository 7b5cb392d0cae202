"""Offline training of streamer's recurrent models: data, stateful TBPTT fitting, checkpoints, reports."""
