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
    multilabel_bce,
    pica_loss,
)


def make_probs(n: int, k: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    """Return (n, k) float64 softmax probabilities from seeded random logits."""
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(n, k, generator=gen, dtype=torch.float64), dim=1)


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
    total, parts = pica_loss(p_a, p_b, lam, prior=prior, alpha=alpha)
    ref_total, ref_ce, ref_reg = reference_pica(p_a.tolist(), p_b.tolist(), lam, prior, alpha)
    assert total.item() == pytest.approx(ref_total, rel=1e-10)
    assert parts["ce"].item() == pytest.approx(ref_ce, rel=1e-10)
    assert parts["prior"].item() == pytest.approx(ref_reg, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k", [2, 5, 10])
def test_pica_ce_minimum_is_log_one_plus_k_minus_one_over_e_on_perfect_agreement(k):
    # Each image fully in one cluster, the same in both views, every cluster used: M = identity.
    p = torch.eye(k, dtype=torch.float64).repeat(3, 1)
    total, parts = pica_loss(p, p.clone(), lam=2.0, prior="entropy")
    assert parts["ce"].item() == pytest.approx(math.log(1 + (k - 1) / math.e))
    assert parts["prior"].item() == pytest.approx(0.0, abs=1e-12)
    assert total.item() == pytest.approx(math.log(1 + (k - 1) / math.e))


def test_pica_uniform_predictions_give_ce_log_k_and_zero_entropy_prior():
    k = 6
    p = torch.full((8, k), 1.0 / k, dtype=torch.float64)
    _, parts = pica_loss(p, p, lam=1.0, prior="entropy")
    # All cosines are 1, so every row of softmax(M) is uniform.
    assert parts["ce"].item() == pytest.approx(math.log(k))
    assert parts["prior"].item() == pytest.approx(0.0, abs=1e-12)
    _, lsd = pica_loss(p, p, lam=1.0, prior="dirichlet", alpha=1.2)
    # L_SD at uniform Z: −(α − 1)/log K · K · log(1/K) = (α − 1) K, a constant, not 0.
    assert lsd["prior"].item() == pytest.approx(0.2 * k)


def test_pica_collapsed_clusters_give_max_entropy_penalty_and_finite_values():
    k = 4
    p = torch.zeros(10, k, dtype=torch.float64)
    p[:, 0] = 1.0  # every image in cluster 0: z = (1, 0, 0, 0)
    p.requires_grad_(True)
    total, parts = pica_loss(p, p.detach().clone(), lam=2.0, prior="entropy")
    assert parts["prior"].item() == pytest.approx(math.log(k))
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
def test_priors_have_finite_value_and_gradient_at_zero_cluster_size(prior):
    z = torch.tensor([0.7, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    value = entropy_prior(z) if prior == "entropy" else dirichlet_prior(z, alpha=1.05)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_pica_loss_is_invariant_to_permuting_clusters_in_both_views():
    p_a, p_b = make_probs(20, 5, seed=1), make_probs(20, 5, seed=2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    for prior in ("entropy", "dirichlet"):
        base, _ = pica_loss(p_a, p_b, 2.0, prior=prior)
        permuted, _ = pica_loss(p_a[:, perm], p_b[:, perm], 2.0, prior=prior)
        assert permuted.item() == pytest.approx(base.item(), rel=1e-12)


def test_pica_loss_is_invariant_to_permuting_images_in_both_views():
    p_a, p_b = make_probs(20, 5, seed=3), make_probs(20, 5, seed=4)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    base, _ = pica_loss(p_a, p_b, 2.0)
    permuted, _ = pica_loss(p_a[perm], p_b[perm], 2.0)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("prior", ["entropy", "dirichlet"])
def test_pica_loss_passes_gradcheck_through_softmax(prior):
    logits_a = make_logits(6, 3, seed=5, scale=1.0).requires_grad_(True)
    logits_b = make_logits(6, 3, seed=6, scale=1.0).requires_grad_(True)

    def fn(a, b):
        return pica_loss(torch.softmax(a, 1), torch.softmax(b, 1), 2.0, prior=prior, alpha=1.3)[0]

    assert torch.autograd.gradcheck(fn, (logits_a, logits_b))


def test_dirichlet_gradient_pushes_mass_toward_small_clusters():
    z = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64, requires_grad=True)
    dirichlet_prior(z, alpha=1.05).backward()
    # Descent direction −grad grows as the cluster shrinks: the smallest cluster gains most.
    descent = -z.grad
    assert descent[2] > descent[1] > descent[0] > 0
    # Through the normalisation Z = colsum / total as well: moving an image's mass from the
    # largest to the smallest cluster lowers L_SD.
    p = torch.tensor([[0.9, 0.05, 0.05]] * 6 + [[0.1, 0.8, 0.1]] * 3, dtype=torch.float64)
    p.requires_grad_(True)
    z_p = p.sum(0) / p.sum()
    loss = dirichlet_prior(z_p, alpha=1.05)
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
        loss, _ = pica_loss(logits_a.softmax(1), logits_b.softmax(1), 2.0, prior=prior, alpha=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_pica_loss_rejects_bad_shapes_and_prior():
    p = make_probs(4, 3, seed=0)
    with pytest.raises(ValueError):
        pica_loss(p, make_probs(5, 3, seed=0), 1.0)
    with pytest.raises(ValueError):
        pica_loss(p, p, 1.0, prior="uniform")
    with pytest.raises(ValueError):
        pica_loss(p[:, :1], p[:, :1], 1.0)


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


def test_pica_loss_on_bfloat16_probabilities_is_computed_in_float32():
    p_a, p_b = make_probs(16, 4, seed=8), make_probs(16, 4, seed=9)
    low, _ = pica_loss(p_a.bfloat16(), p_b.bfloat16(), 2.0, prior="dirichlet")
    assert low.dtype == torch.float32
    reference, _ = pica_loss(p_a.bfloat16().double(), p_b.bfloat16().double(), 2.0, "dirichlet")
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
    loss, parts = iic_loss(p_a, p_b)
    ref_loss, ref_mi, ref_entropy = reference_iic(p_a.tolist(), p_b.tolist())
    assert loss.item() == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    assert parts["mi"].item() == pytest.approx(ref_mi, rel=1e-10, abs=1e-12)
    assert parts["entropy"].item() == pytest.approx(ref_entropy, rel=1e-10)


@pytest.mark.parametrize("k", [2, 5])
def test_iic_is_log_k_on_agreeing_balanced_views_and_zero_when_collapsed(k):
    agree = torch.eye(k, dtype=torch.float64).repeat(3, 1)  # every cluster used, views agree
    loss, parts = iic_loss(agree, agree.clone())
    assert loss.item() == pytest.approx(-math.log(k)) and parts["entropy"].item() == pytest.approx(
        math.log(k)
    )
    collapsed = torch.zeros(6, k, dtype=torch.float64)
    collapsed[:, 0] = 1.0
    collapsed.requires_grad_(True)
    loss, parts = iic_loss(collapsed, collapsed.detach().clone())
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-12) and torch.isfinite(collapsed.grad).all()
