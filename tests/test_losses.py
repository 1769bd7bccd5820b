"""Losses against naive float64 re-computations of the paper's equations, and their behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from uslearn.losses import (
    dirichlet_prior,
    entropy_prior,
    fixmatch_loss,
    fixmatch_one_head_loss,
    fixmatch_two_head_loss,
    iic_loss,
    log_cluster_sizes,
    multilabel_bce,
    pica_loss,
)


def make_probs(n: int, k: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    """Return (n, k) float64 softmax probabilities from seeded random logits."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(n, k, generator=gen, dtype=torch.float64), dim=1)


def one_hot_log_probs(assignments: list[int], k: int, sharpness: float = 60.0) -> torch.Tensor:
    """Return float64 log-probabilities of images (almost) fully in their assigned clusters.

    log_softmax of logits ``sharpness`` × one-hot: p = 1 − (K − 1)e^−60 ≈ 1 − 1e−26, finite logs
    (the losses take log_softmax outputs, never log 0).
    """
    logits = torch.zeros(len(assignments), k, dtype=torch.float64)
    logits[torch.arange(len(assignments)), torch.tensor(assignments)] = sharpness
    return torch.log_softmax(logits, dim=1)


def make_logits(n: int, k: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, k, generator=gen, dtype=torch.float64)


def reference_pica(p_a, p_b, lam, prior, alpha):
    """PICA / LSD written as loops from Eq. 1-4, 6 (float64 python scalars)."""
    n, k = len(p_a), len(p_a[0])
    norm_a = [math.sqrt(sum(p_a[i][j] ** 2 for i in range(n))) for j in range(k)]
    norm_b = [math.sqrt(sum(p_b[i][j] ** 2 for i in range(n))) for j in range(k)]
    cos = [
        [
            sum(p_a[i][j] * p_b[i][jj] for i in range(n)) / (norm_a[j] * norm_b[jj])
            for jj in range(k)
        ]
        for j in range(k)
    ]
    ce = 0.0
    for j in range(k):
        denom = sum(math.exp(cos[j][jj]) for jj in range(k))
        ce += -math.log(math.exp(cos[j][j]) / denom) / k
    col = [sum(p_a[i][j] for i in range(n)) for j in range(k)]
    z = [c / sum(col) for c in col]
    if prior == "entropy":
        reg = math.log(k) + sum(zj * math.log(zj) for zj in z)
    else:
        reg = -sum((alpha - 1) * math.log(zj) for zj in z) / math.log(k)
    return ce + lam * reg, ce, reg


@pytest.mark.parametrize("n, k", [(5, 2), (16, 3), (32, 10)])
@pytest.mark.parametrize(
    "prior, alpha", [("entropy", 1.05), ("dirichlet", 1.05), ("dirichlet", 3.0)]
)
@pytest.mark.parametrize("lam", [0.5, 2.0])
def test_pica_loss_matches_reference(n, k, prior, alpha, lam):
    p_a, p_b = make_probs(n, k, seed=n + k), make_probs(n, k, seed=7 * n + k)
    total, parts = pica_loss(p_a.log(), p_b.log(), lam, prior=prior, alpha=alpha)
    ref_total, ref_ce, ref_reg = reference_pica(p_a.tolist(), p_b.tolist(), lam, prior, alpha)
    assert total.item() == pytest.approx(ref_total, rel=1e-10)
    assert parts["ce"].item() == pytest.approx(ref_ce, rel=1e-10)
    assert parts["prior"].item() == pytest.approx(ref_reg, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_pica_ce_minimum_is_log_one_plus_k_minus_one_over_e_on_perfect_agreement(k):
    # Each image fully in one cluster, the same in both views, every cluster used: M = identity.
    log_p = one_hot_log_probs(list(range(k)) * 3, k)
    total, parts = pica_loss(log_p, log_p.clone(), lam=2.0, prior="entropy")
    assert parts["ce"].item() == pytest.approx(math.log(1 + (k - 1) / math.e))
    assert parts["prior"].item() == pytest.approx(0.0, abs=1e-12)
    assert total.item() == pytest.approx(math.log(1 + (k - 1) / math.e))


def test_pica_uniform_predictions_give_ce_log_k_and_zero_entropy_prior():
    k = 6
    log_p = torch.full((8, k), -math.log(k), dtype=torch.float64)
    _, parts = pica_loss(log_p, log_p, lam=1.0, prior="entropy")
    # All cosines are 1, so every row of softmax(M) is uniform.
    assert parts["ce"].item() == pytest.approx(math.log(k))
    assert parts["prior"].item() == pytest.approx(0.0, abs=1e-12)
    _, lsd = pica_loss(log_p, log_p, lam=1.0, prior="dirichlet", alpha=1.2)
    # L_SD at uniform Z: −(α − 1)/log K · K · log(1/K) = (α − 1) K, a constant, not 0.
    assert lsd["prior"].item() == pytest.approx(0.2 * k)


def test_pica_collapsed_clusters_give_max_entropy_penalty_and_finite_values():
    k = 4
    log_p = one_hot_log_probs([0] * 10, k).requires_grad_(True)  # z ≈ (1, 0, 0, 0)
    total, parts = pica_loss(log_p, log_p.detach().clone(), lam=2.0, prior="entropy")
    assert parts["prior"].item() == pytest.approx(math.log(k))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(log_p.grad).all()


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
def test_priors_have_finite_value_and_gradient_at_a_vanishing_cluster(prior):
    log_z = torch.tensor([0.7, 0.3, 1e-300], dtype=torch.float64).log().requires_grad_(True)
    value = entropy_prior(log_z) if prior == "entropy" else dirichlet_prior(log_z, alpha=1.05)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(log_z.grad).all()


def analytic_prior_gradient(logits: torch.Tensor, prior: str, alpha: float) -> torch.Tensor:
    """Return ∂L/∂logits of L_NE (Eq. 4) or L_SD (Eq. 6) with Z the column means of softmax.

    With p = softmax(x) row-wise and z_k = (1/N) Σ_i p_ik: ∂z_k/∂x_ij = p_ik (δ_jk − p_ij) / N,
    ∂L_SD/∂z_k = −(α − 1) / (z_k log K) and ∂L_NE/∂z_k = log z_k + 1; the chain rule gives
    ∂L/∂x_ij = (p_ij / N) [g_j − Σ_k p_ik g_k] with g_k = ∂L/∂z_k (float64 throughout).
    """
    n, k = logits.shape
    p = torch.softmax(logits, dim=1)
    z = p.mean(dim=0)
    # ∂L/∂z_k of Eq. 6 (L_SD) or of Eq. 4 (L_NE).
    g = -(alpha - 1.0) / (z * math.log(k)) if prior == "dirichlet" else torch.log(z) + 1.0
    return p / n * (g[None, :] - (p * g[None, :]).sum(dim=1, keepdim=True))


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
@pytest.mark.parametrize("gap", [10.0, 25.0, 40.0])
def test_a_nearly_empty_cluster_gets_the_analytic_gradient(prior, gap):
    # Cluster 3 trails every image's best cluster by `gap` logits: z_3 ≈ e^-gap (4.5e-5, 1.4e-11,
    # 4.2e-18), far below any floor a clamp would put on z.
    logits = make_logits(16, 4, seed=11, scale=1.0)
    logits[:, 3] = logits[:, :3].max(dim=1).values - gap
    logits.requires_grad_(True)
    log_z = log_cluster_sizes(torch.log_softmax(logits, dim=1))
    loss = entropy_prior(log_z) if prior == "entropy" else dirichlet_prior(log_z, alpha=1.05)
    (grad,) = torch.autograd.grad(loss, logits)
    expected = analytic_prior_gradient(logits.detach(), prior, alpha=1.05)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-300)
    if prior == "dirichlet":
        # The restoring force on the empty cluster does not fade: its logits' gradient sums
        # to −(α − 1)/log K (times 1 − z_3) whatever its size.
        restoring = grad[:, 3].sum().item()
        assert restoring == pytest.approx(-0.05 / math.log(4), rel=1e-3)


def test_log_cluster_sizes_are_the_log_of_the_column_means():
    p = make_probs(9, 5, seed=12)
    torch.testing.assert_close(log_cluster_sizes(p.log()).exp(), p.mean(dim=0), rtol=1e-12, atol=0)
    assert log_cluster_sizes(p.log()).exp().sum().item() == pytest.approx(1.0, rel=1e-12)


def test_pica_loss_is_invariant_to_permuting_clusters_in_both_views():
    log_a, log_b = make_probs(20, 5, seed=1).log(), make_probs(20, 5, seed=2).log()
    perm = torch.tensor([3, 0, 4, 1, 2])
    for prior in ("entropy", "dirichlet"):
        base, _ = pica_loss(log_a, log_b, 2.0, prior=prior)
        permuted, _ = pica_loss(log_a[:, perm], log_b[:, perm], 2.0, prior=prior)
        assert permuted.item() == pytest.approx(base.item(), rel=1e-12)


def test_pica_loss_is_invariant_to_permuting_images_in_both_views():
    log_a, log_b = make_probs(20, 5, seed=3).log(), make_probs(20, 5, seed=4).log()
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    base, _ = pica_loss(log_a, log_b, 2.0)
    permuted, _ = pica_loss(log_a[perm], log_b[perm], 2.0)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
def test_pica_loss_passes_gradcheck_through_log_softmax(prior):
    logits_a = make_logits(6, 3, seed=5, scale=1.0).requires_grad_(True)
    logits_b = make_logits(6, 3, seed=6, scale=1.0).requires_grad_(True)

    def fn(a, b):
        log_a, log_b = torch.log_softmax(a, 1), torch.log_softmax(b, 1)
        return pica_loss(log_a, log_b, 2.0, prior=prior, alpha=1.3)[0]

    assert torch.autograd.gradcheck(fn, (logits_a, logits_b))


def test_dirichlet_gradient_pushes_mass_toward_small_clusters():
    z = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64, requires_grad=True)
    dirichlet_prior(z.log(), alpha=1.05).backward()
    # Descent direction −grad grows as the cluster shrinks: the smallest cluster gains most.
    descent = -z.grad
    assert descent[2] > descent[1] > descent[0] > 0
    # Through Z = column means as well: moving an image's mass from the largest to the
    # smallest cluster lowers L_SD.
    p = torch.tensor([[0.9, 0.05, 0.05]] * 6 + [[0.1, 0.8, 0.1]] * 3, dtype=torch.float64)
    p.requires_grad_(True)
    loss = dirichlet_prior(log_cluster_sizes(p.log()), alpha=1.05)
    (grad,) = torch.autograd.grad(loss, p)
    assert (grad[:, 2] < grad[:, 0]).all()


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
def test_a_few_gradient_steps_lower_pica_loss(prior):
    torch.manual_seed(0)
    logits_a = torch.randn(32, 4, requires_grad=True)
    logits_b = (logits_a.detach() + 0.5 * torch.randn(32, 4)).requires_grad_(True)
    opt = torch.optim.SGD([logits_a, logits_b], lr=0.5)
    losses = []
    for _ in range(20):
        loss, _ = pica_loss(
            logits_a.log_softmax(1), logits_b.log_softmax(1), 2.0, prior=prior, alpha=2.0
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pica_loss_rejects_bad_shapes_and_prior():
    log_p = make_probs(4, 3, seed=0).log()
    with pytest.raises(ValueError):
        pica_loss(log_p, make_probs(5, 3, seed=0).log(), 1.0)
    with pytest.raises(ValueError):
        pica_loss(log_p, log_p, 1.0, prior="uniform")
    with pytest.raises(ValueError):
        pica_loss(log_p[:, :1], log_p[:, :1], 1.0)


def reference_bce(logits, targets):
    n, c = len(logits), len(logits[0])
    total = 0.0
    for i in range(n):
        for j in range(c):
            p = 1 / (1 + math.exp(-logits[i][j]))
            v = targets[i][j]
            total -= v * math.log(p) + (1 - v) * math.log(1 - p)
    return total / (n * c)


def test_multilabel_bce_matches_reference_and_is_stable_for_large_logits():
    logits = make_logits(9, 7, seed=1)
    targets = (make_logits(9, 7, seed=2) > 0).to(torch.int8)
    assert multilabel_bce(logits, targets).item() == pytest.approx(
        reference_bce(logits.tolist(), targets.tolist()), rel=1e-10
    )
    huge = torch.tensor([[200.0, -200.0]])
    assert multilabel_bce(huge, torch.tensor([[0, 1]])).item() == pytest.approx(200.0)


def reference_fixmatch(weak, strong, tau):
    total, kept = 0.0, 0
    for w, s in zip(weak, strong):
        pw = [math.exp(x) / sum(math.exp(y) for y in w) for x in w]
        if max(pw) >= tau:
            kept += 1
            target = pw.index(max(pw))
            total -= math.log(math.exp(s[target]) / sum(math.exp(y) for y in s))
    return total / len(weak), kept / len(weak)


@pytest.mark.parametrize("tau", [0.0, 0.6, 0.95])
def test_fixmatch_loss_matches_reference_and_averages_over_all_images(tau):
    weak, strong = make_logits(24, 5, seed=3), make_logits(24, 5, seed=4)
    loss, mask_rate = fixmatch_loss(weak, strong, tau)
    ref_loss, ref_rate = reference_fixmatch(weak.tolist(), strong.tolist(), tau)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert mask_rate.item() == pytest.approx(ref_rate)


def test_fixmatch_losses_are_zero_with_finite_gradient_when_no_image_is_confident():
    weak = torch.zeros(8, 4, dtype=torch.float64)  # uniform softmax 0.25, sigmoid 0.5
    strong = make_logits(8, 4, seed=0).requires_grad_(True)
    for fn in (fixmatch_loss, fixmatch_one_head_loss):
        loss, mask_rate = fn(weak, strong, 0.95)
        loss.backward()
        assert loss.item() == 0.0 and mask_rate.item() == 0.0
        assert torch.isfinite(strong.grad).all() and (strong.grad == 0).all()
        strong.grad = None


def test_fixmatch_weak_view_gets_no_gradient():
    weak = make_logits(8, 4, seed=1).requires_grad_(True)
    strong = make_logits(8, 4, seed=2).requires_grad_(True)
    for fn in (fixmatch_loss, fixmatch_one_head_loss):
        loss, _ = fn(weak, strong, 0.0)
        loss.backward()
        assert weak.grad is None and strong.grad.abs().sum() > 0


def reference_one_head(weak, strong, tau):
    n, c = len(weak), len(weak[0])
    total, kept = 0.0, 0
    for w, s in zip(weak, strong):
        pw = [1 / (1 + math.exp(-x)) for x in w]
        if max(pw) < tau:
            continue
        kept += 1
        for j in range(c):
            y = 1.0 if pw[j] >= 0.5 else 0.0
            ps = 1 / (1 + math.exp(-s[j]))
            total -= y * math.log(ps) + (1 - y) * math.log(1 - ps)
    return total / (n * c), kept / n


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_fixmatch_one_head_loss_matches_reference(tau):
    weak, strong = make_logits(20, 7, seed=5), make_logits(20, 7, seed=6)
    loss, mask_rate = fixmatch_one_head_loss(weak, strong, tau)
    ref_loss, ref_rate = reference_one_head(weak.tolist(), strong.tolist(), tau)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert mask_rate.item() == pytest.approx(ref_rate)


def test_fixmatch_two_head_loss_combines_its_parts():
    combo_lb, ml_lb = make_logits(6, 4, seed=1), make_logits(6, 7, seed=2)
    combo_y = torch.tensor([0, 1, 2, 3, 0, 1])
    ml_y = (make_logits(6, 7, seed=3) > 0).float()
    weak, strong = make_logits(12, 4, seed=4), make_logits(12, 4, seed=5)
    total, parts = fixmatch_two_head_loss(combo_lb, combo_y, ml_lb, ml_y, weak, strong, 0.9, 3.0)
    sup_combo = torch.nn.functional.cross_entropy(combo_lb, combo_y)
    unsup, rate = reference_fixmatch(weak.tolist(), strong.tolist(), 0.9)
    assert parts["sup_combo"].item() == pytest.approx(sup_combo.item())
    assert parts["sup_bce"].item() == pytest.approx(reference_bce(ml_lb.tolist(), ml_y.tolist()))
    assert parts["unsup"].item() == pytest.approx(unsup)
    assert parts["mask_rate"].item() == pytest.approx(rate)
    expected = sup_combo.item() + parts["sup_bce"].item() + 3.0 * unsup
    assert total.item() == pytest.approx(expected)


def test_a_few_gradient_steps_lower_supervised_and_fixmatch_losses():
    torch.manual_seed(1)
    logits = torch.randn(16, 7, requires_grad=True)
    targets = (torch.rand(16, 7) > 0.5).float()
    weak = torch.randn(16, 7) * 4
    opt = torch.optim.SGD([logits], lr=1.0)
    for fn in (
        lambda: multilabel_bce(logits, targets),
        lambda: fixmatch_loss(weak, logits, 0.5)[0],
        lambda: fixmatch_one_head_loss(weak, logits, 0.5)[0],
    ):
        first = fn().item()
        for _ in range(10):
            opt.zero_grad()
            fn().backward()
            opt.step()
        assert fn().item() < first


def test_pica_loss_on_bfloat16_log_probabilities_is_computed_in_float32():
    log_a, log_b = make_probs(16, 4, seed=8).log(), make_probs(16, 4, seed=9).log()
    low, _ = pica_loss(log_a.bfloat16(), log_b.bfloat16(), 2.0, prior="dirichlet")
    assert low.dtype == torch.float32
    reference, _ = pica_loss(log_a.bfloat16().double(), log_b.bfloat16().double(), 2.0, "dirichlet")
    assert low.item() == pytest.approx(reference.item(), rel=1e-5)


def reference_iic(p_a, p_b):
    """IIC written as loops from Ji et al.'s Eq. 3 (float64 python scalars): (−I, I, H(z))."""
    n, k = len(p_a), len(p_a[0])
    joint = [[sum(p_a[i][c] * p_b[i][d] for i in range(n)) / n for d in range(k)] for c in range(k)]
    sym = [[(joint[c][d] + joint[d][c]) / 2 for d in range(k)] for c in range(k)]
    total = sum(map(sum, sym))
    sym = [[value / total for value in row] for row in sym]
    rows = [sum(sym[c]) for c in range(k)]
    cols = [sum(sym[c][d] for c in range(k)) for d in range(k)]
    mi = sum(
        sym[c][d] * math.log(sym[c][d] / (rows[c] * cols[d]))
        for c in range(k)
        for d in range(k)
        if sym[c][d] > 0
    )
    entropy = -sum(p * math.log(p) for p in rows if p > 0)
    return -mi, mi, entropy


@pytest.mark.parametrize("n, k", [(5, 2), (16, 3), (32, 10)])
@pytest.mark.parametrize("sharpness", [0.5, 2.0, 8.0])
def test_iic_loss_matches_reference(n, k, sharpness):
    p_a, p_b = make_probs(n, k, n + k, sharpness), make_probs(n, k, 3 * n + k, sharpness)
    loss, parts = iic_loss(p_a.log(), p_b.log())
    ref_loss, ref_mi, ref_entropy = reference_iic(p_a.tolist(), p_b.tolist())
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert parts["mi"].item() == pytest.approx(ref_mi, rel=1e-10, abs=1e-12)
    assert parts["entropy"].item() == pytest.approx(ref_entropy, rel=1e-10)


@pytest.mark.parametrize("k", [2, 5])
def test_iic_is_log_k_on_agreeing_balanced_views_and_zero_when_collapsed(k):
    agree = one_hot_log_probs(list(range(k)) * 3, k)  # every cluster used, views agree
    loss, parts = iic_loss(agree, agree.clone())
    assert loss.item() == pytest.approx(-math.log(k)) and parts["entropy"].item() == pytest.approx(
        math.log(k)
    )
    collapsed = one_hot_log_probs([0] * 6, k).requires_grad_(True)
    loss, parts = iic_loss(collapsed, collapsed.detach().clone())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and torch.isfinite(collapsed.grad).all()


def plain_iic(p_a: torch.Tensor, p_b: torch.Tensor) -> torch.Tensor:
    """Return −I(z, z') from probabilities with plain float64 logs (no floor; no zero entry)."""
    joint = p_a.transpose(0, 1) @ p_b / p_a.shape[0]
    joint = (joint + joint.transpose(0, 1)) / 2
    rows, cols = joint.sum(dim=1, keepdim=True), joint.sum(dim=0, keepdim=True)
    return -(joint * (joint.log() - rows.log() - cols.log())).sum()


def test_iic_gradient_on_a_nearly_empty_cluster_equals_the_unfloored_expression():
    # Joint entries of cluster 3 are ~1e-26, below any floor (the reference IIC code's is
    # machine epsilon): their gradient must still be the exact one.
    logits_a = make_logits(12, 4, seed=13, scale=1.0)
    logits_a[:, 3] -= 30.0
    logits_b = logits_a + 0.3 * make_logits(12, 4, seed=14, scale=1.0)
    logits_a.requires_grad_(True)
    loss, _ = iic_loss(torch.log_softmax(logits_a, 1), torch.log_softmax(logits_b, 1))
    (grad,) = torch.autograd.grad(loss, logits_a)
    expected_loss = plain_iic(torch.softmax(logits_a, 1), torch.softmax(logits_b, 1))
    (expected,) = torch.autograd.grad(expected_loss, logits_a)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-10)
    torch.testing.assert_close(grad, expected, rtol=1e-7, atol=1e-300)
