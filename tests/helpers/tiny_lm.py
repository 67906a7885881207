"""A tiny causal LM (random `LlamaConfig`), variable-length data with masked prompts, and a float64 reference.

The reference is written from the definition of the loss, not from transformers' code: the mean, over every label
token of the whole gradient-accumulation window, of -log p(token | the tokens before it). Each example is run on its
own, unpadded, so no batching or padding detail of the code under test can leak into it.
"""

from __future__ import annotations

import torch
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from tests.helpers.reference import AdaSAMReference, SAMSGDReference

VOCAB = 40
# (length, label tokens) per example: a window of 2 micro-batches x 2 examples holds 2 + 3 label tokens, then 13 + 10,
# so a mean per micro-batch weighs a token of the first micro-batch ~8x as much as one of the second.
SHAPES = [(4, 2), (6, 3), (16, 13), (12, 10)]


def tiny_llama(seed: int = 0, dtype=torch.float64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False, pad_token_id=0,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager",
    )
    return LlamaForCausalLM(config).to(dtype)


class UnevenLMDataset(torch.utils.data.Dataset):
    """Random token sequences of the lengths in SHAPES (cycled), the prompt part of each labelled -100."""

    def __init__(self, n: int = 24, seed: int = 1):
        g = torch.Generator().manual_seed(seed)
        self.examples = []
        for i in range(n):
            length, answer = SHAPES[i % len(SHAPES)]
            ids = torch.randint(3, VOCAB, (length,), generator=g)
            labels = ids.clone()
            labels[: length - answer] = -100
            self.examples.append({"input_ids": ids, "labels": labels})

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def pad_collate(examples: list[dict]) -> dict:
    """Right padding: pad id 0, attention mask 0, label -100 (what DataCollatorForSeq2Seq does)."""
    width = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for e in examples:
        pad = width - len(e["input_ids"])
        batch["input_ids"].append(torch.nn.functional.pad(e["input_ids"], (0, pad), value=0))
        batch["attention_mask"].append(torch.nn.functional.pad(torch.ones_like(e["input_ids"]), (0, pad), value=0))
        batch["labels"].append(torch.nn.functional.pad(e["labels"], (0, pad), value=-100))
    return {k: torch.stack(v) for k, v in batch.items()}


def window_loss(model, names, ws, examples) -> torch.Tensor:
    """Sum of the label tokens' negative log-likelihoods over `examples`, divided by their count."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for e in examples:
        ids, labels = e["input_ids"][None], e["labels"]
        logits = functional_call(model, dict(zip(names, ws)), (ids,)).logits[0].double()
        targets = labels[1:]  # position t predicts token t + 1
        keep = targets != -100
        logp = torch.log_softmax(logits[:-1][keep], dim=-1)
        total = total - logp.gather(1, targets[keep][:, None]).sum()
        count += int(keep.sum())
    return total / count


def causal_lm_reference(model, dataset, *, optimizer: str, steps: int, batch: int, sam_steps=None, **hp) -> dict:
    """Weights after `steps` full-batch steps on examples [t*batch, (t+1)*batch), in float64 (helpers/reference.py);
    with `sam_steps`, only the steps t in it take the SAM step, the others AdaSAM's base step."""
    model = model.double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    ws = [p.detach().clone() for n, p in model.named_parameters() if p.requires_grad]
    ref = {"adasam": AdaSAMReference, "sam-sgd": SAMSGDReference}[optimizer](ws, **hp)
    for t in range(steps):
        examples = [dataset[i] for i in range(t * batch, (t + 1) * batch)]

        def grad_fn(ws, examples=examples):
            ws = [w.detach().requires_grad_() for w in ws]
            return list(torch.autograd.grad(window_loss(model, names, ws, examples), ws))

        ws = ref.step(ws, grad_fn) if sam_steps is None or t in sam_steps else ref.base_step(ws, grad_fn)
    return dict(zip(names, ws))


def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary ("t3" ... "t39"; pad 0, bos 1, eos 2), for trainers that
    insist on one (TRL's SFTTrainer) while the data is already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>")
