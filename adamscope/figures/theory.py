"""The curves the paper predicts, drawn over the measured distributions (THEORY.md, Section 4).

Independent gradients (Section 4.1): r (and u, when eps is negligible) is close to a Gaussian with
std Gamma1 = sqrt(sum of the squared EMA weights of m). With torch's bias-corrected weights
w_k = (1 - b1) b1^k / (1 - b1^t), k < t:

    Gamma1^2 = (1 - b1) / (1 + b1) * (1 + b1^t) / (1 - b1^t)     (-> (1 - b1) / (1 + b1) as t grows)

(0.229 for b1 = 0.9). The paper's convention scales r by b1 / sqrt(b2): std b1 Gamma1 / sqrt(b2).
Fully time-correlated gradients (Section 4.2): r = sign(g) times 1 (torch) or b1 / sqrt(b2) (paper).
"""

from __future__ import annotations

import math

import numpy as np


def gamma1(beta1: float, step: float = math.inf) -> float:
    """Gamma1 of the bias-corrected EMA weights of m after `step` steps (torch convention)."""
    if beta1 == 0.0:
        return 1.0
    if math.isinf(step):
        return math.sqrt((1.0 - beta1) / (1.0 + beta1))
    bt = beta1**step
    return math.sqrt((1.0 - beta1) / (1.0 + beta1) * (1.0 + bt) / (1.0 - bt))


def scale(beta1: float, beta2: float, convention: str) -> float:
    """The factor r carries in `convention` relative to torch's: 1, or b1 / sqrt(b2) for 'paper'."""
    return beta1 / math.sqrt(beta2) if convention == "paper" else 1.0


def gaussian_std(beta1: float, beta2: float, step: float, convention: str) -> float:
    """Std of the Section 4.1 Gaussian for u and r."""
    return gamma1(beta1, step) * scale(beta1, beta2, convention)


def mode(beta1: float, beta2: float, convention: str) -> float:
    """Position of the positive mode of r for fully time-correlated gradients (Section 4.2)."""
    return scale(beta1, beta2, convention)


def gaussian_pdf(x: np.ndarray, std: float) -> np.ndarray:
    return np.exp(-0.5 * (x / std) ** 2) / (std * math.sqrt(2.0 * math.pi))
