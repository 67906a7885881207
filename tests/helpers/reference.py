"""Independent float64 references, written from the papers' equations with plain tensor ops.

Nothing here imports adasam_hf: the tests compare the package against these.
"""

from __future__ import annotations

import torch


def ascent(ws, gs, rho, adaptive):
    """e = rho * g / ||g||, or rho * w^2 g / || |w| g || (ASAM); the norm spans every tensor.

    `rho` is a float or one value per tensor (per-group rho with a global norm).
    """
    rhos = rho if isinstance(rho, (list, tuple)) else [rho] * len(ws)
    if adaptive:
        norm = torch.sqrt(sum(((w.abs() * g) ** 2).sum() for w, g in zip(ws, gs)))
        return [r * w * w * g / norm for r, w, g in zip(rhos, ws, gs)]
    norm = torch.sqrt(sum((g**2).sum() for g in gs))
    return [r * g / norm for r, g in zip(rhos, gs)]


class AdaSAMReference:
    """Algorithm 1 of Sun et al. (2023), with decoupled weight decay as an option."""

    def __init__(self, ws, lr, betas=(0.9, 0.999), eps=1e-8, rho=0.05, adaptive=False, weight_decay=0.0):
        self.lr, self.b1, self.b2, self.rho, self.adaptive, self.wd = lr, *betas, rho, adaptive, weight_decay
        self.m = [torch.zeros_like(w) for w in ws]
        self.v = [torch.zeros_like(w) for w in ws]
        self.vhat = [torch.full_like(w, eps**2) for w in ws]

    def step(self, ws, grad_fn, mask=None):
        """`mask`: layer-sparse SAM; only the True tensors are perturbed (the norm spans them
        alone) and take the gradient at w + e; the others keep the gradient at w."""
        s = grad_fn(ws)
        if mask is None:
            e = ascent(ws, s, self.rho, self.adaptive)
            g = grad_fn([w + ei for w, ei in zip(ws, e)])
        else:
            picked = [i for i, m in enumerate(mask) if m]
            e = dict(zip(picked, ascent([ws[i] for i in picked], [s[i] for i in picked], self.rho, self.adaptive)))
            at_e = grad_fn([w + e[i] if i in e else w for i, w in enumerate(ws)])
            g = [at_e[i] if i in e else s[i] for i in range(len(ws))]
        return self._update(ws, g)

    def base_step(self, ws, grad_fn):
        """A step the cheaper schedules (sam_interval, rst) leave without ascent: (4)-(7) on the gradient at w."""
        return self._update(ws, grad_fn(ws))

    def _update(self, ws, g):
        lrs = self.lr if isinstance(self.lr, (list, tuple)) else [self.lr] * len(ws)
        out = []
        for i, (w, gi) in enumerate(zip(ws, g)):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * gi
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * gi * gi
            self.vhat[i] = torch.maximum(self.vhat[i], self.v[i])
            w = w * (1 - lrs[i] * self.wd)
            out.append(w - lrs[i] * self.m[i] / torch.sqrt(self.vhat[i]))
        return out


class SAMSGDReference:
    """SAM with heavy-ball SGD (torch's convention: buf = mu * buf + g, first buf = g)."""

    def __init__(self, ws, lr, momentum=0.0, weight_decay=0.0, rho=0.05, adaptive=False):
        self.lr, self.mu, self.wd, self.rho, self.adaptive = lr, momentum, weight_decay, rho, adaptive
        self.buf = [None] * len(ws)

    def step(self, ws, grad_fn):
        s = grad_fn(ws)
        e = ascent(ws, s, self.rho, self.adaptive)
        g = grad_fn([w + ei for w, ei in zip(ws, e)])
        out = []
        for i, (w, gi) in enumerate(zip(ws, g)):
            gi = gi + self.wd * w
            if self.mu:
                self.buf[i] = gi.clone() if self.buf[i] is None else self.mu * self.buf[i] + gi
                gi = self.buf[i]
            out.append(w - self.lr * gi)
        return out
