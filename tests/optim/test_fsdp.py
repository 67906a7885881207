"""SAM and AdaSAM on FSDP2-sharded parameters (`fully_shard`, DTensors), 2 CPU processes under torchrun (gloo),
against the float64 single-process reference on the whole batch (tests/helpers/reference.py)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.distributed import torchrun
from tests.helpers.fsdp_worker import CASES, GROUP_RHO, SPARSE, STEPS, batch, mlp
from tests.helpers.reference import AdaSAMReference, SAMSGDReference

pytestmark = pytest.mark.slow


def grad_fn(ws: list[torch.Tensor]) -> list[torch.Tensor]:
    """The gradient of the whole batch's mean squared error at weights `ws` (the MLP's, in order)."""
    ws = [w.detach().requires_grad_(True) for w in ws]
    x, y = batch()
    h = x
    for i in range(0, len(ws), 2):
        h = h @ ws[i].T + ws[i + 1]
        if i + 2 < len(ws):
            h = torch.tanh(h)
    torch.nn.functional.mse_loss(h, y).backward()
    return [w.grad for w in ws]


def reference(case: str, sparse: bool = False) -> list[list[torch.Tensor]]:
    _, kw = CASES[case]
    ws = [p.detach().clone() for p in mlp().parameters()]
    if kw.get("base_optimizer") is torch.optim.SGD:
        ref = SAMSGDReference(ws, lr=kw["lr"], momentum=kw["momentum"], rho=kw["rho"])
    else:
        rho = [GROUP_RHO] * 2 + [kw["rho"]] * (len(ws) - 2) if case.endswith("group-rho") else kw["rho"]
        ref = AdaSAMReference(ws, lr=kw["lr"], rho=rho, adaptive=kw.get("adaptive", False),
                              weight_decay=kw.get("weight_decay", 0.0))
    out = []
    for _ in range(STEPS):
        ws = ref.step(ws, grad_fn, mask=SPARSE) if sparse else ref.step(ws, grad_fn)
        out.append(ws)
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    proc = torchrun("fsdp_worker", out, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("case", [*CASES, "layer-sparse"])
def test_sharded_steps_equal_the_whole_batch_reference(ranks, case):
    """Each rank holds half of the batch and of every parameter; the weights after each step equal the float64
    reference on the whole batch, to float64 rounding, and are the same on both ranks."""
    expected = reference("adasam", sparse=True) if case == "layer-sparse" else reference(case)
    for rank in ranks:
        assert rank["world_size"] == 2
        for step, (got, want) in enumerate(zip(rank[case]["weights"], expected)):
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14, msg=f"{case}, step {step}")
    assert ranks[0][case]["norms"] == ranks[1][case]["norms"]  # the global norm, the same on every rank


def test_the_ascent_norm_is_one_all_reduce_and_nothing_is_gathered(ranks):
    """Per SAM step the optimizer runs exactly one collective: the all-reduce of the squared norm (no gather of
    full parameters, no other traffic), whatever the option."""
    for case in [*CASES, "layer-sparse"]:
        assert ranks[0][case]["collectives"] == {"all_reduce": STEPS}, case


def test_state_and_saved_copy_are_sharded(ranks):
    """AdaSAM holds m, v, v̂ and the copy of w: 4 sets of this rank's shard, half of the unsharded bytes in all."""
    full = ranks[0]["full_numel"]
    for rank in ranks:
        run = rank["adasam"]
        assert run["state_is_sharded"]
        assert run["held_bytes"] == 4 * 8 * run["local_numel"]
    assert ranks[0]["adasam"]["local_numel"] + ranks[1]["adasam"]["local_numel"] == full
    assert ranks[1]["adasam"]["local_numel"] < full  # each rank holds a part


@pytest.mark.parametrize("case", ["adasam", "sam-sgd"])
def test_resume_from_a_sharded_checkpoint_equals_an_uninterrupted_run(ranks, case):
    """A torch.distributed.checkpoint save after 2 steps, loaded into a fresh model and optimizer (other initial
    weights), and the sharded optimizer state dict loaded as is: the 3rd step is bit-identical."""
    for rank in ranks:
        run = rank["resume"][case]
        for way in ("dcp", "state_dict"):
            for got, want in zip(run[way], run["uninterrupted"]):
                assert torch.equal(got, want), way


def test_half_precision_shards_have_a_finite_exact_norm(ranks):
    """float16 / bfloat16 shards whose squared norm leaves their range (or sinks into subnormals): the global norm
    is still the float64 one to the inputs' precision (the squares are summed in float32)."""
    for (dtype, value), (got, want) in ranks[0]["half_precision_norms"].items():
        assert got == pytest.approx(want, rel=1e-3), (dtype, value)
