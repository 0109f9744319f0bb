"""The learned ranker: a one-hidden-layer perceptron, y = s(W2 s(W1 x + b1) + b2).

``x`` holds one candidate's features (see :data:`core.mix.FEATURES`), ``s`` is
the logistic function, and ``y`` the probability that the customer takes the
candidate next. It learns online, from what customers did after a list: each
step is one gradient step on a list's candidates, the softmax of their output
logits against the one taken (the order of ``y`` is the order of the logits).
Everything is seeded and sequential, so the same samples in the same order give
the same weights, bit for bit.

>>> ranker = MLPRanker.new(n_features=2, hidden=4, seed=1)
>>> x = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> for _ in range(300):
...     ranker.learn(x, np.array([1.0, 0.0]), learning_rate=0.5)
>>> scores = ranker.score(x)
>>> logits = np.log(scores / (1 - scores))
>>> shares = np.exp(logits) / np.exp(logits).sum()
>>> bool(shares[0] > 0.95), ranker.steps
(True, 300)
>>> MLPRanker.from_state(ranker.to_state()).score(x).tolist() == scores.tolist()
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

STATE_VERSION = 1


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # no overflow warnings


@dataclass
class MLPRanker:
    """Weights of the ranker and how many learning steps made them."""

    w1: np.ndarray  # (hidden, features)
    b1: np.ndarray  # (hidden,)
    w2: np.ndarray  # (hidden,)
    b2: float
    steps: int = 0
    positives: int = 0

    @classmethod
    def new(cls, n_features: int, hidden: int, seed: int) -> MLPRanker:
        """Small random weights (seeded), so hidden units differ from the start."""
        rng = np.random.default_rng(seed)
        return cls(
            w1=rng.normal(0.0, 1.0 / np.sqrt(n_features), (hidden, n_features)),
            b1=np.zeros(hidden),
            w2=rng.normal(0.0, 1.0 / np.sqrt(hidden), hidden),
            b2=0.0,
        )

    @property
    def n_features(self) -> int:
        return int(self.w1.shape[1])

    def score(self, x: np.ndarray) -> np.ndarray:
        """Each row's probability of being taken."""
        hidden = _sigmoid(x @ self.w1.T + self.b1)
        return _sigmoid(hidden @ self.w2 + self.b2)

    def learn(self, x: np.ndarray, taken: np.ndarray, learning_rate: float) -> None:
        """One gradient step on one list: the cross-entropy of the softmax of the
        output logits over its rows against the rows taken (``taken`` 1 or 0).

        Listwise, because what matters is the order within a list: a pointwise
        log-loss spends itself on the many candidates nobody took.
        """
        hidden = _sigmoid(x @ self.w1.T + self.b1)
        logits = hidden @ self.w2 + self.b2
        shares = np.exp(logits - logits.max())
        error = shares / shares.sum() - taken / taken.sum()  # d loss / d logit, per row
        grad_w2 = hidden.T @ error
        grad_b2 = float(error.sum())
        back = np.outer(error, self.w2) * hidden * (1.0 - hidden)
        self.w1 -= learning_rate * (back.T @ x)
        self.b1 -= learning_rate * back.sum(axis=0)
        self.w2 -= learning_rate * grad_w2
        self.b2 -= learning_rate * grad_b2
        self.steps += 1
        self.positives += int(taken.sum())

    def to_state(self) -> dict[str, Any]:
        """JSON-native (floats as written by repr, so they come back exactly)."""
        return {"version": STATE_VERSION, "w1": self.w1.tolist(), "b1": self.b1.tolist(),
                "w2": self.w2.tolist(), "b2": float(self.b2), "steps": self.steps,
                "positives": self.positives}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MLPRanker:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"MLPRanker state version {state.get('version')!r}")
        return cls(w1=np.asarray(state["w1"], dtype=np.float64),
                   b1=np.asarray(state["b1"], dtype=np.float64),
                   w2=np.asarray(state["w2"], dtype=np.float64),
                   b2=float(state["b2"]), steps=int(state["steps"]),
                   positives=int(state["positives"]))
