"""Run under `torchrun --nproc_per_node 2`: SAMTrainer on the tiny BERT, per-device batch 4.

Usage: python -m tests.helpers.ddp_worker OUT_DIR {global,local,layer-sparse}. Each rank saves OUT_DIR/rank<r>.pt with
its weights (and, for layer-sparse, the parameter names perturbed at each step).
"""

import sys
from pathlib import Path

import torch

from adasam_hf import SAM, SAMTrainer
from adasam_hf.optim.layer_sampler import LayerSampler
from tests.helpers.distributed import save_rank_result
from tests.helpers.tiny import TinyDataset, tiny_bert
from tests.helpers.training import make_args


def train(out: Path, ascent: str, sgd: bool, model=None, **mode) -> dict:
    args = make_args(out, **{"micro": 4, **mode}, sam_ascent=ascent)
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
        result["strict"] = train_layer_sparse(out, ddp_find_unused_parameters=False, micro=2, ga=2)
    else:
        result = {"weights": train(out, ascent, sgd=False)}
    if ascent == "global":
        result["weights_sgd"] = train(out, ascent, sgd=True)
    save_rank_result(out, result)


if __name__ == "__main__":
    main()
