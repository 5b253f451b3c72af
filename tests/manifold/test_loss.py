"""DistancePreservingLoss: eq. 4 (averaged over pairs) on hand-made activations, zero for
isometries, no growth with the batch size, the gradient scope of figure 1 (only layers k-1 and
k), tiny batches."""

import math

import pytest
import torch
from torch import nn

from smallfoot.errors import ConfigError, ShapeError
from smallfoot.manifold import (
    DistancePreservingLoss,
    alpha_schedule,
    distance_mismatch,
    pairwise_distances,
    relative_mismatch,
)
from smallfoot.manifold.method import RegularisedNet
from smallfoot.memory import measure
from smallfoot.models.bottleneck import BottleneckHead, FeatureNet


def direct_eq4(previous, current, lam=0.0, params=()):
    """Eq. 4 written out with Python loops over ordered pairs (n, m), n != m, the distance part
    divided by the number of those pairs (our batch-size-free normalisation)."""
    total, pairs = 0.0, 0
    n = len(previous)
    for i in range(n):
        for j in range(n):
            if i != j:
                d_cur = math.dist(current[i], current[j])
                d_prev = math.dist(previous[i], previous[j])
                total += (d_cur - d_prev) ** 2
                pairs += 1
    return total / pairs + lam * sum(float(p.detach().pow(2).sum()) for p in params)


def test_distance_mismatch_equals_eq4_on_hand_made_activations():
    previous = [[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [1.0, 1.0, 1.0]]
    current = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    got = distance_mismatch(
        torch.tensor(previous, dtype=torch.float64), torch.tensor(current, dtype=torch.float64)
    )
    # d_prev: (0,1)=5, (0,2)=sqrt3, (1,2)=sqrt(4+9+1)=sqrt14; d_cur: 1, 2, sqrt5; both orders
    # count: 6 ordered pairs of distinct samples
    by_hand = 2 * ((1 - 5) ** 2 + (2 - math.sqrt(3)) ** 2 + (math.sqrt(5) - math.sqrt(14)) ** 2) / 6
    assert float(got) == pytest.approx(by_hand, rel=1e-12)
    assert float(got) == pytest.approx(direct_eq4(previous, current), rel=1e-12)


def test_mismatch_does_not_grow_with_the_batch():
    # The same pair repeated: eq. 4's plain sum grows with N^2, the per-pair mean stays put.
    previous = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)  # distance 5
    current = torch.tensor([[0.0], [2.0]], dtype=torch.float64)  # distance 2
    for copies in (1, 4, 32):
        got = distance_mismatch(previous.repeat(copies, 1), current.repeat(copies, 1))
        n = 2 * copies
        # copies^2 * 2 ordered pairs across the two points mismatch by 3; the rest by 0
        assert float(got) == pytest.approx(9.0 * 2 * copies**2 / (n * (n - 1)), rel=1e-12)
    big = distance_mismatch(previous.repeat(64, 1), current.repeat(64, 1))
    assert float(big) < 9.0 * 0.51  # about half the pairs mismatch by 3; the sum would be 73728


def test_pairwise_distances_exact_and_zero_diagonal():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        pairwise_distances(x), torch.tensor([[0.0, 5.0], [5.0, 0.0]]).double()
    )
    with pytest.raises(ShapeError):
        pairwise_distances(torch.zeros(2, 3, 4))


def test_coincident_samples_have_finite_gradients():
    x = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 2, dtype=torch.float64)
    distance_mismatch(y, x).backward()
    assert torch.isfinite(x.grad).all()


def test_zero_for_distance_preserving_map():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    shift = torch.randn(5, dtype=torch.float64)
    assert float(distance_mismatch(x, x @ q + shift)) == pytest.approx(0.0, abs=1e-20)
    # an orthogonal embedding into a wider space preserves distances too
    wide, _ = torch.linalg.qr(torch.randn(8, 5, dtype=torch.float64))
    assert float(distance_mismatch(x, x @ wide.T)) == pytest.approx(0.0, abs=1e-20)


def test_loss_of_two_orthogonal_layers_is_only_the_weight_penalty():
    torch.manual_seed(1)
    layers = [nn.Linear(4, 4, bias=False).double() for _ in range(2)]
    for layer in layers:
        nn.init.orthogonal_(layer.weight)
    z = torch.randn(5, 4, dtype=torch.float64)
    acts = [z, layers[0](z)]
    acts.append(layers[1](acts[1]))
    loss = DistancePreservingLoss(layers, [1.0], lam=0.0)
    assert float(loss(acts).detach()) == pytest.approx(0.0, abs=1e-20)
    penalised = DistancePreservingLoss(layers, [2.0], lam=0.5)
    # ||W||_F^2 of a 4x4 orthogonal matrix is 4, two layers: 2 * 0.5 * (4 + 4)
    assert float(penalised(acts).detach()) == pytest.approx(8.0, rel=1e-12)


def test_weighted_sum_of_terms_matches_direct_evaluation():
    torch.manual_seed(2)
    head = BottleneckHead(6, 3, [8, 4, 2]).double()
    z = torch.randn(5, 6, dtype=torch.float64)
    _, acts = head.forward_activations(z)
    alphas, lam = [0.3, 2.0], 0.01
    loss = DistancePreservingLoss(head.layers, alphas, lam)
    expected = 0.0
    for k, alpha in zip((1, 2), alphas, strict=True):
        params = list(head.layers[k - 1].parameters()) + list(head.layers[k].parameters())
        expected += alpha * direct_eq4(acts[k].tolist(), acts[k + 1].tolist(), lam, params)
    assert float(loss(acts).detach()) == pytest.approx(expected, rel=1e-10)
    terms = loss.terms(acts)
    assert len(terms) == 2


def parameter_grads(module):
    return {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gradient_of_term_k_reaches_only_layers_k_minus_1_and_k(k):
    torch.manual_seed(3)
    features = nn.Linear(10, 12).double()
    head = BottleneckHead(12, 3, [16, 8, 4, 2]).double()
    x = torch.randn(6, 10, dtype=torch.float64)
    _, acts = head.forward_activations(features(x))
    alphas = [1.0 if i == k else 0.0 for i in range(1, 4)]
    DistancePreservingLoss(head.layers, alphas, lam=0.1)(acts).backward()
    for i, layer in enumerate(head.layers):
        for p in layer.parameters():
            if i in (k - 1, k):
                assert p.grad is not None and p.grad.abs().sum() > 0
            else:
                assert p.grad is None or not p.grad.any()
    assert all(p.grad is None for p in features.parameters())
    assert all(p.grad is None for p in head.classifier.parameters())


def test_gradient_of_term_equals_autograd_of_the_local_function():
    """Term k's gradient is that of f(theta_{k-1}, theta_k) = eq. 4 with x^(k-2) held constant."""
    torch.manual_seed(4)
    head = BottleneckHead(5, 2, [8, 4, 2]).double()
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    _, acts = head.forward_activations(z)
    DistancePreservingLoss(head.layers, [0.0, 1.0], lam=0.2)(acts).backward()
    got = [p.grad.clone() for p in head.layers[1:].parameters()]
    assert z.grad is None  # no gradient leaks to the head's input

    head.zero_grad(set_to_none=True)
    held = acts[1].detach()  # x^(0), the input of layer 1
    previous = head.layers[1](held)
    current = head.layers[2](previous)
    params = list(head.layers[1:].parameters())
    reference = distance_mismatch(previous, current) + 0.2 * sum(p.pow(2).sum() for p in params)
    want = torch.autograd.grad(reference, params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_cross_entropy_plus_loss_reaches_everything():
    torch.manual_seed(5)
    features = nn.Linear(10, 12).double()
    head = BottleneckHead(12, 3, [8, 4]).double()
    logits, acts = head.forward_activations(features(torch.randn(5, 10, dtype=torch.float64)))
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1]))
    (loss + DistancePreservingLoss(head.layers, [1.0])(acts)).backward()
    for p in list(features.parameters()) + list(head.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [2, 3, 5])
def test_tiny_batches_work(batch):
    torch.manual_seed(6)
    head = BottleneckHead(6, 3, [8, 4, 2])
    _, acts = head.forward_activations(torch.randn(batch, 6))
    loss = DistancePreservingLoss(head.layers, [0.1, 1.0])(acts)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_batch_of_one_has_an_exact_zero_distance_term():
    head = BottleneckHead(6, 3, [8, 4])
    _, acts = head.forward_activations(torch.randn(1, 6))
    assert float(DistancePreservingLoss(head.layers, [1.0], lam=0.0)(acts).detach()) == 0.0
    with_penalty = DistancePreservingLoss(head.layers, [1.0], lam=0.5)(acts)
    expected = 0.5 * sum(float(p.detach().pow(2).sum()) for p in head.layers.parameters())
    assert float(with_penalty.detach()) == pytest.approx(expected, rel=1e-6)


def test_alpha_schedule_is_smaller_over_the_first_half():
    assert alpha_schedule(4, 1.0, 0.1) == [0.1, 0.1, 1.0, 1.0]
    assert alpha_schedule(3, 2.0, 0.5) == [1.0, 2.0, 2.0]
    assert alpha_schedule(1, 1.0, 0.1) == [1.0]


def test_bad_arguments_raise_clear_errors():
    head = BottleneckHead(6, 3, [8, 4, 2])
    with pytest.raises(ConfigError, match="one alpha per consecutive pair"):
        DistancePreservingLoss(head.layers, [1.0])
    with pytest.raises(ConfigError, match="at least 2 bottleneck layers"):
        DistancePreservingLoss(head.layers[:1], [])
    with pytest.raises(ConfigError, match=">= 0"):
        DistancePreservingLoss(head.layers, [1.0, -1.0])
    loss = DistancePreservingLoss(head.layers, [1.0, 1.0])
    with pytest.raises(ShapeError, match="expected 4 activations"):
        loss([torch.randn(3, 6)])
    with pytest.raises(ShapeError, match="same batch"):
        distance_mismatch(torch.randn(3, 2), torch.randn(4, 2))


def test_distance_terms_do_not_keep_the_pairwise_differences():
    # Explicit (N, N, D) differences kept for the backward cost 64 * 64 * 256 * 4 bytes = 4 MiB
    # for the first term alone; the distance matrices themselves are 64 * 64 * 4 bytes each.
    torch.manual_seed(7)
    net = FeatureNet(nn.Flatten(), BottleneckHead(64, 10, [256, 128]))
    batch = (torch.randn(64, 64), torch.randint(10, (64,)))
    peaks = {}
    for regularised in (True, False):
        loss = DistancePreservingLoss(net.head.layers, [1.0]) if regularised else None
        wrapped = RegularisedNet(net, loss)
        peaks[regularised] = measure(
            wrapped, batch, loss_fn=wrapped.objective(nn.functional.cross_entropy)
        ).peak
    assert 0 < peaks[True] - peaks[False] < 64 * 64 * 256 * 4 / 4


def test_relative_mismatch_is_scale_free():
    # Scaling the inputs by 10 scales every distance by 10 through a bias-free ReLU layer: the
    # absolute mismatch grows 100x, the relative (stress-normalised) one stays the same.
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 3, bias=False, dtype=torch.float64), nn.ReLU())
    layer.requires_grad_(False)
    x = torch.randn(8, 6, dtype=torch.float64)
    small = relative_mismatch(x, layer(x)).detach()
    large = relative_mismatch(10 * x, layer(10 * x)).detach()
    assert float(small) > 0
    assert float(large) == pytest.approx(float(small), rel=1e-12)
    absolute = distance_mismatch(10 * x, layer(10 * x)) / distance_mismatch(x, layer(x))
    assert float(absolute) == pytest.approx(100.0, rel=1e-12)
    # The normaliser is the mean squared input-space distance over the pairs n != m.
    d = pairwise_distances(x)
    expected = distance_mismatch(x, layer(x)) / (d.pow(2).sum() / (8 * 7))
    assert float(small) == pytest.approx(float(expected), rel=1e-12)


def test_relative_loss_is_scale_free_and_zero_for_one_sample():
    torch.manual_seed(0)
    head = BottleneckHead(12, 3, [8, 4, 2])
    loss = DistancePreservingLoss(head.layers, [0.5, 1.0], relative=True)
    z = torch.randn(6, 12)
    # Biases break exact homogeneity, so zero them: the head is then positively homogeneous.
    with torch.no_grad():
        for layer in head.layers:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    m.bias.zero_()
    _, acts = head.forward_activations(z)
    _, scaled = head.forward_activations(10 * z)
    assert float(loss(scaled).detach()) == pytest.approx(float(loss(acts).detach()), rel=1e-5)
    _, one = head.forward_activations(z[:1])
    assert float(loss(one).detach()) == 0.0
