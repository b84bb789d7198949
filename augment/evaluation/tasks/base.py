"""What every evaluation task provides to the gain experiment."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np
import torch

from augment.config import EvaluateConfig

if TYPE_CHECKING:
    from augment.evaluation.experiment import ExperimentData, Split

# The downstream models' memory layout, for weights and inputs alike: oneDNN's convolutions run
# 10-20% faster in it on the CPU (docs/benchmarks.md).
LAST = torch.channels_last

# How a trained model's outputs become decisions (a threshold chosen on val); None: none needed.
Decision = float | None


class Task(Protocol):
    """A downstream model: trained per arm and seed, scored on the test patients.

    Attributes:
        metrics: the names :meth:`score` returns; the first is the headline (verdicts, plots).
    """

    metrics: ClassVar[tuple[str, ...]]
    needs_masks: ClassVar[bool]
    lower_is_better: ClassVar[frozenset[str]]  # metrics where a decrease is the gain

    def train(
        self,
        train: Split,
        val: Split,
        n_classes: int,
        cfg: EvaluateConfig,
        seed: int,
        classic: bool,
        device: torch.device,
    ) -> tuple[torch.nn.Module, list[float]]:
        """Train one arm's model for one seed; return it and its validation curve.

        ``train`` holds the arm's real slices and, in the synthetic arms, the synthetic ones
        after them (patient ``synthetic``).
        """
        ...

    def view(
        self, data: ExperimentData, cfg: EvaluateConfig
    ) -> tuple[ExperimentData, dict[str, np.ndarray]]:
        """The slices this task trains and scores on, and for each real split that it thins
        out, the indices it kept (``{}``: the data as it is)."""
        ...

    def predict(
        self, model: torch.nn.Module, images: np.ndarray, device: torch.device
    ) -> np.ndarray:
        """Test predictions of a trained model, in the form :meth:`score` takes."""
        ...

    def calibrate(self, truth: Split, pred: np.ndarray) -> Decision:
        """Choose the decision rule on the val split (never on test): e.g. a threshold."""
        ...

    def score(
        self,
        truth: Split,
        pred: np.ndarray,
        weights: np.ndarray | None = None,
        decision: Decision = None,
    ) -> dict[str, np.ndarray]:
        """Each metric for one or many weightings of the slices: name -> (B,) values.

        ``weights`` (B, n) are a patient bootstrap's slice weights: constant within a patient.
        """
        ...

    def floors(
        self, data: ExperimentData, features: dict[str, np.ndarray]
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Untrained shortcut predictors: name -> (val predictions, test predictions).

        Args:
            data: the experiment's slices; a floor may be fitted on ``data.train`` only.
            features: fixed random-network features of ``train``, ``val`` and ``test``.
        """
        ...


@dataclass
class Schedule:
    """How one downstream model trains: steps, batch, peak lr, val checks, what is kept."""

    steps: int
    batch_size: int
    lr: float
    val_checks: int
    select: str  # "last" or "best"


def val_checkpoints(steps: int, checks: int) -> set[int]:
    """The steps after which the val split is scored (evenly spaced, the last step included)."""
    return {int(round(steps * (i + 1) / checks)) for i in range(min(checks, steps))}


def fit(
    model: torch.nn.Module,
    schedule: Schedule,
    draw_weight: torch.Tensor,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    val_score: Callable[[], float],
    gen: torch.Generator,
) -> list[float]:
    """The training loop every task shares: weighted draws, Adam with a one-cycle schedule.

    Args:
        model: trained in place; with ``select: best`` it ends with its best val weights.
        schedule: steps, batch size, peak learning rate, val checks, selection.
        draw_weight: (n,) how often each training slice is drawn (class balance).
        batch_loss: the loss of the batch of these slice indices (augmentation inside).
        val_score: the model's val score now (higher is better).
        gen: the run's random generator (batches).

    Returns:
        The val score at each check.

    Raises:
        RuntimeError: ``select: best`` and no check gave a finite score.
    """
    opt = torch.optim.Adam(model.parameters(), lr=schedule.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, schedule.lr, total_steps=schedule.steps, pct_start=0.15, anneal_strategy="cos"
    )
    checks = val_checkpoints(schedule.steps, schedule.val_checks)
    best, best_state, curve = -np.inf, None, []
    for step in range(1, schedule.steps + 1):
        model.train()
        idx = torch.multinomial(draw_weight, schedule.batch_size, replacement=True, generator=gen)
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step in checks:
            score = val_score()
            curve.append(score)
            if schedule.select == "best" and score > best:
                best, best_state = score, copy.deepcopy(model.state_dict())
    if schedule.select == "best":
        if best_state is None:
            raise RuntimeError(f"no val check gave a finite score (curve {curve})")
        model.load_state_dict(best_state)
    model.eval()
    return curve
