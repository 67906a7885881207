"""Run under `torchrun --nproc_per_node 2`: SAMTrainer on the tiny causal LM, per-device batch 2.

Usage: ddp_lm_worker.py OUT_DIR. Rank 0 sees 5 label tokens per step and rank 1 sees 23, so the global token
mean differs from the mean of the ranks' means. Each rank saves OUT_DIR/rank<r>.pt with its weights.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from adasam_hf import SAM, SAMTrainer, SAMTrainingArguments
from tiny_lm import UnevenLMDataset, pad_collate, tiny_llama


def train(out: Path, sgd: bool) -> dict:
    args = SAMTrainingArguments(
        output_dir=str(out / "run"), per_device_train_batch_size=2, max_steps=3, learning_rate=0.01,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, report_to="none",
        save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, train_sampling_strategy="sequential",
        optimizer="adasam", sam_rho=0.05, adam_epsilon=1e-4, logging_steps=1,
    )
    model = tiny_llama()
    optimizers = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5), None) if sgd else (None, None)
    trainer = SAMTrainer(model=model, args=args, train_dataset=UnevenLMDataset(), data_collator=pad_collate,
                         optimizers=optimizers)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main():
    out = Path(sys.argv[1])
    result = {"adasam": train(out, sgd=False), "sam-sgd": train(out, sgd=True),
              "world_size": dist.get_world_size() if dist.is_initialized() else 1}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{dist.get_rank() if dist.is_initialized() else 0}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
