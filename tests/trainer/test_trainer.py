"""SAMTrainer against a full-batch float64 reference, on a tiny BERT (dropout 0).

BERT's forward takes **kwargs but its loss ignores num_items_in_batch: the stock Trainer's
loss-scaling trap (gradients k x too large under GA k, x world under DDP). SGD is scale-sensitive,
so every test with SAM over plain SGD would catch it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from adasam_hf import SAM, SAMTrainer, SAMTrainingArguments
from tests.helpers.distributed import torchrun
from tests.helpers.tiny import TinyDataset, assert_weights_close, full_batch_reference, tiny_bert
from tests.helpers.training import BATCH, STEPS, CountForwards, StopAtStep, make_args

HERE = Path(__file__).parent


@pytest.mark.parametrize("micro,ga", [(8, 1), (4, 2), (2, 4)])
def test_adasam_ga_splits_equal_full_batch_reference(tmp_path, micro, ga):
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01, rho=0.05)
    forwards = CountForwards(model)
    trainer = SAMTrainer(model=model, args=make_args(tmp_path, micro, ga), train_dataset=data)
    trainer.train()
    assert_weights_close(model, expected)
    assert forwards.n == 2 * ga * STEPS  # two passes over every micro-batch, nothing more
    assert not trainer.sam_optimizer.is_perturbed


@pytest.mark.parametrize("micro,ga", [(8, 1), (4, 2), (2, 4)])
def test_sam_plain_sgd_ga_splits_equal_full_batch_reference(tmp_path, micro, ga):
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(
        tiny_bert(), data, optimizer="sam-sgd", steps=STEPS, batch=BATCH, lr=0.5, momentum=0.0, rho=0.05
    )
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)  # the `optimizers=` path
    trainer = SAMTrainer(model=model, args=make_args(tmp_path, micro, ga), train_dataset=data, optimizers=(sam, None))
    trainer.train()
    assert_weights_close(model, expected)


def test_reference_would_catch_a_ga_scaling_slip(tmp_path):
    """The stock Trainer's own step, with the same SGD, lands elsewhere: the tests can fail."""
    data = TinyDataset()
    expected = full_batch_reference(
        tiny_bert(), data, optimizer="sam-sgd", steps=STEPS, batch=BATCH, lr=0.5, momentum=0.0, rho=0.0
    )
    model = tiny_bert()
    args = TrainingArguments(**{k: v for k, v in make_args(tmp_path, 4, 2).to_dict().items()
                                if k in TrainingArguments.__dataclass_fields__ and k not in ("logging_dir",)})
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    Trainer(model=model, args=args, train_dataset=data, optimizers=(sgd, None)).train()
    with pytest.raises(AssertionError):
        assert_weights_close(model, expected)


def test_non_sam_optimizer_gets_exact_ga_scaling_too(tmp_path):
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(
        tiny_bert(), data, optimizer="sam-sgd", steps=STEPS, batch=BATCH, lr=0.5, momentum=0.9, rho=0.0
    )
    args = make_args(tmp_path, 2, 4, optimizer="sgd", learning_rate=0.5)
    trainer = SAMTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert trainer.sam_optimizer is None and type(trainer.optimizer.optimizer) is torch.optim.SGD
    assert_weights_close(model, expected)


def test_non_sam_optimizer_is_unchanged_versus_trainer(tmp_path):
    data = TinyDataset()
    runs = []
    for cls in (Trainer, SAMTrainer):
        model = tiny_bert()
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        args = make_args(tmp_path, optimizer="adamw")
        cls(model=model, args=args, train_dataset=data, optimizers=(opt, None)).train()
        runs.append(model)
    for (n, a), b in zip(runs[0].named_parameters(), runs[1].parameters()):
        assert torch.equal(a, b), n


def test_last_short_window_of_an_epoch(tmp_path):
    """24 examples, micro-batch 4, GA 4: windows of 4 then 2 micro-batches (16 then 8 examples)."""
    data = TinyDataset(n=24)
    model = tiny_bert()
    args = make_args(tmp_path, 4, 4, max_steps=-1, num_train_epochs=1, optimizer="sgd", learning_rate=0.5)
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)
    SAMTrainer(model=model, args=args, train_dataset=data, optimizers=(sam, None)).train()

    # Reference: SAM-SGD on examples 0..15, then 16..23.
    from tests.helpers import reference as R
    from torch.func import functional_call

    ref_model = tiny_bert()
    names = [n for n, _ in ref_model.named_parameters()]
    ws = [p.detach().clone() for p in ref_model.parameters()]
    ref = R.SAMSGDReference(ws, lr=0.5, rho=0.05)
    for lo, hi in [(0, 16), (16, 24)]:
        ids, labels = data.input_ids[lo:hi], data.labels[lo:hi]

        def grad_fn(ws, ids=ids, labels=labels):
            ws = [w.detach().requires_grad_() for w in ws]
            logits = functional_call(ref_model, dict(zip(names, ws)), (ids,)).logits
            return list(torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), ws))

        ws = ref.step(ws, grad_fn)
    assert_weights_close(model, dict(zip(names, ws)))


def test_resume_from_checkpoint_is_bitwise(tmp_path):
    data = TinyDataset()
    common = dict(
        max_steps=6, train_sampling_strategy="random", save_strategy="steps", save_steps=3, learning_rate=0.003
    )

    full = tiny_bert()
    SAMTrainer(model=full, args=make_args(tmp_path / "a", 4, 2, **common), train_dataset=data).train()

    first = tiny_bert()
    interrupted = make_args(tmp_path / "b", 4, 2, **common)
    trainer = SAMTrainer(model=first, args=interrupted, train_dataset=data)

    trainer.add_callback(StopAtStep(3))
    trainer.train()
    ckpt = Path(interrupted.output_dir) / "checkpoint-3"
    state = torch.load(ckpt / "optimizer.pt", weights_only=False)["state"]
    assert {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"} <= set(state[0])

    resumed = tiny_bert(seed=123)  # different init: everything must come from the checkpoint
    SAMTrainer(model=resumed, args=make_args(tmp_path / "b", 4, 2, **common), train_dataset=data).train(
        resume_from_checkpoint=str(ckpt)
    )
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n


def test_bf16_autocast_trains_on_cpu(tmp_path):
    model, data = tiny_bert(dtype=torch.float32), TinyDataset()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SAMTrainer(model=model, args=make_args(tmp_path, 4, 2, bf16=True, max_steps=4), train_dataset=data)
    out = trainer.train()
    assert torch.isfinite(torch.tensor(out.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logs = [h for h in trainer.state.log_history if "sam_ascent_grad_norm" in h]
    assert len(logs) == 4 and all(h["sam_ascent_grad_norm"] > 0 for h in logs)


class PoisonFirstPass(SAMTrainer):
    """Makes the first-pass loss of step `poison_step` infinite, as an fp16 overflow would."""

    poison_step = 1

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        sam = self.sam_optimizer
        first_pass = torch.is_grad_enabled() and not sam.is_perturbed
        if first_pass and self.state.global_step == self.poison_step:
            loss = loss * float("inf")
        return loss


def test_grad_scaler_logic_with_a_real_cpu_scaler(tmp_path):
    """fp16's GradScaler path, on CPU: scaled gradients, no unscale_ in training_step, the
    ascent norm logged unscaled, and a non-finite ascent gradient skipping the perturbation."""
    data = TinyDataset()
    model = tiny_bert()
    trainer = PoisonFirstPass(model=model, args=make_args(tmp_path, 4, 2), train_dataset=data)
    # accelerate makes a GradScaler only for fp16 on a GPU; hand it a real one (power-of-2
    # scale, so scaling is exact) before `train` wraps the optimizer.
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    trainer.train()

    # Reference: step 1's ascent is skipped (its gradient was inf), so that step is the base
    # update from the gradient at w; steps 0 and 2 are ordinary AdaSAM steps.
    expected = full_batch_reference(
        tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, no_ascent_steps=(1,), lr=0.01, rho=0.05
    )
    assert_weights_close(model, expected)
    norms = [h["sam_ascent_grad_norm"] for h in trainer.state.log_history if "sam_ascent_grad_norm" in h]
    assert norms[1] != norms[1] or norms[1] == float("inf")  # logged as non-finite, not hidden
    assert 0 < norms[0] < 10  # unscaled (the scale is 1024)


def test_weights_are_restored_if_the_second_pass_raises(tmp_path):
    class Boom(SAMTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            if self.sam_optimizer.is_perturbed:
                raise RuntimeError("boom")
            return super().compute_loss(model, inputs, *args, **kwargs)

    model = tiny_bert()
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Boom(model=model, args=make_args(tmp_path), train_dataset=TinyDataset())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_args_parse_with_hf_argument_parser_and_validate():
    parser = HfArgumentParser(SAMTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", "x", "--optimizer", "sam", "--sam_rho", "0.1", "--sam_adaptive", "--sam_ascent", "local",
         "--use_cpu"]
    )
    assert (args.optimizer, args.sam_rho, args.sam_adaptive, args.sam_ascent) == ("sam", 0.1, True, "local")
    for bad, fragment in [
        (dict(optimizer="adasma"), "'adasma'"),
        (dict(sam_rho=0.0), "rho: 0.0"),
        (dict(sam_ascent="both"), "'both'"),
        (dict(learning_rate=-1.0), "lr: -1.0"),
        (dict(adam_beta2=1.0), "index 1: 1.0"),
        (dict(adam_epsilon=0.0), "eps: 0.0"),
    ]:
        with pytest.raises(ValueError) as err:
            SAMTrainingArguments(output_dir="x", use_cpu=True, **bad)
        assert fragment in str(err.value)


def test_fsdp_and_deepspeed_are_refused():
    with pytest.raises(ValueError, match="supported: one device, DDP .*FSDP2 on a model sharded at load time"):
        SAMTrainingArguments(output_dir="x", use_cpu=True, fsdp="full_shard")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path):
    """DDP, 2 CPU processes x batch 4 == 1 process x batch 8 == the reference; ranks identical;
    local ascent differs from global."""
    for ascent in ("global", "local"):
        proc = torchrun("ddp_worker", tmp_path / ascent, ascent)
        assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {a: [torch.load(tmp_path / a / f"rank{r}.pt") for r in (0, 1)] for a in ("global", "local")}
    for a in ranks:
        assert ranks[a][0]["world_size"] == 2
        for n in ranks[a][0]["weights"]:
            assert torch.equal(ranks[a][0]["weights"][n], ranks[a][1]["weights"][n]), (a, n)

    data = TinyDataset()
    for opt, hp in [("adasam", dict(lr=0.01, rho=0.05)), ("sam-sgd", dict(lr=0.5, rho=0.05))]:
        expected = full_batch_reference(tiny_bert(), data, optimizer=opt, steps=STEPS, batch=BATCH, **hp)
        got = ranks["global"][0]["weights" if opt == "adasam" else "weights_sgd"]
        for n, w in expected.items():
            torch.testing.assert_close(got[n], w, rtol=1e-9, atol=1e-11)
    diff = max((ranks["local"][0]["weights"][n] - ranks["global"][0]["weights"][n]).abs().max() for n in expected)
    assert diff > 1e-6
