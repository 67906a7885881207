"""A tiny BERT classifier, its data, and a full-batch float64 reference for trainer tests.

Used by test_trainer.py and, under torchrun, by ddp_worker.py.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from transformers import BertConfig, BertForSequenceClassification

from tests.helpers.reference import AdaSAMReference, SAMSGDReference

SEQ, VOCAB, N_EXAMPLES = 8, 50, 64


def tiny_bert(seed: int = 0, dtype=torch.float64) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2,
    )
    return BertForSequenceClassification(config).to(dtype)


class TinyDataset(torch.utils.data.Dataset):
    """Fixed-length random sentences (no padding, so any batching gives the same per-example loss)."""

    def __init__(self, n: int = N_EXAMPLES, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB, (n, SEQ), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        ones = torch.ones(SEQ, dtype=torch.long)
        return {"input_ids": self.input_ids[i], "attention_mask": ones, "labels": self.labels[i]}


def full_batch_reference(model, dataset, *, optimizer: str, steps: int, batch: int, no_ascent_steps=(),
                         perturbed_names=None, **hp):
    """Weights after `steps` full-batch steps on examples [t*batch, (t+1)*batch), in float64.

    The loss is the plain mean cross-entropy over the batch, computed here from the logits;
    the optimizer math is tests/helpers/reference.py, written from the papers. Steps listed in
    `no_ascent_steps` take their gradient at w (e = 0), as a skipped perturbation does.
    `perturbed_names[t]`: layer-sparse SAM at step t, only these parameters perturbed (AdaSAM).
    """
    model = model.double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ws = [p.detach().clone() for n, p in model.named_parameters() if p.requires_grad]
    ref = {"adasam": AdaSAMReference, "sam-sgd": SAMSGDReference}[optimizer](ws, **hp)
    for t in range(steps):
        ids = dataset.input_ids[t * batch:(t + 1) * batch]
        labels = dataset.labels[t * batch:(t + 1) * batch]

        def grad_fn(ws, ids=ids, labels=labels):
            ws = [w.detach().requires_grad_() for w in ws]
            mask = {"attention_mask": torch.ones_like(ids)}
            logits = functional_call(model, dict(zip(names, ws)), (ids,), mask).logits
            return list(torch.autograd.grad(torch.nn.functional.cross_entropy(logits, labels), ws))

        ref.rho = 0.0 if t in no_ascent_steps else hp.get("rho", 0.05)
        if perturbed_names is not None and t in perturbed_names:
            ws = ref.step(ws, grad_fn, mask=[n in perturbed_names[t] for n in names])
        else:
            ws = ref.step(ws, grad_fn)
    return dict(zip(names, ws))


def assert_weights_close(model, expected: dict, rtol=1e-9, atol=1e-11):
    got = dict(model.named_parameters())
    for name, w in expected.items():
        torch.testing.assert_close(
            got[name].detach().double(), w, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )
