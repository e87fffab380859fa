"""Losses against soft targets: distillation from a teacher's logits and cross-entropy against
target distributions. Searches, the quality student and synthesis all use these."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            t_squared: bool = True) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch (Hinton et al.); without
    ``t_squared`` the KL alone (the form of DF-NAS's official DistributionLoss, which uses T = 1)."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                  reduction="batchmean")
    return kl * temperature**2 if t_squared else kl


def kd_loss_from_log_probs(student_logits: torch.Tensor, target_log_probs: torch.Tensor, temperature: float,
                           t_squared: bool = True) -> torch.Tensor:
    """`kd_loss` against a target distribution given as log-probabilities that already are at the
    temperature (a top-k soft-label cache stores them so): ``KL(p || softmax(s / T))``, times T^2."""
    kl = F.kl_div(F.log_softmax(student_logits / temperature, 1), target_log_probs, reduction="batchmean",
                  log_target=True)
    return kl * temperature**2 if t_squared else kl


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (rows of ``targets`` sum to 1), averaged over the batch."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
