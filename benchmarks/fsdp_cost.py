"""AdaSAM against AdamW under FSDP2 on CPU: bytes the optimizer holds, peak memory and time per step, per rank.

    python -m benchmarks.fsdp_cost --json docs/results/fsdp_cost.json    # SmolLM2-135M, 1 and 2 ranks
    python -m benchmarks.fsdp_cost --preset small --steps 1               # a smoke run

Each (ranks, optimizer) runs as its own `torchrun --nproc_per_node N` (gloo), so each rank's peak RSS is its own.
The model is loaded as SAMTrainer supports sharding: ``from_pretrained(..., distributed_config=
DistributedConfig(fsdp_size=N))``, each rank reading only its shard (with 1 rank nothing is sharded: the baseline);
full fine-tuning in float32, `SAMTrainer` steps (clipping at 1.0) on --batch x --seq random tokens per rank; the first
step is a warm-up and is not timed; --threads are split between the ranks. Per rank: the optimizer's tensors (its
local shards: state, and SAM's saved copy of w), peak RSS, and the median step time.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import (
    add_workload_flags, cpu_model, optimizer_bytes, peak_rss_bytes, print_result, rss_bytes, run_child, step_timer,
    versions, write_json,
)
from benchmarks.lm_cost import OPTIMIZERS, PRESETS, RandomTokens

RANKS = (1, 2)


def model_folder(preset: str, work: Path) -> Path:
    """A folder `from_pretrained` can shard at load: SmolLM2's converted folder, or a random Llama of the preset."""
    if isinstance(PRESETS[preset], str):
        from adasam_hf.app.models import resolve_model_path

        return Path(resolve_model_path(PRESETS[preset]))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = work / f"model-{preset}"
    if not folder.exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**PRESETS[preset], tie_word_embeddings=False)).save_pretrained(folder)
    return folder


def worker(folder: str, optimizer: str, steps: int, threads: int, batch: int, seq: int) -> dict:
    """One rank of one run: every rank's figures (gathered), and the parameter count."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    from adasam_hf import SAMTrainer, SAMTrainingArguments

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    torch.set_num_threads(max(1, threads // world))
    torch.manual_seed(0)
    sharding = {"distributed_config": DistributedConfig(fsdp_size=world)} if world > 1 else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **sharding)
    model_rss = rss_bytes()
    params = list(model.parameters())
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]

    timer = step_timer()
    with tempfile.TemporaryDirectory() as out:
        args = SAMTrainingArguments(
            output_dir=out, optimizer=optimizer, learning_rate=OPTIMIZERS[optimizer], per_device_train_batch_size=batch,
            max_steps=steps + 1, lr_scheduler_type="constant", report_to="none", save_strategy="no",
            logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        )
        data = RandomTokens((steps + 1) * batch * world, seq, model.config.vocab_size)
        trainer = SAMTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
        trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    held = optimizer_bytes(opt)
    mine = {
        "step_s": statistics.median(timer.times[1:]),
        "step_times": timer.times[1:],
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "model_rss_gb": model_rss / 1e9 if model_rss is not None else None,
        "held_gb": held["total"] / 1e9,
        "held_param_sets": held["total"] / sum(t.numel() * t.element_size() for t in local),
        "local_params": sum(t.numel() for t in local),
        "sharded": any(hasattr(p, "to_local") for p in params),
    }
    ranks = [None] * world
    dist.all_gather_object(ranks, mine)
    total = sum(p.numel() for p in params)
    del trainer, opt, model, params, local  # a DDP reducer freed after its process group hangs in gloo's destructor
    gc.collect()
    dist.destroy_process_group()
    return {"params": total, "ranks": ranks}


def format_table(report: dict) -> str:
    lines = [f"{report['preset']}: {report['params'] / 1e6:,.1f}M parameters, full fine-tuning in float32, batch "
             f"{report['batch']} x {report['seq']} per rank, {report['threads']} threads in all, {report['cpu']}", "",
             "| ranks | optimizer | held per rank (GB) | x AdamW | param sets of the local shard | peak RSS per rank "
             "(GB) | s/step | x AdamW |", "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in report["runs"]:
        worst = {name: {key: max(r[key] for r in row["ranks"]) for key in ("held_gb", "peak_rss_gb", "step_s",
                                                                             "held_param_sets")}
                 for name, row in run["optimizers"].items()}  # per rank: the largest (the slowest rank sets the pace)
        base = worst.get("adamw")
        for name, w in worst.items():
            held_ratio = f"{w['held_gb'] / base['held_gb']:.2f}" if base else "-"
            step_ratio = f"{w['step_s'] / base['step_s']:.2f}" if base else "-"
            lines.append(f"| {run['ranks']} | {name} | {w['held_gb']:.3f} | {held_ratio} | "
                         f"{w['held_param_sets']:.2f} | {w['peak_rss_gb']:.2f} | {w['step_s']:.2f} | {step_ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smollm2")
    parser.add_argument("--optimizers", default="adamw,adasam", help="comma-separated")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    add_workload_flags(parser, batch=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    optimizers = args.optimizers.split(",")
    bad = [o for o in optimizers if o not in OPTIMIZERS]
    if bad:
        parser.error(f"--optimizers: unknown {', '.join(bad)} (choose from: {', '.join(OPTIMIZERS)})")
    for flag in ("steps", "threads", "batch", "seq"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: {getattr(args, flag)} (must be a positive integer)")
    if args.child:  # OPTIMIZER
        result = worker(args.folder, args.child[0], args.steps, args.threads, args.batch, args.seq)
        if os.environ.get("RANK", "0") == "0":
            print_result(result)
        return 0

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        parser.error("torchrun is not on PATH (it comes with torch)")
    with tempfile.TemporaryDirectory() as work:
        folder = model_folder(args.preset, Path(work))
        report = {"preset": args.preset, "batch": args.batch, "seq": args.seq, "steps": args.steps,
                  "threads": args.threads, "device": "cpu", "cpu": cpu_model(), "torch": versions()["torch"],
                  "runs": []}
        for ranks in RANKS:
            rows = {}
            for name in optimizers:
                launcher = [torchrun, "--standalone", "--nproc_per_node", str(ranks)]
                rows[name] = run_child("benchmarks.fsdp_cost", [name], args, [
                    "--preset", args.preset, "--steps", args.steps, "--folder", folder], launcher=launcher)
                report["params"] = rows[name]["params"]
                print(f"[{ranks} rank(s)] {name}: " + "; ".join(
                    f"rank {i}: {r['step_s']:.2f} s/step, held {r['held_gb']:.3f} GB, peak {r['peak_rss_gb']:.2f} GB"
                    for i, r in enumerate(rows[name]["ranks"])), flush=True)
            report["runs"].append({"ranks": ranks, "optimizers": rows})
    print(format_table(report))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
