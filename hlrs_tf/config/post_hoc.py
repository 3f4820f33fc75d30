"""Typed configuration of a post-hoc re-balancing run (``python -m hlrs_tf.post_hoc``), TensorFlow-free.

The methods themselves are :mod:`hlrs_tf.train.rebalancing`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["POST_HOC_METHODS", "PostHocConfig", "PostHocError"]

#: What ``--post_hoc`` accepts.
POST_HOC_METHODS = ("logit_adjust", "tau_norm", "crt")


class PostHocError(ValueError):
    """A post-hoc run that cannot start; the message names the flag or the file and what to do."""


@dataclasses.dataclass(frozen=True)
class PostHocConfig:
    """Settings of one post-hoc run (the flags of ``python -m hlrs_tf.post_hoc``).

    Attributes:
        method: One of :data:`POST_HOC_METHODS`.
        tau: The tau of ``logit_adjust`` / ``tau_norm``; ``None`` chooses it on the validation split.
        tau_max: The search grid is ``tau_steps + 1`` evenly spaced values in ``[0, tau_max]``.
        tau_steps: See ``tau_max``.
        crt_epochs: cRT epochs (passes over the training split's size).
        crt_batch_size: cRT batch size.
        crt_learning_rate: cRT's initial SGD learning rate (cosine decay to 0 over the run).
        crt_momentum: cRT's SGD momentum.
        crt_weight_decay: cRT's coupled L2 on the classifier.
        seed: Seed of cRT's classifier initialisation and class-balanced sampling.
        eval_batch_size: Batch size of the feature and test passes.
    """

    method: str
    tau: float | None = None
    tau_max: float = 2.0
    tau_steps: int = 20
    crt_epochs: int = 10
    crt_batch_size: int = 512
    crt_learning_rate: float = 0.2
    crt_momentum: float = 0.9
    crt_weight_decay: float = 5e-4
    seed: int = 0
    eval_batch_size: int = 256

    def __post_init__(self):
        def require(ok, flag, value, allowed):
            if not ok:
                raise PostHocError(f"--{flag}={value} is invalid: it must be {allowed}")

        require(self.method in POST_HOC_METHODS, "post_hoc", self.method, f"one of {', '.join(POST_HOC_METHODS)}")
        require(self.tau is None or (np.isfinite(self.tau) and self.tau >= 0), "tau", self.tau,
                "a finite number >= 0 (or unset: chosen on the validation split)")
        require(np.isfinite(self.tau_max) and self.tau_max > 0, "tau_max", self.tau_max, "a finite number > 0")
        require(self.tau_steps >= 1, "tau_steps", self.tau_steps, "an integer >= 1")
        require(self.crt_epochs >= 1, "crt_epochs", self.crt_epochs, "an integer >= 1")
        require(self.crt_batch_size >= 1, "crt_batch_size", self.crt_batch_size, "an integer >= 1")
        require(np.isfinite(self.crt_learning_rate) and self.crt_learning_rate > 0, "crt_learning_rate",
                self.crt_learning_rate, "a finite number > 0")
        require(0 <= self.crt_momentum < 1, "crt_momentum", self.crt_momentum, "in [0, 1)")
        require(np.isfinite(self.crt_weight_decay) and self.crt_weight_decay >= 0, "crt_weight_decay",
                self.crt_weight_decay, "a finite number >= 0")

    def tau_grid(self) -> np.ndarray:
        """The taus tried on the validation split."""
        return np.linspace(0.0, self.tau_max, self.tau_steps + 1)
