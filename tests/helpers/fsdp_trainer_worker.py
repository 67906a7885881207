"""Run under `torchrun --nproc_per_node 2`: SAMTrainer on the tiny causal LM sharded by FSDP2 at load time
(``from_pretrained(..., distributed_config=DistributedConfig(fsdp_size=2))``), per-device batch 2.

Usage: python -m tests.helpers.fsdp_trainer_worker OUT_DIR. As in ddp_lm_worker, rank 0 sees 5 label tokens per step
and rank 1 sees 23. Each rank saves OUT_DIR/rank<r>.pt: per case the full weights, the logs, whether the parameters
were DTensors and the gradient reduce-scatters FSDP2 ran; and the one-line refusals of what the sharded step does
not support.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM
from transformers.distributed import DistributedConfig

from adasam_hf import SAM, SAMTrainer
from tests.helpers.distributed import save_rank_result
from tests.helpers.tiny_lm import UnevenLMDataset, pad_collate, tiny_llama
from tests.helpers.training import make_args


def load(folder: Path, **sharding):
    return AutoModelForCausalLM.from_pretrained(folder, distributed_config=DistributedConfig(fsdp_size=2, **sharding),
                                                dtype=torch.float64)


def lora(model):
    """LoRA adapters (plain, replicated tensors beside the DTensor base; the Trainer broadcasts them from rank 0 and
    averages their gradients), drawn from a fixed seed so that the reference draws the same."""
    torch.manual_seed(123)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def full(p: torch.Tensor) -> torch.Tensor:
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()


def train(out: Path, folder: Path, sgd: bool = False, adapters: bool = False, **kw) -> dict:
    args = make_args(out, **{"micro": 2, "adam_epsilon": 1e-4, **kw})
    model = lora(load(folder)) if adapters else load(folder)
    optimizers = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5), None) if sgd else (None, None)
    trainer = SAMTrainer(model=model, args=args, train_dataset=UnevenLMDataset(), data_collator=pad_collate,
                         optimizers=optimizers)
    calls, original = [], dist.reduce_scatter_single

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.reduce_scatter_single = spy  # FSDP2's gradient reduction (torch 2.13)
    try:
        trainer.train()
    finally:
        dist.reduce_scatter_single = original
    assert not trainer.sam_optimizer.is_perturbed
    return {"weights": {n: full(p) for n, p in model.named_parameters()},
            "trainable": [n for n, p in model.named_parameters() if p.requires_grad],
            "sharded": all(type(p).__name__ == "DTensor" for p in model.parameters() if not p.requires_grad or
                           not adapters),
            "logs": [h for h in trainer.state.log_history if "loss" in h], "reduce_scatters": len(calls)}


def refusal(out: Path, folder: Path, sharding: dict | None = None, **kw) -> str:
    try:
        SAMTrainer(model=load(folder, **sharding or {}), args=make_args(out, micro=2, **kw),
                   train_dataset=UnevenLMDataset(), data_collator=pad_collate)
    except ValueError as exc:
        return str(exc)
    return "accepted"


def by_hand_refusal(out: Path) -> str:
    """A model sharded with fully_shard by hand (not by transformers at load)."""
    model = tiny_llama()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    try:
        SAMTrainer(model=model, args=make_args(out, micro=2), train_dataset=UnevenLMDataset(),
                   data_collator=pad_collate)
    except ValueError as exc:
        return str(exc)
    return "accepted"


def main():
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    folder = out / "model"
    if dist.get_rank() == 0:
        tiny_llama().save_pretrained(folder)
    dist.barrier()
    result = {
        "adasam": train(out, folder),
        "adasam-ga": train(out, folder, micro=1, ga=2),
        "sam-sgd": train(out, folder, sgd=True),
        "lora": train(out, folder, adapters=True, learning_rate=0.05, max_steps=4),
        "interval": train(out, folder, sam_interval=2),
        "local": refusal(out, folder, sam_ascent="local"),
        "layer-sparse": refusal(out, folder, sam_mode="layer-sparse"),
        "mixed-precision": refusal(out, folder, {"fsdp_mixed_precision": True}),
        "by-hand": by_hand_refusal(out),
    }
    save_rank_result(out, result)


if __name__ == "__main__":
    main()
