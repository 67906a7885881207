"""Run under `torchrun --nproc_per_node 2`: SAMTrainer on the tiny causal LM, per-device batch 2.

Usage: python -m tests.helpers.ddp_lm_worker OUT_DIR. Rank 0 sees 5 label tokens per step and rank 1 sees 23, so
the global token mean differs from the mean of the ranks' means. Each rank saves OUT_DIR/rank<r>.pt with its weights.
"""

import sys
from pathlib import Path

import torch

from adasam_hf import SAM, SAMTrainer
from tests.helpers.distributed import save_rank_result
from tests.helpers.tiny_lm import UnevenLMDataset, pad_collate, tiny_llama
from tests.helpers.training import make_args


def train(out: Path, sgd: bool) -> dict:
    args = make_args(out, micro=2, adam_epsilon=1e-4)
    model = tiny_llama()
    optimizers = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5), None) if sgd else (None, None)
    trainer = SAMTrainer(model=model, args=args, train_dataset=UnevenLMDataset(), data_collator=pad_collate,
                         optimizers=optimizers)
    trainer.train()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def main():
    out = Path(sys.argv[1])
    save_rank_result(out, {"adasam": train(out, sgd=False), "sam-sgd": train(out, sgd=True)})


if __name__ == "__main__":
    main()
