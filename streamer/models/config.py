"""ModelConfig: the architecture of a recurrent model, stored in checkpoints as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from streamer.errors import ConfigError

FAMILIES = ("rnn", "lstm", "gru")
HEADS = ("forecast", "reconstruction", "event", "symbol")


def value_head(heads: tuple[str, ...]) -> str | None:
    """The head whose outputs are readings-to-be (published as forecasts, scored for anomalies); None: none."""
    return next((h for h in ("forecast", "reconstruction") if h in heads), None)


def check_sizes(what: str, config: Any, sizes: tuple[str, ...]) -> None:
    """Sizes of at least 1 and a dropout in [0, 1), else ConfigError naming `what` and the field."""
    for name in sizes:
        if int(getattr(config, name)) < 1:
            raise ConfigError(f"{what} {name} must be >= 1, got {getattr(config, name)}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"{what} dropout must be in [0, 1), got {config.dropout}")


def check_keys(what: str, cls: type, d: dict[str, Any]) -> None:
    """A config dict names only the fields of `cls` (unknown keys are an error, not silently dropped)."""
    extra = set(d) - {f.name for f in fields(cls)}
    if extra:
        raise ConfigError(f"unknown {what} config keys: {sorted(extra)}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one recurrent model: family, sizes, inputs and output heads."""

    family: str
    n_features: int
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    horizon: int = 1
    categorical: tuple[tuple[int, int], ...] = ()
    heads: tuple[str, ...] = ("forecast", "reconstruction")
    n_events: int = 1
    n_symbols: int = 0
    learn_initial_state: bool = False

    def __post_init__(self) -> None:
        # normalise lists (from JSON) to tuples so that the config stays hashable
        object.__setattr__(self, "categorical", tuple((int(c), int(d)) for c, d in self.categorical))
        object.__setattr__(self, "heads", tuple(self.heads))
        self._validate()

    def _validate(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"model family {self.family!r} is not one of {FAMILIES}")
        check_sizes("model", self, ("n_features", "hidden", "layers", "horizon"))
        if not self.heads:
            raise ConfigError("model needs at least one output head")
        unknown = [h for h in self.heads if h not in HEADS]
        if unknown or len(set(self.heads)) != len(self.heads):
            raise ConfigError(f"model heads {self.heads} must be distinct names among {HEADS}")
        if "event" in self.heads and self.n_events < 1:
            raise ConfigError("the event head needs n_events >= 1")
        if "symbol" in self.heads and self.n_symbols < 1:
            raise ConfigError("the symbol head needs n_symbols >= 1")
        for card, dim in self.categorical:
            if card < 1 or dim < 1:
                raise ConfigError(f"categorical input (cardinality {card}, dim {dim}) needs both >= 1")

    @property
    def input_size(self) -> int:
        """Width of the recurrent layer's input: numeric features plus embedding dims."""
        return self.n_features + sum(d for _, d in self.categorical)

    def head_dims(self) -> dict[str, tuple[int, ...]]:
        """Per-step output shape of each enabled head, in head order."""
        dims = {
            "forecast": (self.horizon, self.n_features),
            "reconstruction": (self.n_features,),
            "event": (self.n_events,),
            "symbol": (self.n_symbols,),
        }
        return {h: dims[h] for h in self.heads}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists)."""
        d = asdict(self)
        d["categorical"] = [list(p) for p in self.categorical]
        d["heads"] = list(self.heads)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict; unknown keys are an error, not silently dropped."""
        check_keys("model", cls, d)
        return cls(**d)
