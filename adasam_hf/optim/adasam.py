r"""AdaSAM: SAM with an AMSGrad-style adaptive update and momentum.

Sun, Shen, Chen, Ding, Tao. "AdaSAM: Boosting Sharpness-Aware Minimization with Adaptive Learning
Rate and Momentum for Training Deep Neural Networks", 2023. https://arxiv.org/abs/2303.00565
"""

from __future__ import annotations

import torch
from torch.optim.adam import adam
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from .sharded import local
from .sharpness import SharpnessAware
from .validation import check_adam_hparams


class AdaSAM(SharpnessAware):
    r"""Algorithm 1 of the AdaSAM paper.

    .. math::
        \begin{aligned}
        &\textbf{input: } x_0,\ \rho,\ \gamma\ (\text{lr}),\ \beta_1,\ \beta_2,\ \epsilon;\quad
            m_{-1} = v_{-1} = 0,\ \hat v_{-1} = \epsilon^2 \\
        &\textbf{for } t = 0, 1, \dots \\
        &\quad s_t = \nabla f(x_t)                                        && (1) \\
        &\quad e_t = \rho\, s_t / \lVert s_t \rVert                      && (2) \\
        &\quad g_t = \nabla f(x_t + e_t)                                  && (3) \\
        &\quad m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t                    && (4) \\
        &\quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2                  && (5) \\
        &\quad \hat v_t = \max(\hat v_{t-1}, v_t)                         && (6) \\
        &\quad x_{t+1} = x_t - \gamma\, m_t / \sqrt{\hat v_t}             && (7)
        \end{aligned}

    There is no bias correction and no epsilon in the denominator: :math:`\hat v_{-1} =
    \epsilon^2` bounds it below by :math:`\epsilon` instead. The norm in (2) is global, over
    every parameter of every group.

    Lines (1)-(3) are the protocol of :class:`SharpnessAware` (`perturb`, second backward,
    `restore`); `step()` runs (4)-(7). State per parameter, under torch's names:
    ``exp_avg`` = m, ``exp_avg_sq`` = v, ``max_exp_avg_sq`` = v̂, ``step`` = t.

    Extensions, all off by default:
        adaptive: the ASAM ascent e = rho * w^2 g / || |w| g || (Kwon et al., 2021).
        weight_decay: decoupled, AdamW-style: x <- x (1 - lr * weight_decay) before (7).
        rho per param group.

    Args:
        params: parameters or param groups.
        lr: the step size gamma.
        betas: (beta1, beta2), each in [0, 1).
        eps: > 0; sqrt of the initial v̂.
        rho: the ascent radius, > 0.
        adaptive: use the ASAM ascent.
        weight_decay: decoupled weight decay, >= 0.
        fused: use torch's fused AMSGrad kernel for (4)-(7). None picks it when every
            parameter is on a device that has it (CPU, CUDA, MPS, ...).
        foreach: with fused=False, use the multi-tensor path (default) or, with False, the
            per-parameter loop (a readable reference).
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rho: float = 0.05,
        adaptive: bool = False,
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ):
        check_adam_hparams(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        if fused and foreach:
            raise ValueError("fused and foreach cannot both be True")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, rho=rho, adaptive=adaptive,
            weight_decay=weight_decay, fused=fused, foreach=foreach,
        )
        super().__init__(params, defaults)
        self._no_bias_correction: dict[torch.device, torch.Tensor] = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", None)
            group.setdefault("foreach", None)
            group.setdefault("adaptive", False)
        self.__dict__.setdefault("_no_bias_correction", {})

    def scratch_tensors(self) -> list[torch.Tensor]:
        """The saved copies of w, and the infinite step counts that switch off bias correction."""
        return super().scratch_tensors() + list(self._no_bias_correction.values())

    state_keys = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def _init_group(self, group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps):
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("AdaSAM does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                # v̂_{-1} = eps^2 (Algorithm 1), which replaces the usual "+ eps".
                state["max_exp_avg_sq"] = torch.full_like(
                    p, group["eps"] ** 2, memory_format=torch.preserve_format
                )
            # The state has p's layout (sharded like p under FSDP2); the update works on local shards.
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        for tensors in (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
            tensors[:] = local(tensors)

    @torch.no_grad()
    def _base_step(self) -> None:
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
            if not params:
                continue
            torch._foreach_add_(steps, 1)
            fused = group["fused"]
            if fused is None:
                fused = group["foreach"] is not False and _fused_supported(params)
            beta1, beta2 = group["betas"]
            # Lines (4)-(7) are torch's AMSGrad with eps = 0 and bias corrections of 1. An
            # infinite step count gives 1 - beta^inf = 1 exactly, so torch's kernels (fused,
            # foreach or single-tensor) compute Algorithm 1 as written.
            adam(
                params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                [self._infinite_step(p.device if fused else None) for p in params],
                foreach=None if fused else group["foreach"],
                fused=fused,
                decoupled_weight_decay=True,
                amsgrad=True,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=0.0,
                maximize=False,
            )

    def _infinite_step(self, device: torch.device | None) -> torch.Tensor:
        # The fused kernel wants the step on the parameter's device, the others on the CPU
        # (as torch's Adam keeps it), so reading it costs no host sync.
        step = self._no_bias_correction.get(device)
        if step is None:
            # torch's kernels add 1 to the step in place; inf + 1 stays inf.
            step = self._no_bias_correction[device] = torch.tensor(float("inf"), device=device)
        return step


def _fused_supported(params: list[torch.Tensor]) -> bool:
    devices = _get_fused_kernels_supported_devices()
    return all(p.device.type in devices and p.is_floating_point() for p in params)

