"""Workload shapes, their FLOP counts and their input data (numpy, shared by every peer)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

Kind = Literal["train", "infer", "step"]


@dataclasses.dataclass(frozen=True)
class Workload:
    """One benchmarked call.

    ``train``: forward + backward over ``[B, T, I]`` (gradients of the weights).
    ``infer``: forward over ``[B, T, I]``, returning outputs and final state.
    ``step``: one step ``[B, I]`` per call, carrying the state, as in a rollout.
    """

    name: str
    kind: Kind
    batch: int  # B
    steps: int  # T (1 for step mode)
    input_size: int  # I
    hidden_size: int  # H
    num_layers: int = 1  # L
    reset_prob: float = 0.0  # probability that is_init is set at a step t >= 1
    description: str = ""

    @property
    def forward_flops(self) -> float:
        """Matmul FLOPs of the forward pass: 2·B·T·4H·(I+H), summed over layers."""
        h = self.hidden_size
        total = 0.0
        for layer in range(self.num_layers):
            fan_in = self.input_size if layer == 0 else h
            total += 2.0 * self.batch * self.steps * 4 * h * (fan_in + h)
        return total

    @property
    def flops(self) -> float:
        """Matmul FLOPs of one call; a backward pass costs about twice the forward."""
        return 3.0 * self.forward_flops if self.kind == "train" else self.forward_flops

    def shapes(self) -> dict:
        return {
            "kind": self.kind,
            "B": self.batch,
            "T": self.steps,
            "I": self.input_size,
            "H": self.hidden_size,
            "L": self.num_layers,
            "reset_prob": self.reset_prob,
        }

    def replace(self, **changes) -> Workload:
        return dataclasses.replace(self, **changes)


def main_workloads(quick: bool) -> list[Workload]:
    """W1..W4. ``quick`` shrinks every shape so that the whole run is CI-sized."""
    if quick:
        # W2 takes W1's shapes so that its programs are compiled once for both.
        w1 = dict(batch=8, steps=16, input_size=8, hidden_size=16)
        w2 = dict(w1)
        step_b = 16
    else:
        w1 = dict(batch=64, steps=128, input_size=64, hidden_size=256)
        w2 = dict(batch=256, steps=32, input_size=32, hidden_size=128)
        step_b = 256
    step_shape = dict(steps=1, input_size=w1["input_size"], hidden_size=w1["hidden_size"])
    return [
        Workload(
            "W1_train", "train", reset_prob=1 / 50, description="train fwd+bwd, resets 1/50", **w1
        ),
        Workload(
            "W2_train", "train", reset_prob=1 / 50, description="train fwd+bwd, resets 1/50", **w2
        ),
        Workload("W3_infer", "infer", reset_prob=1 / 50, description="inference, W1 shapes", **w1),
        Workload("W4_step_B1", "step", batch=1, description="one step per call", **step_shape),
        Workload(
            f"W4_step_B{step_b}",
            "step",
            batch=step_b,
            description="one step per call",
            **step_shape,
        ),
    ]


@dataclasses.dataclass
class Data:
    """Inputs for one workload, identical for every implementation."""

    x: np.ndarray  # [B, T, I] (train/infer) or [B, I] (step), float32
    is_init: np.ndarray  # [B, T] (train/infer) or [B] (step), bool
    cotangent: np.ndarray | None  # [B, T, H] float32 for train: loss = sum(y * cotangent)


def make_data(wl: Workload, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    if wl.kind == "step":
        x = rng.standard_normal((wl.batch, wl.input_size), dtype=np.float32)
        return Data(x=x, is_init=np.zeros((wl.batch,), bool), cotangent=None)
    x = rng.standard_normal((wl.batch, wl.steps, wl.input_size), dtype=np.float32)
    is_init = rng.random((wl.batch, wl.steps)) < wl.reset_prob
    # Every row starts a trajectory at t=0, as in a rollout; resets at t >= 1
    # are what split a row into several trajectories.
    is_init[:, 0] = True
    cotangent = None
    if wl.kind == "train":
        cotangent = rng.standard_normal((wl.batch, wl.steps, wl.hidden_size), dtype=np.float32)
    return Data(x=x, is_init=is_init, cotangent=cotangent)


def torch_layout_weights(wl: Workload, seed: int = 0) -> dict[str, np.ndarray]:
    """``nn.LSTM``-layout weights (U(±1/sqrt(H)), as torch initialises), shared by all peers."""
    import jaxlstm

    rng = np.random.default_rng(seed + 1)
    bound = 1.0 / np.sqrt(wl.hidden_size)
    # The exported parameter table: torch's names, shapes and order.
    shapes = jaxlstm.lstm_param_shapes(wl.input_size, wl.hidden_size, wl.num_layers, True)
    sd = {}
    for name, shape in shapes.items():
        sd[name] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return sd
