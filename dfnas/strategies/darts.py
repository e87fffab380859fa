"""The DARTS search strategy: bi-level optimization of weights and architecture parameters.

Weights ``w`` follow SGD on the training half; architecture parameters ``a`` follow Adam on the
gradient of the validation loss. First order uses ``dL_val(w, a)/da``. Second order uses the
unrolled weights ``w' = w - xi * dL_train(w, a)/dw`` (with the optimizer's momentum and weight
decay, as in DARTS) and

    dL_val(w', a)/da - xi * d2L_train(w, a)/(da dw) . dL_val(w', a)/dw'

where the Hessian-vector product is a central finite difference of ``dL_train/da`` at
``w +- eps * v`` with ``eps = 0.01 / ||v||``.

The strategy works on any network with ``weight_parameters()`` and ``arch_parameters()`` and a
loss function ``loss_fn(model, batch)``, so it serves every data source (cross-entropy on natural
images, distillation from cached soft labels on synthetic ones).
"""

from __future__ import annotations

import torch


class Architect:
    def __init__(self, model, loss_fn, lr: float = 3e-4, betas=(0.5, 0.999), weight_decay: float = 1e-3,
                 order: int = 1, network_momentum: float = 0.9, network_weight_decay: float = 3e-4):
        if order not in (1, 2):
            raise ValueError("DARTS order is 1 or 2")
        self.model = model
        self.loss_fn = loss_fn
        self.order = order
        self.momentum = network_momentum
        self.weight_decay = network_weight_decay
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def step(self, train_batch, val_batch, xi: float, w_optimizer: torch.optim.Optimizer | None = None) -> float:
        """One architecture step; ``xi`` is the current weight learning rate (second order only)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 1:
            loss = self.loss_fn(self.model, val_batch)
            grads = torch.autograd.grad(loss, self.model.arch_parameters())
        else:
            loss, grads = self.unrolled_gradient(train_batch, val_batch, xi, w_optimizer)
        for p, g in zip(self.model.arch_parameters(), grads):
            p.grad = g.detach().clone()
        self.optimizer.step()
        return float(loss.detach())

    def unrolled_gradient(self, train_batch, val_batch, xi: float, w_optimizer=None):
        """The second-order architecture gradient (and the validation loss at the unrolled weights)."""
        weights = self.model.weight_parameters()
        alphas = self.model.arch_parameters()
        original = [w.detach().clone() for w in weights]
        # Virtual step w' = w - xi * (momentum * buffer + dL_train/dw + wd * w)
        train_loss = self.loss_fn(self.model, train_batch)
        grads = torch.autograd.grad(train_loss, weights, allow_unused=True)
        with torch.no_grad():
            for w, g, w0 in zip(weights, grads, original):
                g = torch.zeros_like(w) if g is None else g
                buf = 0.0
                if w_optimizer is not None and self.momentum:
                    state = w_optimizer.state.get(w, {})
                    if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                        buf = self.momentum * state["momentum_buffer"]
                w.copy_(w0 - xi * (buf + g + self.weight_decay * w0))
        # Gradients of the validation loss at w'
        val_loss = self.loss_fn(self.model, val_batch)
        dalpha_val = torch.autograd.grad(val_loss, alphas + weights, allow_unused=True)
        d_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(dalpha_val[: len(alphas)], alphas)]
        v = [g if g is not None else torch.zeros_like(w) for g, w in zip(dalpha_val[len(alphas):], weights)]
        # Hessian-vector product by central differences around the original w
        eps = 0.01 / torch.sqrt(sum((g * g).sum() for g in v)).clamp(min=1e-12)
        hessian = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, g in zip(weights, original, v):
                    w.copy_(w0 + sign * eps * g)
            loss = self.loss_fn(self.model, train_batch)
            hessian.append(torch.autograd.grad(loss, alphas, allow_unused=True))
        with torch.no_grad():
            for w, w0 in zip(weights, original):
                w.copy_(w0)
        result = []
        for g, hp, hm, a in zip(d_alpha, hessian[0], hessian[1], alphas):
            hp = torch.zeros_like(a) if hp is None else hp
            hm = torch.zeros_like(a) if hm is None else hm
            result.append(g - xi * (hp - hm) / (2 * eps))
        return val_loss, result
