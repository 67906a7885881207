"""SAMTrainer on a model FSDP2 sharded at load time (transformers' `distributed_config`), 2 CPU processes under
torchrun (gloo): the step of the float64 whole-window token mean, FSDP's own switch deferring the reductions, and
one-line refusals of what the sharded step does not support."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.distributed import torchrun
from tests.helpers.fsdp_trainer_worker import lora
from tests.helpers.tiny_lm import UnevenLMDataset, causal_lm_reference, tiny_llama, window_loss

pytestmark = pytest.mark.slow
STEPS = 3  # tests/helpers/training.py's make_args


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_trainer")
    proc = torchrun("fsdp_trainer_worker", out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_sharded_training_equals_the_global_token_mean(ranks):
    """Rank 0 sees 5 label tokens a step, rank 1 sees 23: the weights are those of the 4-example token mean (float64
    reference), with GA 1 x batch 2 and GA 2 x batch 1, AdaSAM and SAM over plain SGD (scale-sensitive: a loss
    scaled by the process count or the accumulation steps lands far off)."""
    data = UnevenLMDataset()
    adasam = causal_lm_reference(tiny_llama(), data, optimizer="adasam", steps=STEPS, batch=4, lr=0.01, rho=0.05,
                                 eps=1e-4)
    sgd = causal_lm_reference(tiny_llama(), data, optimizer="sam-sgd", steps=STEPS, batch=4, lr=0.5, rho=0.05)
    for case, expected, tol in (("adasam", adasam, 5e-6), ("adasam-ga", adasam, 5e-6), ("sam-sgd", sgd, 1e-7)):
        assert ranks[0]["world_size"] == 2 and ranks[0][case]["sharded"]
        got = ranks[0][case]["weights"]
        assert set(got) == set(expected)
        for name, w in expected.items():
            assert torch.equal(got[name], ranks[1][case]["weights"][name]), (case, name)
            assert (got[name] - w).abs().max().item() < tol, (case, name)


def test_lora_adapters_over_a_sharded_base_equal_the_reference(ranks):
    """LoRA after sharding: the adapters are plain tensors the Trainer keeps replicated (broadcast, averaged
    gradients) beside the DTensor base. AdaSAM's norm counts them once; they train as on one process with the whole
    batch, and the sharded base does not move."""
    run = ranks[0]["lora"]
    expected = causal_lm_reference(lora(tiny_llama()), UnevenLMDataset(), optimizer="adasam", steps=4, batch=4,
                                   lr=0.05, rho=0.05, eps=1e-4)
    assert sorted(run["trainable"]) == sorted(expected) and all("lora_" in n for n in expected)
    assert run["sharded"]  # every frozen base weight is a DTensor
    for name, w in expected.items():
        assert torch.equal(run["weights"][name], ranks[1]["lora"]["weights"][name]), name
        assert (run["weights"][name] - w).abs().max().item() < 5e-6, name
    base = {n: p.detach() for n, p in lora(tiny_llama()).named_parameters() if not p.requires_grad}
    assert set(base) == set(run["weights"]) - set(expected)
    for name, w in base.items():
        assert torch.equal(run["weights"][name], w), name


def test_reductions_wait_for_the_last_micro_batch_of_each_pass(ranks):
    """FSDP2 reduce-scatters each sharded group once per pass: GA 2 runs as many reductions as GA 1 (the first
    micro-batch of each pass, the replay included, is held back by FSDP's switch)."""
    counts = {case: ranks[0][case]["reduce_scatters"] for case in ("adasam", "adasam-ga", "sam-sgd")}
    assert counts["adasam"] > 0 and counts["adasam"] % (2 * STEPS) == 0
    assert counts["adasam-ga"] == counts["adasam"] == counts["sam-sgd"], counts


def test_a_cheaper_schedule_runs_its_base_steps_sharded(ranks):
    """sam_interval 2 over 3 steps: SAM steps at 0 and 2, AdaSAM's base step at 1 (the reference's), so 5 passes
    against full AdaSAM's 6; the ranks stay identical."""
    interval, full = ranks[0]["interval"], ranks[0]["adasam"]
    assert interval["reduce_scatters"] * 6 == full["reduce_scatters"] * 5
    expected = causal_lm_reference(tiny_llama(), UnevenLMDataset(), optimizer="adasam", steps=STEPS, batch=4,
                                   sam_steps={0, 2}, lr=0.01, rho=0.05, eps=1e-4)
    for name, w in expected.items():
        assert torch.equal(interval["weights"][name], ranks[1]["interval"]["weights"][name]), name
        assert (interval["weights"][name] - w).abs().max().item() < 5e-6, name
    assert any(not torch.equal(w, full["weights"][n]) for n, w in interval["weights"].items())


def test_the_logged_ascent_norm_is_the_whole_batch_one(ranks):
    """Step 1's logged sam_ascent_grad_norm is the norm of the gradient of the 4-example token mean at the initial
    weights (float64, written here), not a rank's own or a sum over ranks."""
    model = tiny_llama()
    names = [n for n, _ in model.named_parameters()]
    ws = [p.detach().clone().requires_grad_() for p in model.parameters()]
    loss = window_loss(model, names, ws, [UnevenLMDataset()[i] for i in range(4)])
    norm = torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(loss, ws))).item()
    first = ranks[0]["adasam"]["logs"][0]
    assert first["step"] == 1 and first["sam_ascent_grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert all(log["sam_perturbed_loss"] > 0 for log in ranks[0]["adasam"]["logs"])


def test_what_the_sharded_step_does_not_support_is_refused_in_one_line(ranks):
    assert ranks[0]["local"].startswith("Invalid sam_ascent: 'local' with FSDP2")
    assert ranks[0]["layer-sparse"].startswith("Invalid sam_mode: 'layer-sparse' is not supported on FSDP2")
    assert ranks[0]["mixed-precision"].startswith("SAM on a model sharded with fsdp_mixed_precision=True is not "
                                                  "supported (untested)")
    assert ranks[0]["by-hand"].startswith("SAMTrainer does not run a model whose parameters are DTensors")
    assert "\n" not in ranks[0]["local"] + ranks[0]["layer-sparse"] + ranks[0]["mixed-precision"] + ranks[0]["by-hand"]


def test_accelerate_launch_trains_the_same(ranks, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (no FSDP plugin: the model is sharded at load) starts the
    same two processes: the same weights, bit for bit."""
    proc = torchrun("fsdp_trainer_worker", tmp_path, timeout=600, accelerate=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    launched = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert launched["world_size"] == 2
    for case in ("adasam", "adasam-ga", "sam-sgd", "lora"):
        for name, w in ranks[0][case]["weights"].items():
            assert torch.equal(launched[case]["weights"][name], w), (case, name)
