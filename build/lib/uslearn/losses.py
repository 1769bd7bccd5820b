"""The paper's losses as pure functions on tensors, with its equation numbers (docs/METHODOLOGY.md).

Shapes: N = batch, K = clusters / label combinations, C = classes. Every function returns
tensors on the input's device and never calls ``.item()``, so a training step stays free of
host synchronisation; parts returned for logging are detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PRIORS = ("entropy", "dirichlet")


def _check_log_probs(name: str, log_p: Tensor) -> None:
    if log_p.dim() != 2 or log_p.shape[1] < 2:
        raise ValueError(
            f"{name}: expected (N, K) log-probabilities with K >= 2, got {tuple(log_p.shape)}"
        )


def _check_views(log_p_a: Tensor, log_p_b: Tensor) -> tuple[Tensor, Tensor]:
    """Return both views as float32 (or float64) after checking their shapes."""
    _check_log_probs("log_p_a", log_p_a)
    _check_log_probs("log_p_b", log_p_b)
    if log_p_a.shape != log_p_b.shape:
        raise ValueError(f"views differ in shape: {tuple(log_p_a.shape)} vs {tuple(log_p_b.shape)}")
    if log_p_a.dtype in (torch.float16, torch.bfloat16):
        # Cosines near 1 and logs of small cluster sizes need more than 8 mantissa bits.
        log_p_a, log_p_b = log_p_a.float(), log_p_b.float()
    return log_p_a, log_p_b


def log_cluster_sizes(log_p: Tensor) -> Tensor:
    """Return log Z: (K,), the log of the batch cluster-size distribution (Eq. 4's z).

    z_k = Σ_i p_ik / Σ_i Σ_k' p_ik' = (1/N) Σ_i p_ik, since each row of p sums to 1; in
    log-space log z_k = logsumexp_i(log p_ik) − log N. No clamp: a nearly empty cluster keeps a
    finite log z_k and the exact gradient ∂ log z_k / ∂ log p_ik = p_ik / (N z_k), which sums
    to 1 over the batch however small z_k is.

    Args:
        log_p: (N, K) log-probabilities (``log_softmax`` of the cluster logits; finite).
    """
    return torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])  # (K,)


def partition_uncertainty_index(p_a: Tensor, p_b: Tensor) -> Tensor:
    """Return M: (K, K) = P̃ₙᵀ P̂ₙ, cosines between the clusters of two views (Eq. 1-2).

    Args:
        p_a: (N, K) probabilities of view a; p_b: (N, K) of view b.
    """
    # Each column (one cluster's assignment vector over the batch) to unit length (Eq. 1).
    a = F.normalize(p_a, p=2, dim=0)  # (N, K)
    b = F.normalize(p_b, p=2, dim=0)  # (N, K)
    return a.transpose(0, 1) @ b  # (K, K)


def entropy_prior(log_z: Tensor) -> Tensor:
    """Return L_NE = log K + Σ_k z_k log z_k = log K − H(Z) (Eq. 4) from log Z: (K,); 0 at uniform Z."""
    return math.log(log_z.shape[0]) + (log_z.exp() * log_z).sum()


def dirichlet_prior(log_z: Tensor, alpha: float = 1.05) -> Tensor:
    """Return L_SD(α) = −(1/log K) Σ_k (α − 1) log z_k (Eq. 6) from log Z: (K,).

    The negative log of a symmetric Dirichlet(α) density up to its constant, scaled by 1/log K.
    Not 0 at uniform Z (value (α − 1) K); only its gradient, −(α − 1)/(z_k log K) with respect
    to z_k, matters. Taken from log z_k directly (no clamp of z), the gradient with respect to
    cluster k's logits sums to about −(α − 1)/log K however empty the cluster is: the force that
    refills a collapsing cluster never vanishes.
    """
    k = log_z.shape[0]
    return -(alpha - 1.0) / math.log(k) * log_z.sum()


def pica_loss(
    log_p_a: Tensor, log_p_b: Tensor, lam: float, prior: str = "entropy", alpha: float = 1.05
) -> tuple[Tensor, dict[str, Tensor]]:
    """PICA (Sec. 2.2.1) or its Dirichlet variant LSD (Sec. 2.2.2) on two views of a batch.

    Args:
        log_p_a: (N, K) cluster log-probabilities of view ·̃ (``log_softmax`` of the cluster
            head; Z comes from this view, as in the official PICA code).
        log_p_b: (N, K) cluster log-probabilities of view ·̂.
        lam: weight λ of the prior term (paper default 2).
        prior: ``"entropy"`` → L_NE (Eq. 4, PICA) or ``"dirichlet"`` → L_SD(α) (Eq. 6, LSD).
        alpha: Dirichlet concentration α (slightly above 1), only for ``prior="dirichlet"``.

    Returns:
        ``(total, {"ce": L_CE, "prior": L_prior})`` with total = L_CE + λ L_prior (Sec. 2.2.1 / Eq. 7);
        the parts are detached scalars. L_CE has no temperature, so its minimum is
        log(1 + (K − 1)/e) (M = identity), not 0. The prior is computed from log Z in
        log-space (``log_cluster_sizes``), without clamping Z.
    """
    log_p_a, log_p_b = _check_views(log_p_a, log_p_b)
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    m = partition_uncertainty_index(log_p_a.exp(), log_p_b.exp())  # (K, K)
    target = torch.arange(m.shape[0], device=m.device)
    # Row j of M as logits over the K clusters of view b; cluster j should match cluster j (Eq. 3).
    ce = F.cross_entropy(m, target)
    log_z = log_cluster_sizes(log_p_a)  # (K,)
    reg = entropy_prior(log_z) if prior == "entropy" else dirichlet_prior(log_z, alpha)
    total = ce + lam * reg
    return total, {"ce": ce.detach(), "prior": reg.detach()}


def multilabel_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy averaged over classes and samples (Eq. 9, typo fixed).

    L = −(1/(N C)) Σ_i Σ_c [v_ic log p_ic + (1 − v_ic) log(1 − p_ic)], p = sigmoid(logits); the
    paper's ``(1 − log p)`` is read as ``log(1 − p)`` and its missing leading minus sign added; its
    sum over S becomes a mean, so the loss does not depend on the batch size. Computed from logits
    for numerical stability.

    Args:
        logits: (N, C) raw scores of the sigmoid head.
        targets: (N, C) multi-hot labels in {0, 1} (soft targets in [0, 1] work too).

    Returns:
        The scalar loss.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


def fixmatch_loss(logits_weak: Tensor, logits_strong: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Single-label FixMatch unlabelled loss L_u (Eq. 12-13).

    Pseudo-label = argmax of the weak view's softmax (no gradient); an image counts when its
    max probability is ≥ τ; L_u = Σ_i mask_i · CE(strong_i, pseudo_i) / N, averaged over ALL N
    unlabelled images (not only the kept ones), as in the reference implementation.

    Args:
        logits_weak: (N, K) logits of the weakly augmented views (detached here).
        logits_strong: (N, K) logits of the strongly augmented views.
        tau: confidence threshold τ (paper 0.95).

    Returns:
        ``(loss, mask_rate)``: the scalar L_u and the detached fraction of kept images.
    """
    if logits_weak.shape != logits_strong.shape or logits_weak.dim() != 2:
        raise ValueError(
            f"expected two (N, K) logits, got {tuple(logits_weak.shape)} and "
            f"{tuple(logits_strong.shape)}"
        )
    probs = torch.softmax(logits_weak.detach().float(), dim=1)  # (N, K)
    confidence, pseudo = probs.max(dim=1)  # (N,), (N,)
    mask = (confidence >= tau).to(logits_strong.dtype)  # (N,)
    per_image = F.cross_entropy(logits_strong, pseudo, reduction="none")  # (N,)
    return (per_image * mask).mean(), mask.detach().mean()


def fixmatch_one_head_loss(
    logits_weak: Tensor, logits_strong: Tensor, tau: float
) -> tuple[Tensor, Tensor]:
    """FixMatch One-Head unlabelled loss (Sec. 2.3.1): sigmoid pseudo-labels, image-level mask.

    ỹ_ic = 1[p̃_ic ≥ 0.5] with p̃ = sigmoid(weak logits) (no gradient); image i is kept when
    max_c p̃_ic ≥ τ; L_u = Σ_i keep_i Σ_c BCE(strong_ic, ỹ_ic) / (N C), i.e. averaged over all
    unlabelled images × classes. Every class below 0.5 becomes a confident negative: the
    method's known weakness, kept as the paper describes it.

    Args:
        logits_weak: (N, C) sigmoid-head logits of the weak views (detached here).
        logits_strong: (N, C) sigmoid-head logits of the strong views.
        tau: confidence threshold τ.

    Returns:
        ``(loss, mask_rate)``: the scalar loss and the detached fraction of kept images.
    """
    if logits_weak.shape != logits_strong.shape or logits_weak.dim() != 2:
        raise ValueError(
            f"expected two (N, C) logits, got {tuple(logits_weak.shape)} and "
            f"{tuple(logits_strong.shape)}"
        )
    probs = torch.sigmoid(logits_weak.detach().float())  # (N, C)
    pseudo = (probs >= 0.5).to(logits_strong.dtype)  # (N, C)
    keep = (probs.max(dim=1).values >= tau).to(logits_strong.dtype)  # (N,)
    per_entry = F.binary_cross_entropy_with_logits(logits_strong, pseudo, reduction="none")
    return (per_entry * keep[:, None]).mean(), keep.detach().mean()


def fixmatch_two_head_loss(
    combo_logits_lb: Tensor,
    combo_targets_lb: Tensor,
    ml_logits_lb: Tensor,
    ml_targets_lb: Tensor,
    combo_logits_weak: Tensor,
    combo_logits_strong: Tensor,
    tau: float,
    lambda_u: float,
) -> tuple[Tensor, dict[str, Tensor]]:
    """FixMatch Two-Head loss (Sec. 2.3.2): softmax head over label combinations + sigmoid head.

    L = CE(combo_lb, w) + BCE(ml_lb, v) (Eq. 9) + λ_u · L_u(combo_weak, combo_strong) (Eq. 12),
    where w is a labelled image's combination index and v its multi-hot label; predictions come
    from the sigmoid head.

    Args:
        combo_logits_lb: (B, K) combination-head logits of the labelled images.
        combo_targets_lb: (B,) int64 combination indices w (``LabelCombinations.encode``).
        ml_logits_lb: (B, C) sigmoid-head logits of the labelled images.
        ml_targets_lb: (B, C) multi-hot labels v.
        combo_logits_weak: (N, K) combination-head logits of the weak unlabelled views.
        combo_logits_strong: (N, K) combination-head logits of the strong unlabelled views.
        tau: confidence threshold τ.
        lambda_u: weight λ_u of the unlabelled term.

    Returns:
        ``(total, parts)`` with detached parts ``sup_combo``, ``sup_bce``, ``unsup``,
        ``mask_rate``.
    """
    sup_combo = F.cross_entropy(combo_logits_lb, combo_targets_lb.long())
    sup_bce = multilabel_bce(ml_logits_lb, ml_targets_lb)
    unsup, mask_rate = fixmatch_loss(combo_logits_weak, combo_logits_strong, tau)
    total = sup_combo + sup_bce + lambda_u * unsup
    parts = {
        "sup_combo": sup_combo.detach(),
        "sup_bce": sup_bce.detach(),
        "unsup": unsup.detach(),
        "mask_rate": mask_rate,
    }
    return total, parts


def iic_loss(log_p_a: Tensor, log_p_b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """IIC (Ji, Henriques, Vedaldi, ICCV 2019): minus the mutual information of two views' clusters.

    P = (1/N) Σ_i p_a[i] p_b[i]ᵀ, symmetrised to (P + Pᵀ)/2: the joint distribution of the
    cluster z of an image and z' of its other view; P_c, P_c' its marginals. Their Eq. 3:
    I(z, z') = Σ_c Σ_c' P_cc' · log(P_cc' / (P_c · P_c')), and the loss is −I. Since
    I = H(z) − H(z | z'), a high I needs views that agree and clusters that are all used.

    Choices (the reference code differs): the plain objective, i.e. its entropy weight
    ``lamb`` = 1; and every log is computed in log-space from the views' log-probabilities
    (log P_cc' = logsumexp_i(log p_a[i, c] + log p_b[i, c']) − log N), with no floor, where the
    reference overwrites entries below machine epsilon in place (their value and gradient).

    Args:
        log_p_a: (N, K) cluster log-probabilities of view a (``log_softmax``; finite).
        log_p_b: (N, K) cluster log-probabilities of view b.

    Returns:
        ``(−I, {"mi": I, "entropy": H(P_c)})``: the scalar loss, and detached I and the entropy
        of the cluster marginal (log K when every cluster is used equally; 0 when collapsed).
    """
    log_p_a, log_p_b = _check_views(log_p_a, log_p_b)
    n = log_p_a.shape[0]
    pairs = log_p_a[:, :, None] + log_p_b[:, None, :]  # (N, K, K): log p_a[i, c] p_b[i, c']
    log_joint = torch.logsumexp(pairs, dim=0) - math.log(n)  # (K, K)
    # (P + Pᵀ)/2 in log-space.
    log_joint = torch.logaddexp(log_joint, log_joint.transpose(0, 1)) - math.log(2.0)
    log_p_c = torch.logsumexp(log_joint, dim=1, keepdim=True)  # (K, 1)
    log_p_c2 = torch.logsumexp(log_joint, dim=0, keepdim=True)  # (1, K)
    mi = (log_joint.exp() * (log_joint - log_p_c - log_p_c2)).sum()  # Eq. 3
    entropy = -(log_p_c.exp() * log_p_c).sum()
    return -mi, {"mi": mi.detach(), "entropy": entropy.detach()}
