"""What the Trainer tests share: one argument set, a forward counter, a callback that interrupts a run."""

from __future__ import annotations

from transformers import TrainerCallback

from adasam_hf import SAMTrainingArguments

STEPS, BATCH = 3, 8


def make_args(tmp_path, micro=BATCH, ga=1, **kw) -> SAMTrainingArguments:
    """Deterministic, quiet arguments for the tiny models: constant lr, no clipping, no decay, no saves."""
    base = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=micro, gradient_accumulation_steps=ga,
        max_steps=STEPS, learning_rate=0.01, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=0.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        disable_tqdm=True, train_sampling_strategy="sequential", optimizer="adasam", sam_rho=0.05,
    )
    return SAMTrainingArguments(**{**base, **kw})


class CountForwards:
    """Counts a model's training-mode forwards (the one-off loss probe runs in eval mode)."""

    def __init__(self, model):
        self.n = 0
        model.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.n += module.training


class StopAtStep(TrainerCallback):
    """Interrupts training after optimizer step `step`, as a kill after a checkpoint would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step == self.step
