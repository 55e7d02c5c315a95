"""The paper's learning-rate schedule: ``lr(step) = lr0 * decay ** (step / decay_steps)``."""

from __future__ import annotations

from typing import Any

import torch


class ExponentialDecaySchedule:
    """Continuous exponential decay of the learning rate of every parameter group, per optimiser step.

    The paper uses ``lr0 = 1e-3``, ``decay = 0.7``, ``decay_steps = 1e5`` and
    stops training when the learning rate falls below 1e-5.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, initial_lr: float, decay: float, decay_steps: float) -> None:
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.decay = float(decay)
        self.decay_steps = float(decay_steps)
        self.steps = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        return self.initial_lr * self.decay ** (step / self.decay_steps)

    @property
    def lr(self) -> float:
        """The learning rate of the next optimiser step."""
        return self.lr_at(self.steps)

    def step(self) -> None:
        """Call after every optimiser step."""
        self.steps += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "initial_lr": self.initial_lr, "decay": self.decay, "decay_steps": self.decay_steps, "steps": self.steps
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.initial_lr = float(state["initial_lr"])
        self.decay = float(state["decay"])
        self.decay_steps = float(state["decay_steps"])
        self.steps = int(state["steps"])
        self._apply()
