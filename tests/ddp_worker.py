"""Run under `torchrun --nproc_per_node 2`: SAMTrainer on the tiny BERT, per-device batch 4.

Usage: ddp_worker.py OUT_DIR {global,local,layer-sparse}. Each rank saves OUT_DIR/rank<r>.pt with
its weights (and, for layer-sparse, the parameter names perturbed at each step).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from adasam_hf import SAM, SAMTrainer, SAMTrainingArguments
from adasam_hf.optim.layer_sampler import LayerSampler
from tiny import TinyDataset, tiny_bert


def train(out: Path, ascent: str, sgd: bool, model=None, **mode) -> dict:
    mode = {"per_device_train_batch_size": 4, **mode}
    args = SAMTrainingArguments(
        output_dir=str(out / "run"), max_steps=3, learning_rate=0.01,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0, report_to="none",
        save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, train_sampling_strategy="sequential",
        optimizer="adasam", sam_rho=0.05, sam_ascent=ascent, logging_steps=1, **mode,
    )
    model = tiny_bert() if model is None else model
    optimizers = (SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.5), None) if sgd else (None, None)
    trainer = SAMTrainer(model=model, args=args, train_dataset=TinyDataset(), optimizers=optimizers)
    trainer.train()
    assert not trainer.sam_optimizer.is_perturbed
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def train_layer_sparse(out: Path, **kw) -> dict:
    """Layer-sparse AdaSAM; the weights and the parameters perturbed at each step."""
    perturbed, original = {}, LayerSampler.sample
    names = {}

    def spy(self, step):
        layers = original(self, step)
        perturbed[step] = sorted(names[id(p)] for p in self.params_of(layers))
        return layers

    LayerSampler.sample = spy
    model = tiny_bert()
    names.update({id(p): n for n, p in model.named_parameters()})
    try:
        weights = train(out, "global", sgd=False, model=model, sam_mode="layer-sparse", sam_layer_fraction=0.4, **kw)
    finally:
        LayerSampler.sample = original
    return {"weights": weights, "perturbed": perturbed}


def main():
    out, ascent = Path(sys.argv[1]), sys.argv[2]
    if ascent == "layer-sparse":
        result = train_layer_sparse(out)
        # Without find_unused_parameters DDP would reject the frozen layers; GA 2 x batch 2 is the same batch of 8.
        result["strict"] = train_layer_sparse(out, ddp_find_unused_parameters=False, per_device_train_batch_size=2,
                                              gradient_accumulation_steps=2)
    else:
        result = {"weights": train(out, ascent, sgd=False)}
    if ascent == "global":
        result["weights_sgd"] = train(out, ascent, sgd=True)
    result["world_size"] = dist.get_world_size() if dist.is_initialized() else 1
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{dist.get_rank() if dist.is_initialized() else 0}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
