"""AdaSAM / SAM against the float64 references of tests/helpers/reference.py."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from adasam_hf import SAM, AdaSAM, create_optimizer, list_optimizers
from tests.helpers.reference import AdaSAMReference, SAMSGDReference, ascent

STEPS = 25


def make_problem(dtype=torch.float64, seed=0):
    """A small nonlinear regression: a 2-layer tanh MLP, a new batch every step."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (8,), (3, 8), (3,)]
    ws = [torch.randn(s, generator=g, dtype=torch.float64) * 0.5 for s in shapes]
    batches = [
        (torch.randn(16, 5, generator=g, dtype=torch.float64), torch.randn(16, 3, generator=g, dtype=torch.float64))
        for _ in range(STEPS)
    ]
    return [w.to(dtype) for w in ws], [(x.to(dtype), y.to(dtype)) for x, y in batches]


def loss_fn(ws, batch):
    w1, b1, w2, b2 = ws
    x, y = batch
    return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()


def grad_fn(batch):
    def f(ws):
        ws = [w.detach().requires_grad_() for w in ws]
        return list(torch.autograd.grad(loss_fn(ws, batch), ws))

    return f


def run_reference(ref, ws, batches):
    for batch in batches:
        ws = ref.step(ws, grad_fn(batch))
    return ws


def run_protocol(opt, params, batches):
    """Drive the optimizer through perturb / restore by hand, as a user loop does."""
    for batch in batches:
        opt.zero_grad()
        loss_fn(params, batch).backward()
        opt.perturb()
        opt.zero_grad()
        loss_fn(params, batch).backward()
        opt.restore()
        opt.step()


def run_closure(opt, params, batches):
    for batch in batches:
        def closure(batch=batch):
            opt.zero_grad()
            loss = loss_fn(params, batch)
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert torch.is_tensor(loss)


DRIVERS = {"protocol": run_protocol, "closure": run_closure}
ADASAM_PATHS = {
    "fused": dict(fused=True),
    "foreach": dict(fused=False, foreach=True),
    "single": dict(fused=False, foreach=False),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("path", ADASAM_PATHS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_adasam_matches_algorithm_1(driver, path, adaptive):
    ws, batches = make_problem()
    hp = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6, rho=0.1, adaptive=adaptive, weight_decay=0.0)
    expected = run_reference(AdaSAMReference(ws, **hp), ws, batches)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    DRIVERS[driver](AdaSAM(params, **hp, **ADASAM_PATHS[path]), params, batches)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    # The test can fail: the reference moved far from the start.
    assert max((e - w).abs().max() for e, w in zip(expected, ws)) > 0.05


def test_adasam_weight_decay_is_decoupled():
    ws, batches = make_problem()
    hp = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-8, rho=0.05, weight_decay=0.1)
    expected = run_reference(AdaSAMReference(ws, **hp), ws, batches)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    run_protocol(AdaSAM(params, **hp), params, batches)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


def test_adasam_float32_tracks_float64_reference():
    ws, batches = make_problem()
    hp = dict(lr=0.01, rho=0.1)
    expected = run_reference(AdaSAMReference(ws, **hp), ws, batches)
    ws32, batches32 = make_problem(dtype=torch.float32)
    params = [torch.nn.Parameter(w.clone()) for w in ws32]
    run_protocol(AdaSAM(params, **hp), params, batches32)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_sgd_momentum_matches_reference(driver, adaptive):
    ws, batches = make_problem()
    hp = dict(lr=0.05, momentum=0.9, weight_decay=0.01, rho=0.1, adaptive=adaptive)
    expected = run_reference(SAMSGDReference(ws, **hp), ws, batches)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = create_optimizer("asam" if adaptive else "sam", params, **hp)
    DRIVERS[driver](opt, params, batches)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    assert max((e - w).abs().max() for e, w in zip(expected, ws)) > 0.05


def test_param_groups_with_own_lr_and_rho_share_one_global_norm():
    ws, batches = make_problem()
    lrs, rhos = [0.01, 0.01, 0.003, 0.003], [0.2, 0.2, 0.05, 0.05]
    ref = AdaSAMReference(ws, lr=lrs, rho=rhos)
    expected = run_reference(ref, ws, batches)
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = AdaSAM(
        [{"params": params[:2], "lr": 0.01, "rho": 0.2}, {"params": params[2:], "lr": 0.003, "rho": 0.05}]
    )
    run_protocol(opt, params, batches)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["adasam", "adasam-adaptive", "sam", "asam", "sam-adamw"])
def test_restore_is_bit_exact_in_float32(name):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(37, 11) * 3), torch.nn.Parameter(torch.randn(5) * 1e-3)]
    before = [p.detach().clone() for p in params]
    opt = create_optimizer(name, params, lr=0.1, rho=0.37)
    for p in params:
        p.grad = torch.randn_like(p) * 1e3
    opt.perturb()
    assert not torch.equal(params[0], before[0])  # it really moved
    opt.zero_grad()
    for p in params:  # the second-pass gradient, unrelated to the first
        p.grad = torch.randn_like(p)
    opt.restore()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    opt.restore()  # idempotent
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("bad", [0.0, float("inf"), float("nan")])
@pytest.mark.parametrize("name", ["adasam", "adasam-adaptive", "sam"])
def test_zero_or_nonfinite_norm_leaves_weights_untouched(name, bad):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(3))]
    before = [p.detach().clone() for p in params]
    opt = create_optimizer(name, params, lr=0.1)
    params[0].grad = torch.zeros(6, 4) if bad == 0.0 else torch.randn(6, 4)
    params[1].grad = torch.zeros(3)
    if bad != 0.0:
        params[0].grad[2, 1] = bad
    norm = opt.perturb()
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    assert (norm == 0) if bad == 0.0 else not torch.isfinite(norm)
    opt.restore()
    for p, b in zip(params, before):
        assert torch.equal(p, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("adaptive", [False, True])
def test_half_precision_ascent_matches_reference(dtype, adaptive):
    """Every element moves (torch's CPU fused SGD skips whole SIMD blocks of bf16/fp16), by e(w)."""
    torch.manual_seed(0)
    ws = [torch.randn(67, 5), torch.randn(130)]  # sizes past several SIMD blocks, with a ragged tail
    gs = [torch.randn_like(w) for w in ws]
    params = [torch.nn.Parameter(w.to(dtype)) for w in ws]
    for p, g in zip(params, gs):
        p.grad = g.to(dtype)
    opt = AdaSAM(params, rho=3.0, adaptive=adaptive)  # e ~ 0.1 per element: above half-precision spacing
    w64 = [p.detach().double() for p in params]
    e = ascent(w64, [p.grad.double() for p in params], 3.0, adaptive)
    opt.perturb()
    ulp = torch.finfo(dtype).eps
    for p, w, ei in zip(params, w64, e):
        torch.testing.assert_close(p.detach().double(), w + ei, rtol=2 * ulp, atol=2 * ulp * ei.abs().max().item())
        assert (p.detach().double() != w).double().mean() > 0.5  # most elements moved
    opt.restore()
    for p, w in zip(params, w64):
        assert torch.equal(p.detach().double(), w)


def test_perturb_returns_global_norm_and_unscales_it():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    opt = AdaSAM(params, rho=0.5)
    params[0].grad = torch.tensor([3.0, 0.0])
    params[1].grad = torch.tensor([4.0])
    norm = opt.perturb(grad_scale=torch.tensor(2.0))
    assert norm.item() == 2.5  # ||(3, 0, 4)|| / 2
    # e = rho * g / ||g|| is scale-invariant: the loss scale does not change the ascent.
    torch.testing.assert_close(params[0].detach(), torch.tensor([0.3, 0.0]))
    torch.testing.assert_close(params[1].detach(), torch.tensor([0.4]))


@pytest.mark.parametrize("name", ["adasam", "adasam-adaptive", "sam", "sam-adamw"])
def test_state_dict_resume_equals_uninterrupted_run(name):
    ws, batches = make_problem(dtype=torch.float32)
    hp = dict(lr=0.01, rho=0.1, weight_decay=0.01)

    full = [torch.nn.Parameter(w.clone()) for w in ws]
    run_protocol(create_optimizer(name, full, **hp), full, batches)

    first = [torch.nn.Parameter(w.clone()) for w in ws]
    opt = create_optimizer(name, first, **hp)
    run_protocol(opt, first, batches[:10])
    buffer = io.BytesIO()
    torch.save({"params": [p.detach() for p in first], "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer)

    resumed = [torch.nn.Parameter(w.clone()) for w in ckpt["params"]]
    opt2 = create_optimizer(name, resumed, lr=123.0, rho=9.0)  # hyperparameters come from the checkpoint
    opt2.load_state_dict(ckpt["optim"])
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["rho"] == 0.1
    run_protocol(opt2, resumed, batches[10:])
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)


def test_adasam_state_is_m_v_vhat_and_step():
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = AdaSAM(params, eps=1e-3)
    params[0].grad = torch.zeros(3)
    opt.step()
    state = opt.state[params[0]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert state["step"].item() == 1
    assert torch.equal(state["max_exp_avg_sq"], torch.full((3,), 1e-6))  # v̂_{-1} = eps^2
    assert set(opt.state_dict()["state"][0]) == set(state)  # no saved copy of w in checkpoints


def test_params_without_grad_are_untouched_and_stateless():
    ws, batches = make_problem()
    params = [torch.nn.Parameter(w.clone()) for w in ws]
    unused = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    frozen = torch.nn.Parameter(torch.randn(4, dtype=torch.float64), requires_grad=False)
    before = (unused.detach().clone(), frozen.detach().clone())
    opt = AdaSAM(params + [unused, frozen], lr=0.01, rho=0.1)
    run_protocol(opt, params, batches)
    expected = run_reference(AdaSAMReference(ws, lr=0.01, rho=0.1), ws, batches)
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    assert torch.equal(unused, before[0]) and torch.equal(frozen, before[1])
    assert unused not in opt.state and frozen not in opt.state


def test_sam_shares_groups_with_base_so_schedulers_drive_it():
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = SAM(params, torch.optim.SGD, lr=1.0, momentum=0.9)
    assert opt.param_groups is opt.base_optimizer.param_groups
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    for _ in range(3):
        params[0].grad = torch.ones(3)
        opt.step()
        sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.125
    assert "momentum_buffer" in opt.state_dict()["state"][0]


def test_tiny_rho_sam_approaches_its_base_optimizer():
    ws, batches = make_problem()
    a = [torch.nn.Parameter(w.clone()) for w in ws]
    b = [torch.nn.Parameter(w.clone()) for w in ws]
    run_protocol(SAM(a, torch.optim.AdamW, rho=1e-9, lr=0.01), a, batches)
    base = torch.optim.AdamW(b, lr=0.01)
    for batch in batches:
        base.zero_grad()
        loss_fn(b, batch).backward()
        base.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


# (hyperparameter, bad value, what the message must say)
BAD_VALUES = [
    ("lr", -0.1, "lr: -0.1"),
    ("rho", 0.0, "rho: 0.0 (must be > 0)"),
    ("rho", -1.0, "rho: -1.0"),
    ("betas", (1.0, 0.999), "beta parameter at index 0: 1.0"),
    ("betas", (0.9, -0.1), "beta parameter at index 1: -0.1"),
    ("eps", 0.0, "eps: 0.0"),
    ("eps", -1e-8, "eps: -1e-08"),
    ("weight_decay", -0.01, "weight_decay: -0.01"),
]


@pytest.mark.parametrize("key,value,word", BAD_VALUES)
@pytest.mark.parametrize("name", ["adasam", "sam", "sam-adamw"])
def test_bad_values_raise_value_error_naming_them(name, key, value, word):
    params = [torch.nn.Parameter(torch.randn(2))]
    with pytest.raises(ValueError) as err:
        create_optimizer(name, params, **{key: value})
    assert word in str(err.value)


@pytest.mark.parametrize("key,value,word", BAD_VALUES)
def test_adasam_class_validates_too(key, value, word):
    with pytest.raises(ValueError) as err:
        AdaSAM([torch.nn.Parameter(torch.randn(2))], **{key: value})
    assert word in str(err.value)


def test_rho_is_only_checked_for_sharpness_aware_optimizers():
    create_optimizer("adamw", [torch.nn.Parameter(torch.randn(2))], rho=0.0)


def test_unknown_optimizer_lists_choices():
    with pytest.raises(ValueError) as err:
        create_optimizer("adasma", [torch.nn.Parameter(torch.randn(2))])
    assert "'adasma'" in str(err.value)
    for name in list_optimizers():
        assert name in str(err.value)


def test_unknown_hyperparameter_is_an_error():
    with pytest.raises(ValueError, match="nesterov"):
        create_optimizer("sgd", [torch.nn.Parameter(torch.randn(2))], nesterov=True)


def test_group_rho_is_validated():
    with pytest.raises(ValueError, match="rho"):
        AdaSAM([{"params": [torch.nn.Parameter(torch.randn(2))], "rho": -0.5}])
    opt = SAM([torch.nn.Parameter(torch.randn(2))])
    with pytest.raises(ValueError, match="rho"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "rho": 0})


def test_sparse_gradients_get_a_clear_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    for opt in (AdaSAM(emb.parameters()), SAM(emb.parameters())):
        opt.zero_grad()
        emb(torch.tensor([1, 2])).sum().backward()
        with pytest.raises(RuntimeError, match="sparse"):
            opt.perturb()
    with pytest.raises(RuntimeError, match="sparse"):
        AdaSAM(emb.parameters()).step()


def test_factory_builds_what_the_table_says():
    p = [torch.nn.Parameter(torch.randn(2))]
    kinds = {name: create_optimizer(name, copy.deepcopy(p)) for name in list_optimizers()}
    assert type(kinds["sgd"]) is torch.optim.SGD and kinds["sgd"].defaults["momentum"] == 0.9
    assert type(kinds["adamw"]) is torch.optim.AdamW and not kinds["adamw"].defaults["amsgrad"]
    assert kinds["amsgrad"].defaults["amsgrad"] and kinds["amsgrad"].defaults["weight_decay"] == 0.0
    assert isinstance(kinds["sam"].base_optimizer, torch.optim.SGD) and not kinds["sam"].defaults["adaptive"]
    assert isinstance(kinds["asam"].base_optimizer, torch.optim.SGD) and kinds["asam"].defaults["adaptive"]
    assert isinstance(kinds["sam-adamw"].base_optimizer, torch.optim.AdamW)
    assert type(kinds["adasam"]) is AdaSAM and not kinds["adasam"].defaults["adaptive"]
    assert kinds["adasam-adaptive"].defaults["adaptive"]


def test_step_while_perturbed_is_an_error():
    params = [torch.nn.Parameter(torch.randn(3))]
    opt = AdaSAM(params)
    params[0].grad = torch.ones(3)
    opt.perturb()
    with pytest.raises(RuntimeError, match="restore"):
        opt.step()


def test_readme_optimizer_example_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    match = re.search(r"<!-- example: optimizers -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md lost its optimizer example"
    namespace = {"__name__": "readme_example"}
    exec(compile(match.group(1), "README.md", "exec"), namespace)
    assert torch.isfinite(namespace["loss"]) and not namespace["opt"].is_perturbed
