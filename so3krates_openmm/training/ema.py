"""Exponential moving average (EMA) of model weights, used for evaluation and the best checkpoint."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class ExponentialMovingAverage:
    """Shadow copies ``s <- d s + (1 - d) p`` of parameters after every optimiser step.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))`` over the
    first updates ``n``, so that the average is not dominated by the random
    initial weights (the convention of MACE and NequIP).
    """

    def __init__(self, parameters: Sequence[nn.Parameter], decay: float) -> None:
        self.parameters: list[nn.Parameter] = list(parameters)
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: list[Tensor] = [p.detach().clone() for p in self.parameters]

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow weights towards the current parameters."""
        self.num_updates += 1
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model's parameters are the averaged ones; restored afterwards."""
        backup = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for parameter, average in zip(self.parameters, self.shadow, strict=True):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, backup, strict=True):
                    parameter.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [s.detach().cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["shadow"]) != len(self.parameters):
            raise ValueError("EMA state does not match the model's parameters")
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = [
            s.to(device=p.device, dtype=p.dtype).clone() for s, p in zip(state["shadow"], self.parameters, strict=True)
        ]
