"""Against PyTorch (skipped where it is not installed): convolutions, and a small conv
autoencoder trained for 10 Adam steps from the same weights on the same batches."""
import numpy as np
import pytest

import gasca_core as gc
import gasca_core.functional as F
from gasca_core import nn, optim

# (N, C_in, H, W), C_out, (KH, KW), stride, padding, dilation
CONV_CASES = [
    ((2, 3, 11, 9), 4, (3, 3), 1, 1, 1),
    ((1, 2, 16, 13), 5, (5, 5), 2, 2, 1),
    ((3, 4, 10, 12), 2, (3, 2), (2, 3), (0, 1), (2, 1)),
    ((2, 1, 8, 8), 3, (4, 4), 2, 1, 1),
]


def _grads_vs_torch(torch, ours_fn, torch_fn, arrays, dtype, rtol, atol, rng):
    mine = [gc.Tensor(a.astype(dtype), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.astype(dtype), requires_grad=True) for a in arrays]
    y, ty = ours_fn(*mine), torch_fn(*theirs)
    np.testing.assert_allclose(y.data, ty.detach().numpy(), rtol=rtol, atol=atol)
    g = rng.standard_normal(y.shape).astype(dtype)
    y.backward(g)
    ty.backward(torch.tensor(g))
    for i, (m, t) in enumerate(zip(mine, theirs)):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=rtol, atol=atol, err_msg=f"input {i}")


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-10, 1e-10), (np.float32, 1e-4, 1e-4)])
def test_conv2d_matches_torch(case, dtype, rtol, atol, torch, rng):
    shape, co, k, stride, padding, dilation = case
    arrays = [rng.standard_normal(shape), rng.standard_normal((co, shape[1]) + k), rng.standard_normal(co)]
    _grads_vs_torch(torch,
                    lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation),
                    lambda x, w, b: torch.nn.functional.conv2d(x, w, b, stride, padding, dilation),
                    arrays, dtype, rtol, atol, rng)


# (N, C_in, H, W), C_out, (KH, KW), stride, padding, output_padding, dilation
CONV_T_CASES = [
    ((2, 3, 5, 4), 4, (3, 3), 1, 1, 0, 1),
    ((1, 4, 8, 7), 2, (5, 5), 2, 2, 1, 1),
    ((2, 2, 4, 6), 3, (3, 2), (2, 3), (1, 0), (1, 2), (2, 1)),
    ((3, 2, 6, 6), 1, (4, 4), 2, 1, 0, 1),
    # stride <= output_padding < dilation, as PyTorch allows (op < max(stride, dilation))
    ((2, 3, 4, 5), 2, (3, 2), (1, 2), (1, 0), (1, 2), (2, 3)),
    ((1, 2, 5, 4), 3, (2, 3), (2, 1), (0, 1), (3, 0), (4, 1)),
]


@pytest.mark.parametrize("case", CONV_T_CASES)
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-10, 1e-10), (np.float32, 1e-4, 1e-4)])
def test_conv_transpose2d_matches_torch(case, dtype, rtol, atol, torch, rng):
    shape, co, k, stride, padding, output_padding, dilation = case
    arrays = [rng.standard_normal(shape), rng.standard_normal((shape[1], co) + k), rng.standard_normal(co)]
    _grads_vs_torch(
        torch,
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride, padding, output_padding, 1, dilation),
        lambda x, w, b: torch.nn.functional.conv_transpose2d(x, w, b, stride, padding, output_padding, 1,
                                                             dilation),
        arrays, dtype, rtol, atol, rng)


def test_small_ops_match_torch(torch, rng):
    x, y = rng.standard_normal((4, 6)), rng.uniform(size=(4, 6))
    tF = torch.nn.functional
    pairs = [
        (lambda a: F.leaky_relu(a, 0.2), lambda a: tF.leaky_relu(a, 0.2)),
        (lambda a: F.binary_cross_entropy_with_logits(a * 30, y),
         lambda a: tF.binary_cross_entropy_with_logits(a * 30, torch.tensor(y))),
        (lambda a: F.l1_loss(a, y, reduction="sum"), lambda a: tF.l1_loss(a, torch.tensor(y), reduction="sum")),
        (lambda a: F.cross_entropy(a, np.array([0, 5, 2, 3])),
         lambda a: tF.cross_entropy(a, torch.tensor([0, 5, 2, 3]))),
    ]
    for ours, theirs in pairs:
        _grads_vs_torch(torch, ours, theirs, [x], np.float64, 1e-10, 1e-12, rng)


class OurAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 5, stride=2, padding=2), nn.LeakyReLU(0.2),
            nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(4, 1, 5, stride=2, padding=2, output_padding=1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)


def _torch_ae(torch):
    tnn = torch.nn
    return tnn.Sequential(
        tnn.Conv2d(1, 4, 5, stride=2, padding=2), tnn.LeakyReLU(0.2),
        tnn.Conv2d(4, 8, 3, stride=2, padding=1), tnn.LeakyReLU(0.2),
        tnn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1), tnn.LeakyReLU(0.2),
        tnn.ConvTranspose2d(4, 1, 5, stride=2, padding=2, output_padding=1), tnn.Sigmoid())


def test_autoencoder_trains_like_torch_for_10_adam_steps(torch, rng):
    """The issue's end-to-end check: same initial weights, same batches, same loss each step."""
    torch.manual_seed(0)
    theirs = _torch_ae(torch)
    ours = OurAE()
    # Copy torch's initial weights into ours (names differ only by the "net." prefix).
    ours.load_state_dict({f"net.{k}": v.detach().numpy() for k, v in theirs.state_dict().items()})
    opt = optim.Adam(ours.parameters(), lr=1e-2)
    topt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    our_losses, their_losses = [], []
    for _ in range(10):
        x = rng.random((4, 1, 20, 24)).astype(np.float32)     # non-square on purpose
        target = np.ascontiguousarray(0.8 * x[..., ::-1] ** 2)  # a mapping it can learn

        opt.zero_grad()
        loss = F.mse_loss(ours(gc.Tensor(x)), target)
        loss.backward()
        opt.step()
        our_losses.append(loss.item())

        topt.zero_grad()
        tloss = torch.nn.functional.mse_loss(theirs(torch.tensor(x)), torch.tensor(target))
        tloss.backward()
        topt.step()
        their_losses.append(tloss.item())
    np.testing.assert_allclose(our_losses, their_losses, rtol=2e-5)
    assert our_losses[-1] < our_losses[0]  # it learnt something, the comparison is not vacuous
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
