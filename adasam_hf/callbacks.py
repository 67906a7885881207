"""Trainer callbacks used by the fine-tuning CLI."""

from __future__ import annotations

import logging
import math
import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

__all__ = ["StopOnNonFiniteLoss", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Training stopped because the loss (or the weights) stopped being finite."""

    def __init__(self, message: str, step: int, last_checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training at the first NaN or inf loss, before a checkpoint can hold its weights.

    The Trainer logs the mean loss since its last log; with ``logging_nan_inf_filter=False`` one non-finite step
    makes that mean non-finite, so the next log shows it. A log is forced whenever a checkpoint or an evaluation
    is due, so none happens between a bad step and the log that reveals it; a checkpoint is also refused when the
    weights are not finite (a step can blow them up while its own loss was still finite). Checkpoints saved
    earlier stay as they are, and loadable. After ``train()``, `check` raises `TrainingDivergedError`.
    """

    def __init__(self):
        self.bad_step: int | None = None
        self.reasons: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            logger.warning("logging_nan_inf_filter=True hides NaN/inf losses: a diverging run will not be stopped")

    def _before_save_or_evaluate(self, args, state, control, model=None, **kwargs):
        if control.should_save or control.should_evaluate:
            control.should_log = True
        if control.should_save and model is not None and not _all_finite(model):
            self._stop(state, control, "the weights are not finite")
        return control

    on_step_end = _before_save_or_evaluate
    on_epoch_end = _before_save_or_evaluate

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(state, control, f"the training loss is {loss}")
        return control

    def _stop(self, state, control, reason: str) -> None:
        if self.bad_step is None:
            self.bad_step = state.global_step
        if state.global_step == self.bad_step and reason not in self.reasons:
            self.reasons.append(reason)
        control.should_training_stop = True
        control.should_save = control.should_evaluate = False

    def check(self, output_dir: str, learning_rate: float | None = None) -> None:
        """Raise `TrainingDivergedError` if training was stopped, naming the last checkpoint that was kept."""
        if self.bad_step is None:
            return
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        hint = f" (learning_rate {learning_rate:g} too large?)" if learning_rate is not None else ""
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
        reasons = ", ".join(sorted(self.reasons))  # "the training loss is ..." before "the weights are not finite"
        message = f"training stopped at step {self.bad_step}: {reasons}{hint}; {kept}"
        raise TrainingDivergedError(message, self.bad_step, last)


@torch.no_grad()
def _all_finite(model: torch.nn.Module) -> bool:
    # Runs only when a checkpoint is due, so a loop over the parameters costs little next to the save.
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())
