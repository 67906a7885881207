"""Cheaper SAM steps (sam_mode rst / layer-sparse, sam_interval) against the float64 reference.

Each mode must reduce to plain AdaSAM at p = 1, k = 1, fraction = 1, and the steps it takes
without the second pass must be exactly the base optimizer's step on the gradient at w.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import HfArgumentParser
from transformers.models.bert.modeling_bert import BertLayer

from adasam_hf import SAM, SAMTrainer, SAMTrainingArguments
from adasam_hf.optim.layer_sampler import LayerSampler, layer_name
from adasam_hf.optim.schedule import SAMSchedule
from tests.helpers.distributed import torchrun
from tests.helpers.tiny import TinyDataset, assert_weights_close, full_batch_reference, tiny_bert
from tests.helpers.training import BATCH, CountForwards, StopAtStep, make_args

STEPS = 6


@pytest.mark.parametrize(
    "mode", [{"sam_mode": "rst", "sam_rst_prob": 1.0}, {"sam_interval": 1},
             {"sam_mode": "layer-sparse", "sam_layer_fraction": 1.0}], ids=["rst-p1", "interval-1", "layer-sparse-f1"]
)
def test_modes_at_their_limit_are_plain_adasam(tmp_path, mode):
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01, rho=0.05)
    forwards = CountForwards(model)
    SAMTrainer(model=model, args=make_args(tmp_path, 4, 2, max_steps=STEPS, **mode), train_dataset=data).train()
    assert_weights_close(model, expected)
    assert forwards.n == 2 * 2 * STEPS


def test_interval_base_steps_are_adasams_update_at_w(tmp_path):
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01,
                                    rho=0.05, no_ascent_steps={1, 2, 4, 5})
    forwards = CountForwards(model)
    args = make_args(tmp_path, 4, 2, max_steps=STEPS, sam_interval=3)
    SAMTrainer(model=model, args=args, train_dataset=data).train()
    assert_weights_close(model, expected)
    assert forwards.n == 2 * (2 * 2 + 4 * 1)  # GA 2: two SAM steps (2 passes), four base steps (1 pass)


def test_interval_base_steps_are_plain_sgd(tmp_path):
    """SAM over SGD: the steps in between are torch's SGD on the gradient at w."""
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(tiny_bert(), data, optimizer="sam-sgd", steps=STEPS, batch=BATCH, lr=0.5,
                                    momentum=0.9, rho=0.05, no_ascent_steps={1, 3, 5})
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5, momentum=0.9)
    args = make_args(tmp_path, 4, 2, max_steps=STEPS, sam_interval=2)
    SAMTrainer(model=model, args=args, train_dataset=data, optimizers=(sam, None)).train()
    assert_weights_close(model, expected)


def test_rst_switches_by_its_documented_draw(tmp_path):
    seed, prob = 3, 0.5
    # The rule, restated: step t is a SAM step iff Random(f"{seed}:{t}").random() < p.
    base_steps = {t for t in range(STEPS) if random.Random(f"{seed}:{t}").random() >= prob}
    assert 0 < len(base_steps) < STEPS  # both kinds of step occur in this run
    model, data = tiny_bert(), TinyDataset()
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01,
                                    rho=0.05, no_ascent_steps=base_steps)
    forwards = CountForwards(model)
    args = make_args(tmp_path, 4, 2, max_steps=STEPS, sam_mode="rst", sam_rst_prob=prob, seed=seed)
    SAMTrainer(model=model, args=args, train_dataset=data).train()
    assert_weights_close(model, expected)
    assert forwards.n == 2 * (2 * (STEPS - len(base_steps)) + len(base_steps))


def test_rst_draws_have_the_right_rate_and_agree_across_ranks():
    ranks = [SAMSchedule(mode="rst", rst_prob=0.3, seed=7) for _ in range(2)]  # built apart, as on two ranks
    picks = [[s.is_sam_step(t) for t in range(20000)] for s in ranks]
    assert picks[0] == picks[1]
    assert abs(sum(picks[0]) / 20000 - 0.3) < 0.015  # binomial std 0.0032
    # A pure function of (seed, step): asking out of order (a resumed run) gives the same answers.
    assert [ranks[0].is_sam_step(t) for t in reversed(range(100))] == picks[0][:100][::-1]
    assert picks[0] != [SAMSchedule(mode="rst", rst_prob=0.3, seed=8).is_sam_step(t) for t in range(20000)]


def test_interval_with_rst_combines():
    schedule = SAMSchedule(mode="rst", rst_prob=0.5, interval=4, seed=0)
    sam_steps = [t for t in range(400) if schedule.is_sam_step(t)]
    assert all(t % 4 == 0 for t in sam_steps) and 30 < len(sam_steps) < 70


def record_draws(patch: pytest.MonkeyPatch) -> dict[int, list[int]]:
    """Patch LayerSampler.sample to record each step's draw; returns the (filling) record."""
    sampled: dict[int, list[int]] = {}
    original = LayerSampler.sample

    def spy(self, step):
        sampled[step] = original(self, step)
        return sampled[step]

    patch.setattr(LayerSampler, "sample", spy)
    return sampled


def perturbed_names(model, sampler: LayerSampler, sampled: dict[int, list[int]]) -> dict[int, set[str]]:
    """The parameter names each step perturbed: the reference's `perturbed_names`."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {t: {names[id(p)] for p in sampler.params_of(layers)} for t, layers in sampled.items()}


def test_layer_sparse_step_equals_the_masked_reference(tmp_path):
    """Only the sampled layers are perturbed (norm over them) and take the gradient at w + e;
    the frozen layers keep their first-pass gradient."""
    model, data = tiny_bert(), TinyDataset()
    layer_calls = [0]
    layer_forward = BertLayer.forward

    def counted(self, *args, **kwargs):
        layer_calls[0] += self.training  # not the one-off loss probe, which runs in eval mode
        return layer_forward(self, *args, **kwargs)

    args = make_args(tmp_path, 4, 2, max_steps=STEPS, sam_mode="layer-sparse", sam_layer_fraction=0.4)
    trainer = SAMTrainer(model=model, args=args, train_dataset=data)
    with pytest.MonkeyPatch.context() as patch:
        sampled = record_draws(patch)
        patch.setattr(BertLayer, "forward", counted)
        trainer.train()
    sampler = trainer.layer_sparse.sampler
    # Tiny BERT: embeddings, two encoder layers, pooler, classifier; 0.4 of 5 layers -> 2 per step.
    assert sampler.names == ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.pooler",
                             "classifier"]
    assert sorted(sampled) == list(range(STEPS)) and all(len(v) == 2 for v in sampled.values())
    assert len({tuple(v) for v in sampled.values()}) > 1  # the draw changes from step to step
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01,
                                    rho=0.05, perturbed_names=perturbed_names(model, sampler, sampled))
    assert_weights_close(model, expected)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen after every step
    # The second pass starts at the first sampled layer: encoder layers (arms 1, 2) below it are not recomputed.
    second_pass = sum(2 * sum(arm >= min(layers) for arm in (1, 2)) for layers in sampled.values())  # GA 2
    assert layer_calls[0] == 2 * 2 * STEPS + second_pass < 4 * 2 * STEPS


def test_layer_sparse_with_an_interval_equals_the_reference(tmp_path):
    """Layer-sparse SAM steps at 0, 2, 4 (sam_interval 2), AdaSAM's base step in between."""
    model, data = tiny_bert(), TinyDataset()
    args = make_args(tmp_path, 4, 2, max_steps=STEPS, sam_mode="layer-sparse", sam_layer_fraction=0.4, sam_interval=2)
    trainer = SAMTrainer(model=model, args=args, train_dataset=data)
    forwards = CountForwards(model)
    with pytest.MonkeyPatch.context() as patch:
        sampled = record_draws(patch)
        trainer.train()
    assert sorted(sampled) == [0, 2, 4]  # drawn on SAM steps only
    perturbed = perturbed_names(model, trainer.layer_sparse.sampler, sampled)
    expected = full_batch_reference(tiny_bert(), data, optimizer="adasam", steps=STEPS, batch=BATCH, lr=0.01,
                                    rho=0.05, perturbed_names=perturbed, no_ascent_steps={1, 3, 5})
    assert_weights_close(model, expected)
    assert forwards.n == 2 * (3 * 2 + 3 * 1)  # GA 2: three SAM steps (2 passes), three base steps (1 pass)


def test_layer_sparse_under_torchrun_equals_the_masked_reference(tmp_path):
    """DDP, 2 processes x batch 4: the frozen layers are DDP's unused parameters in the second
    pass; their all-reduced first-pass gradients must stand, and both ranks must agree."""
    proc = torchrun("ddp_worker", tmp_path, "layer-sparse")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["perturbed"] == ranks[1]["perturbed"]
    for n, w in ranks[0]["weights"].items():
        assert torch.equal(w, ranks[1]["weights"][n]), n
    for run in (ranks[0], ranks[0]["strict"]):  # find_unused_parameters on (default) and off, GA 1 and 2
        perturbed = {t: set(names) for t, names in run["perturbed"].items()}
        assert len(perturbed) == 3 and all(len(v) < len(run["weights"]) for v in perturbed.values())
        expected = full_batch_reference(tiny_bert(), TinyDataset(), optimizer="adasam", steps=3, batch=BATCH,
                                        lr=0.01, rho=0.05, perturbed_names=perturbed)
        for n, w in expected.items():
            torch.testing.assert_close(run["weights"][n], w, rtol=1e-9, atol=1e-11)
    for n, w in ranks[0]["strict"]["weights"].items():
        assert torch.equal(w, ranks[1]["strict"]["weights"][n]), n


def test_layer_sparse_second_backward_skips_frozen_layers(tmp_path):
    """Frozen layers get no weight-gradient kernel in the second pass: count AccumulateGrad calls."""
    model, data = tiny_bert(), TinyDataset()
    accumulated = []
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda p, name=name: accumulated.append(name))
    draws, original = [], LayerSampler.sample
    args = make_args(tmp_path, 8, 1, max_steps=1, sam_mode="layer-sparse", sam_layer_fraction=0.2)
    trainer = SAMTrainer(model=model, args=args, train_dataset=data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LayerSampler, "sample", lambda self, step: draws.append(original(self, step)) or draws[-1])
        trainer.train()
    n_params = len(list(model.parameters()))
    sampled_params = len(trainer.layer_sparse.sampler.params_of(draws[-1]))
    assert len(accumulated) == n_params + sampled_params < 2 * n_params


def test_layer_sparse_keeps_user_frozen_parameters_frozen(tmp_path):
    """An optimizer given every parameter, some frozen by the user: they stay frozen and unchanged."""
    model = tiny_bert()
    model.bert.embeddings.requires_grad_(False)
    before = [p.detach().clone() for p in model.bert.embeddings.parameters()]
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5)
    args = make_args(tmp_path, 8, 1, max_steps=3, sam_mode="layer-sparse", sam_layer_fraction=0.5)
    SAMTrainer(model=model, args=args, train_dataset=TinyDataset(), optimizers=(sam, None)).train()
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())
    assert all(torch.equal(p, b) for p, b in zip(model.bert.embeddings.parameters(), before))


def test_layer_sparse_bandit_is_rebuilt_for_a_new_model(tmp_path):
    args = make_args(tmp_path, 8, 1, max_steps=2, sam_mode="layer-sparse", sam_layer_fraction=0.5)
    trainer = SAMTrainer(model_init=lambda: tiny_bert(), args=args, train_dataset=TinyDataset())
    for _ in range(2):  # the second train() builds a new model, optimizer and bandit
        trainer.train()
        arms = {id(p) for ps in trainer.layer_sparse.sampler.params for p in ps}
        assert arms == {id(p) for p in trainer.model.parameters()}


def test_frozen_prefix_cache_refuses_tied_weights_and_modules_run_twice():
    from adasam_hf.trainer.frozen_prefix import FrozenPrefixCache

    untied = tiny_bert()
    names = ["bert.embeddings", "bert.encoder.layer.0", "classifier"]
    assert FrozenPrefixCache.usable(untied, names) is not None
    untied.classifier.weight = untied.bert.embeddings.position_embeddings.weight  # a tied weight (shapes aside)
    assert FrozenPrefixCache.usable(untied, names) is None
    assert FrozenPrefixCache.usable(tiny_bert(), ["bert.encoder", "bert.encoder.layer.0"]) is None  # nested

    block = torch.nn.Linear(3, 3)
    cache = FrozenPrefixCache([block, torch.nn.Linear(3, 3)])
    with cache.record(sampled=[1]):
        block(block(torch.ones(3)))  # the same module twice in one forward: its output is ambiguous
    assert not cache.can_replay(1)


def test_layer_sampler_bandit_update_matches_exp3():
    params = [(f"encoder.layer.{i}.w", torch.zeros(2)) for i in range(4)] + [("head.out.bias", torch.zeros(1))]
    sampler = LayerSampler(params, fraction=0.4, seed=0, gamma=0.2, discount=0.9)
    arms = [f"encoder.layer.{i}" for i in range(4)] + ["head.out"]
    assert [layer_name(n) for n, _ in params] == sampler.names == arms
    assert sampler.num_sampled == 2
    torch.testing.assert_close(sampler.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))

    sampler.update([1, 3], torch.tensor([2.0, 4.0]))
    # EXP3 by hand: p = 0.2 each, inclusion pi = min(1, 2 * 0.2) = 0.4; scale max(0.9 * 0, 4) = 4, rewards 0.5, 1.0.
    log_w = torch.zeros(5, dtype=torch.float64)
    log_w[1], log_w[3] = 0.2 / 5 * 0.5 / 0.4, 0.2 / 5 * 1.0 / 0.4
    torch.testing.assert_close(sampler.log_weights, log_w)
    expected_p = 0.8 * torch.exp(log_w) / torch.exp(log_w).sum() + 0.2 / 5
    torch.testing.assert_close(sampler.probabilities(), expected_p)

    sampler.update([0, 1], torch.tensor([1.0, 1.0]))
    pi = (2 * expected_p[[0, 1]]).clamp(max=1)
    log_w = 0.9 * log_w
    log_w[[0, 1]] += 0.2 / 5 * (1.0 / 3.6) / pi  # the scale decays to 0.9 * 4 = 3.6 > 1
    torch.testing.assert_close(sampler.log_weights, log_w)

    before = sampler.log_weights.clone()
    sampler.update([2, 4], torch.tensor([float("inf"), 1.0]))  # an overflowed step teaches nothing
    assert torch.equal(sampler.log_weights, before)


def test_layer_sampler_learns_the_large_gradient_layer_with_one_layer_per_step():
    """m = 1: the reward must compare layers across steps; a per-step max would make it always 1."""
    params = [(f"layers.{i}.w", torch.zeros(1)) for i in range(4)]
    sampler = LayerSampler(params, fraction=0.25, seed=0)
    assert sampler.num_sampled == 1
    for t in range(500):
        layers = sampler.sample(t)
        sampler.update(layers, torch.tensor([10.0 if i == 2 else 1.0 for i in layers]))
    p = sampler.probabilities()
    assert p[2] > 0.5 and p.argmax() == 2  # uniform would be 0.25

    restored = LayerSampler(params, fraction=0.25, seed=0)
    restored.load_state_dict(sampler.state_dict())
    assert torch.equal(restored.reward_scale, sampler.reward_scale)
    legacy = {"names": sampler.names, "log_weights": sampler.log_weights}  # a checkpoint without the scale
    restored.load_state_dict(legacy)
    assert torch.equal(restored.log_weights, sampler.log_weights) and restored.reward_scale == 0


def test_layer_grad_norms_are_each_layers_l2_norm():
    params = [(f"layers.{i}.{kind}", torch.nn.Parameter(torch.zeros(3))) for i in range(3) for kind in ("w", "b")]
    sampler = LayerSampler(params, fraction=1.0)
    grads = {}
    for name, p in params:
        p.grad = torch.randn(3, dtype=torch.float32)
        grads[name] = p.grad.double()
    params[3][1].grad = None  # a parameter without a gradient counts as zero
    expected = [torch.sqrt(sum((grads[f"layers.{i}.{k}"] ** 2).sum() for k in ("w", "b") if (i, k) != (1, "b")))
                for i in (2, 1)]
    torch.testing.assert_close(sampler.layer_grad_norms([2, 1]), torch.stack(expected), rtol=1e-6, atol=0)


def test_layer_sampler_draws_follow_the_probabilities_and_are_rank_independent():
    params = [(f"layers.{i}.w", torch.zeros(1)) for i in range(4)]
    a, b = (LayerSampler(params, fraction=0.25, seed=1) for _ in range(2))
    a.log_weights = b.log_weights = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    draws = [a.sample(t) for t in range(6000)]
    assert draws == [b.sample(t) for t in range(6000)]
    freq = torch.bincount(torch.tensor([d[0] for d in draws]), minlength=4).double() / 6000
    torch.testing.assert_close(freq, a.probabilities(), atol=0.025, rtol=0)

    state = a.state_dict()
    c = LayerSampler(params, fraction=0.25, seed=1)
    c.load_state_dict(state)
    assert [c.sample(t) for t in range(50)] == draws[:50]
    with pytest.raises(ValueError, match="different set of layers"):
        LayerSampler(params[:3], fraction=0.5).load_state_dict(state)


def test_resume_is_bitwise_in_layer_sparse_and_rst_modes(tmp_path):
    data = TinyDataset()
    common = dict(max_steps=6, train_sampling_strategy="random", save_strategy="steps", save_steps=3,
                  learning_rate=0.003, sam_mode="layer-sparse", sam_layer_fraction=0.4, sam_interval=1)
    for mode in ({}, {"sam_mode": "rst", "sam_rst_prob": 0.5}):
        kw = {**common, **mode}
        tag = kw["sam_mode"]
        full = tiny_bert()
        SAMTrainer(model=full, args=make_args(tmp_path / tag / "a", 4, 2, **kw), train_dataset=data).train()

        args = make_args(tmp_path / tag / "b", 4, 2, **kw)
        trainer = SAMTrainer(model=tiny_bert(), args=args, train_dataset=data)

        trainer.add_callback(StopAtStep(3))
        trainer.train()
        ckpt = Path(args.output_dir) / "checkpoint-3"
        assert (ckpt / "sam_layer_sampler.pt").exists() == (tag == "layer-sparse")

        resumed = tiny_bert(seed=123)
        SAMTrainer(model=resumed, args=make_args(tmp_path / tag / "b", 4, 2, **kw), train_dataset=data).train(
            resume_from_checkpoint=str(ckpt))
        for (n, x), y in zip(full.named_parameters(), resumed.parameters()):
            assert torch.equal(x, y), (tag, n)


@pytest.mark.parametrize("flag,value,message", [
    ("--sam_mode", "sparse", "Invalid sam_mode: 'sparse' (choose from: full, rst, layer-sparse)"),
    ("--sam_rst_prob", "0", "Invalid sam_rst_prob: 0.0 (must be in (0, 1])"),
    ("--sam_interval", "0", "Invalid sam_interval: 0 (must be an integer >= 1)"),
    ("--sam_layer_fraction", "1.5", "Invalid sam_layer_fraction: 1.5 (must be in (0, 1])"),
])
def test_bad_mode_values_name_the_value_and_the_choices(tmp_path, flag, value, message):
    parser = HfArgumentParser(SAMTrainingArguments)
    argv = ["--output_dir", str(tmp_path), "--use_cpu", "true", flag, value]
    if flag == "--sam_mode":
        with pytest.raises(SystemExit):  # argparse's own choices check, exit code 2
            parser.parse_args_into_dataclasses(argv)
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            SAMTrainingArguments(output_dir=str(tmp_path), use_cpu=True, sam_mode=value)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parser.parse_args_into_dataclasses(argv)
