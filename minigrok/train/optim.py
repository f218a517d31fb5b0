"""AdamW with decoupled weight decay, global gradient-norm clipping, and a warm-up + cosine learning rate.

AdamW: Loshchilov & Hutter 2019, Algorithm 2 (the form PyTorch's torch.optim.AdamW uses): first decay the
weights, ``p *= 1 - lr·wd``, then the Adam step ``p -= lr · m̂ / (sqrt(v̂) + eps)`` with bias-corrected moments.
Weight decay applies to matrices only (ndim >= 2); norm scales are left alone.
"""

from __future__ import annotations

import math

import numpy as np


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for a 0-based ``step``: linear warm-up from lr/warmup to lr over ``warmup_steps``, then
    cosine decay from lr to min_lr at ``total_steps``; min_lr after that."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most max_norm (0 = no clipping).

    Returns the norm before clipping (Pascanu et al. 2013). If a gradient holds NaN or inf the norm is NaN or inf
    and the gradients are left as they are (scaling would turn the finite ones into 0 and inf into NaN): the
    caller must skip such a step (the trainer does).
    """
    norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        scale = np.float32(max_norm / (norm + 1e-6))
        for g in grads.values():
            g *= scale
    return norm


class AdamW:
    """AdamW state (first and second moments per parameter, and the step count) and its update.

    m[name], v[name] have the parameter's shape, float32. ``step`` counts updates done.
    """

    def __init__(self, params: dict[str, np.ndarray], beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1):
        self.beta1, self.beta2, self.eps, self.weight_decay = beta1, beta2, eps, weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.step = 0

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float) -> None:
        """One AdamW step, in place on ``params``."""
        self.step += 1
        b1, b2 = self.beta1, self.beta2
        bias1, bias2 = 1.0 - b1**self.step, 1.0 - b2**self.step
        for name, p in params.items():
            g, m, v = grads[name], self.m[name], self.v[name]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            if p.ndim >= 2 and self.weight_decay:
                p *= np.float32(1.0 - lr * self.weight_decay)
            p -= np.float32(lr / bias1) * m / (np.sqrt(v / np.float32(bias2)) + np.float32(self.eps))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to resume, as plain arrays (for np.savez; never pickled)."""
        out = {"step": np.array(self.step, np.int64)}
        out.update({f"m/{k}": a for k, a in self.m.items()})
        out.update({f"v/{k}": a for k, a in self.v.items()})
        return out

    def load_state_arrays(self, arrays) -> None:
        """Inverse of state_arrays. Raises KeyError naming a missing moment."""
        self.step = int(arrays["step"])
        for k in self.m:
            self.m[k] = np.array(arrays[f"m/{k}"], np.float32)
            self.v[k] = np.array(arrays[f"v/{k}"], np.float32)
