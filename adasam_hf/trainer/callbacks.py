"""Trainer callbacks used by the fine-tuning CLI."""

from __future__ import annotations

import logging
import math
import os

import torch
from transformers import TrainerCallback

__all__ = ["StopOnNonFiniteLoss", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """Training stopped because the loss (or the weights) stopped being finite."""

    def __init__(self, message: str, step: int, last_checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop training at the first NaN or inf loss or evaluation, before a checkpoint can hold its weights.

    The Trainer logs the mean loss since its last log; with ``logging_nan_inf_filter=False`` one non-finite step
    makes that mean non-finite, so the next log shows it. A log is forced whenever a checkpoint or an evaluation
    is due, so none happens between a bad step and the log that reveals it. A checkpoint is also refused when the
    evaluation just before it was not finite, when the weights are not finite, or when the model, run on a few
    `probe` examples, gives a non-finite loss or output: a step can blow the weights up to finite values that give
    NaN outputs while its own loss (taken before the step) was still finite, and such a checkpoint could otherwise
    be kept as the best model, or push a good one out of ``save_total_limit``. After ``train()``, `check` raises
    `TrainingDivergedError`, naming the newest checkpoint of this run that still passes those checks.

    Args:
        probe: examples (e.g. the first few of the evaluation set) to run the model on; None checks only weights.
        collate: turns a list of `probe` examples into a batch (the Trainer's data collator).
    """

    def __init__(self, probe=None, collate=None):
        self.bad_step: int | None = None
        self.reasons: list[str] = []
        self.saved: list[str] = []  # checkpoints this run wrote, oldest first
        self._probe = collate([probe[i] for i in range(min(PROBE_EXAMPLES, len(probe)))]) if probe else None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            logger.warning("logging_nan_inf_filter=True hides NaN/inf losses: a diverging run will not be stopped")

    def _before_save_or_evaluate(self, args, state, control, model=None, **kwargs):
        if control.should_save or control.should_evaluate:
            control.should_log = True
        if control.should_save and model is not None:
            problem = self._problem(model)
            if problem:
                self._stop(state, control, problem)
        return control

    on_step_end = _before_save_or_evaluate
    on_epoch_end = _before_save_or_evaluate

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self._stop(state, control, f"the training loss is {loss}")
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        bad = sorted(k for k, v in (metrics or {}).items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            self._stop(state, control, f"the evaluation's {', '.join(bad)} is not finite")
        return control

    def on_save(self, args, state, control, **kwargs):
        self.saved.append(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def _stop(self, state, control, reason: str) -> None:
        if self.bad_step is None:
            self.bad_step = state.global_step
        if state.global_step == self.bad_step and reason not in self.reasons:
            self.reasons.append(reason)
        control.should_training_stop = True
        control.should_save = control.should_evaluate = False

    @torch.no_grad()
    def _problem(self, model: torch.nn.Module) -> str | None:
        """Why `model` must not be saved, or None. Runs only when a checkpoint is due: a loop over the parameters
        and one forward of a few examples (eval mode, no RNG drawn) cost little next to the save."""
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            return "the weights are not finite"
        if self._probe is None:
            return None
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            outputs = model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in self._probe.items()})
        finally:
            model.train(was_training)
        tensors = [outputs.get("loss"), outputs.get("logits")]
        if not all(bool(torch.isfinite(t.float()).all()) for t in tensors if t is not None):
            return "the model's outputs are not finite"
        return None

    def check(self, trainer, resumed_from: str | None = None) -> None:
        """Raise `TrainingDivergedError` if training was stopped, naming the last good checkpoint: the newest one
        this run saved (or resumed from) that is still on disk and, loaded, passes the checks made before a save."""
        if self.bad_step is None:
            return
        good = None
        for checkpoint in reversed([c for c in [resumed_from, *self.saved] if c]):
            if os.path.isdir(checkpoint):
                trainer._load_from_checkpoint(checkpoint)  # the diverged weights are of no further use
                if self._problem(trainer.model) is None:
                    good = checkpoint
                    break
        hint = f" (learning_rate {trainer.args.learning_rate:g} too large?)"
        kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was saved before it"
        reasons = ", ".join(sorted(self.reasons))  # "the training loss is ..." before "the weights are not finite"
        message = f"training stopped at step {self.bad_step}: {reasons}{hint}; {kept}"
        raise TrainingDivergedError(message, self.bad_step, good)


PROBE_EXAMPLES = 8  # examples the model runs on before a save, to check that it gives finite outputs
