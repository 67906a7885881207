"""The Trainer's loss scaling, fixed for models whose forward takes ``**kwargs`` but ignores
``num_items_in_batch`` (BERT and most classifiers).

The Trainer infers "the model normalizes its loss by num_items_in_batch" from the forward signature. When that is
wrong, it neither divides the loss by the accumulation steps nor leaves out its x num_processes factor, and the
gradient is k x world too large. The question is a property of the model's loss, so it is asked once, of the loss
itself: two no-grad forwards with different counts. If the loss ignores the count, the Trainer is told the model
takes no loss kwargs, and scales as for a per-batch mean.
"""

from __future__ import annotations

import torch
from transformers import Trainer

__all__ = ["NumItemsLossScalingFix"]


class NumItemsLossScalingFix(Trainer):
    """A `Trainer` whose `training_step` scales the loss right whatever the model's forward signature says."""

    _loss_uses_num_items: bool | None = None  # asked at the first training step

    def training_step(self, model, inputs, num_items_in_batch=None):
        return super().training_step(model, inputs, self._num_items_for_loss(model, inputs, num_items_in_batch))

    def _num_items_for_loss(self, model, inputs, num_items_in_batch):
        if num_items_in_batch is None or not self.model_accepts_loss_kwargs or self.compute_loss_func is not None:
            return num_items_in_batch
        if self._loss_uses_num_items is None:
            self._loss_uses_num_items = self._probe_loss_uses_num_items(model, inputs)
        if self._loss_uses_num_items:
            return num_items_in_batch
        self.model_accepts_loss_kwargs = False
        return None

    @torch.no_grad()
    def _probe_loss_uses_num_items(self, model, inputs) -> bool:
        model = self.accelerator.unwrap_model(model)
        was_training = model.training
        model.eval()  # no dropout: the two losses differ only through the count
        try:
            prepared = self._prepare_inputs(inputs)
            losses = []
            for count in (1, 2):
                n = torch.tensor(count, device=self.args.device)
                with self.compute_loss_context_manager():
                    losses.append(self.compute_loss(model, dict(prepared), num_items_in_batch=n).detach())
        finally:
            model.train(was_training)
        return not torch.equal(losses[0], losses[1])
