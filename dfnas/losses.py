"""Losses against soft targets: distillation from a teacher's logits and cross-entropy against
target distributions. Searches, the quality student and synthesis all use these."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch (Hinton et al.)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, 1), F.softmax(teacher_logits / temperature, 1),
                    reduction="batchmean") * temperature**2


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against target distributions (rows of ``targets`` sum to 1), averaged over the batch."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
