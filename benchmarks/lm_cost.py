"""Time per step and peak memory per optimizer for causal-LM fine-tuning, LoRA and full, on CPU; ratios to AdamW.

    python -m benchmarks.lm_cost --json docs/results/lm_cost.json     # the ~1.1B Llama config (TinyLlama's shape)
    python -m benchmarks.lm_cost --preset smollm2 --dtype float32 --batch 4 --seq 256 \
        --json docs/results/lm_cost_smollm2.json                      # the pretrained SmolLM2-135M
    python -m benchmarks.lm_cost --preset small --steps 1             # a smoke run, about a minute

Each (mode, optimizer) runs in a fresh subprocess, so its peak RSS (VmHWM) is its own. The model is a LlamaConfig
with random weights (no download), or, with --preset smollm2, the pretrained SmolLM2-135M-Instruct (packaged), created
directly in --dtype (bfloat16 by default: no float32 copy inflates the
peak, and full AdaSAM on 1.1B parameters, weights + gradients + 3 state sets + SAM's saved copy, fits in 24 GB only
so). Full fine-tuning then keeps the weights, gradients, optimizer state and the saved copy in that dtype; LoRA
(rank --lora_r on every linear layer of the blocks) keeps float32 adapters, and their state, over the frozen base.
A step is `SAMTrainer`'s optimizer step (with gradient clipping at 1.0), batch --batch x --seq random tokens; the
first step (optimizer state allocation, the one-off loss probe) is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from benchmarks.harness import (
    add_workload_flags, cpu_model, optimizer_bytes, peak_rss_bytes, print_result, rss_bytes, run_child, step_timer,
    tensor_bytes, versions, write_json,
)

OPTIMIZERS = {  # name -> learning rate (irrelevant to cost, but keeps the steps realistic)
    "sgd": 1e-2, "adamw": 2e-4, "amsgrad": 2e-4, "sam": 1e-2, "adasam": 1e-4,
}
MODES = ("lora", "full")
PRESETS = {
    # TinyLlama-1.1B's shape: 1,100,048,384 parameters.
    "1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "small": dict(vocab_size=1000, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    # The pretrained model of the LLM experiments: adasam_hf's alias of SmolLM2-135M-Instruct (134.5M parameters).
    "smollm2": "smollm2-135m",
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_model(preset: str, mode: str, dtype: str, lora_r: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if isinstance(PRESETS[preset], str):
        from adasam_hf.app.models import resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(PRESETS[preset]), dtype=getattr(torch, dtype))
    else:
        config = LlamaConfig(**PRESETS[preset], tie_word_embeddings=False)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))  # built in dtype, no copy
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules=LORA_TARGETS,
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)  # adapters in float32 (peft's autocast_adapter_dtype)
    return model


class RandomTokens:
    """`n` sequences of random tokens, labelled with themselves (every token counts in the loss)."""

    def __init__(self, n: int, seq: int, vocab: int):
        import torch

        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, vocab, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def worker(preset: str, mode: str, optimizer: str, steps: int, threads: int, batch: int, seq: int, dtype: str,
           lora_r: int) -> dict:
    """One run in this process: `steps` timed optimizer steps after a warm-up step."""
    import torch

    from adasam_hf import SAMTrainer, SAMTrainingArguments

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(preset, mode, dtype, lora_r)
    model_rss = rss_bytes()
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]

    timer = step_timer()
    with tempfile.TemporaryDirectory() as out:
        args = SAMTrainingArguments(
            output_dir=out, optimizer=optimizer, learning_rate=OPTIMIZERS[optimizer], per_device_train_batch_size=batch,
            max_steps=steps + 1, lr_scheduler_type="constant", report_to="none", save_strategy="no",
            logging_strategy="no", use_cpu=True, disable_tqdm=True, seed=0,
        )
        data = RandomTokens((steps + 1) * batch, seq, model.config.vocab_size)
        trainer = SAMTrainer(model=model, args=args, train_dataset=data, callbacks=[timer])
        trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    held_bytes = optimizer_bytes(opt)["total"]
    trainable_bytes = tensor_bytes(trainable)
    return {
        "step_s": statistics.median(timer.times[1:]),
        "step_times": timer.times[1:],
        "peak_rss_gb": peak_rss_bytes() / 1e9,
        "model_rss_gb": model_rss / 1e9 if model_rss is not None else None,
        "held_param_sets": held_bytes / trainable_bytes,
        "held_gb": held_bytes / 1e9,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in trainable),
        "trainable_dtype": str(trainable[0].dtype).removeprefix("torch."),
        "frozen_dtype": str(frozen[0].dtype).removeprefix("torch.") if frozen else None,
    }


def format_table(report: dict) -> str:
    """The report as markdown: one table per mode, ratios to AdamW."""
    lines = []
    for run in report["runs"]:
        rows, base = run["optimizers"], run["optimizers"].get("adamw")
        first = next(iter(rows.values()))
        lines += [
            "",
            f"**{run['mode']}** ({report['preset']}: {first['params'] / 1e6:,.1f}M parameters, "
            f"{first['trainable_params'] / 1e6:,.2f}M trainable in {first['trainable_dtype']}"
            + (f" over a frozen {first['frozen_dtype']} base" if first["frozen_dtype"] else "")
            + f"; batch {report['batch']} x {report['seq']}, {report['threads']} threads, {report['cpu']})",
            "",
            "| optimizer | s/step | x AdamW | peak RSS (GB) | x AdamW | model RSS (GB) | state + saved (param sets) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, row in rows.items():
            time_ratio = f"{row['step_s'] / base['step_s']:.2f}" if base else "-"
            mem_ratio = f"{row['peak_rss_gb'] / base['peak_rss_gb']:.2f}" if base else "-"
            model_rss = f"{row['model_rss_gb']:.2f}" if row["model_rss_gb"] is not None else "-"
            lines.append(f"| {name} | {row['step_s']:.3f} | {time_ratio} | {row['peak_rss_gb']:.2f} | {mem_ratio} | "
                         f"{model_rss} | {row['held_param_sets']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="1b")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: lora, full")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma-separated")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    add_workload_flags(parser, batch=1)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    modes, optimizers = args.modes.split(","), args.optimizers.split(",")
    for value, valid, flag in ((modes, MODES, "--modes"), (optimizers, OPTIMIZERS, "--optimizers")):
        bad = [v for v in value if v not in valid]
        if bad:
            parser.error(f"{flag}: unknown {', '.join(bad)} (choose from: {', '.join(valid)})")

    common = (args.steps, args.threads, args.batch, args.seq, args.dtype, args.lora_r)
    if args.child:  # MODE OPTIMIZER
        print_result(worker(args.preset, *args.child, *common))
        return 0

    report = {"preset": args.preset, "config": PRESETS[args.preset], "dtype": args.dtype, "lora_r": args.lora_r,
              "lora_targets": LORA_TARGETS, "batch": args.batch, "seq": args.seq, "steps": args.steps,
              "threads": args.threads, "device": "cpu", "cpu": cpu_model(), "torch": versions()["torch"], "runs": []}
    for mode in modes:
        rows = {}
        for name in optimizers:
            rows[name] = run_child("benchmarks.lm_cost", [mode, name], args, [
                "--preset", args.preset, "--steps", args.steps, "--dtype", args.dtype, "--lora_r", args.lora_r])
            print(f"[{args.preset} {mode}] {name}: {rows[name]['step_s']:.3f} s/step, "
                  f"peak {rows[name]['peak_rss_gb']:.2f} GB", flush=True)
        report["runs"].append({"mode": mode, "optimizers": rows})
    print(format_table(report))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
