"""The SAM step inside TRL's SFTTrainer: `SAMStepMixin` before `SFTTrainer` in the bases, and a config that is both
`SAMTrainingArguments` and `SFTConfig`. Checked as SAMTrainer is: against the float64 reference of the window's
token mean (tests/helpers/tiny_lm.py), under gradient accumulation, where a wrong loss scale would show."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import pytest
import torch

from adasam_hf import SAM, SAMTrainingArguments
from adasam_hf.trainer import SAMStepMixin
from tests.helpers.tiny_lm import UnevenLMDataset, causal_lm_reference, tiny_llama, tiny_tokenizer
from tests.helpers.training import CountForwards

trl = pytest.importorskip("trl")

STEPS = 3


class SAMSFTTrainer(SAMStepMixin, trl.SFTTrainer):
    """What a TRL user writes: the mixin first."""


@dataclass
class SAMSFTConfig(SAMTrainingArguments, trl.SFTConfig):
    """SFTConfig's fields and SAMTrainingArguments' (optimizer, sam_rho, sam_mode, ...) in one config."""


def sft_dataset(data: UnevenLMDataset) -> datasets.Dataset:
    """The same token ids, as TRL takes them: the loss on the completion (the labelled tokens) only."""
    return datasets.Dataset.from_list([{"input_ids": e["input_ids"].tolist(),
                                        "completion_mask": (e["labels"] != -100).long().tolist()} for e in data])


def config(tmp_path, cls, **kw):
    return cls(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, gradient_accumulation_steps=2,
               max_steps=STEPS, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
               report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
               train_sampling_strategy="sequential", completion_only_loss=True, logging_steps=1, bf16=False, **kw)


def max_error(model, expected) -> float:
    return max((p.detach() - expected[n]).abs().max().item() for n, p in model.named_parameters())


def test_adasam_from_the_config_in_sft_trainer_equals_the_window_token_mean(tmp_path):
    data = UnevenLMDataset()
    expected = causal_lm_reference(tiny_llama(), data, optimizer="adasam", steps=STEPS, batch=4, lr=0.01, rho=0.05,
                                   eps=1e-4)
    model = tiny_llama()
    forwards = CountForwards(model)
    args = config(tmp_path, SAMSFTConfig, optimizer="adasam", learning_rate=0.01, sam_rho=0.05, adam_epsilon=1e-4)
    trainer = SAMSFTTrainer(model=model, args=args, train_dataset=sft_dataset(data), processing_class=tiny_tokenizer())
    trainer.train()
    assert max_error(model, expected) < 5e-6  # as SAMTrainer: the loss is float32 inside transformers
    assert forwards.n == 2 * 2 * STEPS  # two passes over both micro-batches of each window
    assert "sam_ascent_grad_norm" in trainer.state.log_history[0]
    assert not trainer.sam_optimizer.is_perturbed


def test_sam_over_plain_sgd_given_to_sft_trainer_has_the_exact_loss_scale(tmp_path):
    """Plain SGD shows any loss scale (x GA, x world) in the weights; the optimizer comes through `optimizers=`."""
    data = UnevenLMDataset()
    expected = causal_lm_reference(tiny_llama(), data, optimizer="sam-sgd", steps=STEPS, batch=4, lr=0.5, rho=0.05)
    model = tiny_llama()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)
    args = config(tmp_path, trl.SFTConfig, learning_rate=0.5)
    SAMSFTTrainer(model=model, args=args, train_dataset=sft_dataset(data), processing_class=tiny_tokenizer(),
                  optimizers=(sam, None)).train()
    assert max_error(model, expected) < 5e-6
