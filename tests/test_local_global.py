"""adaptive_avg_pool2d and the local + global layer (nn.LocalGlobal): values against plain
loops and PyTorch, gradients against float64 finite differences, and clear errors."""
import numpy as np
import pytest

from gasca_core import functional as F
from gasca_core import nn
from gasca_core.tensor import Tensor
from gasca_core.testing import gradcheck


def _ref_pool(x, oh, ow):
    """Plain loops over PyTorch's adaptive windows: [floor(i H / o), ceil((i + 1) H / o))."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        r0, r1 = (i * h) // oh, -(-((i + 1) * h) // oh)
        for j in range(ow):
            c0, c1 = (j * w) // ow, -(-((j + 1) * w) // ow)
            for a in range(n):
                for b in range(c):
                    out[a, b, i, j] = x[a, b, r0:r1, c0:c1].sum() / ((r1 - r0) * (c1 - c0))
    return out


SHAPES = [((2, 3, 8, 8), (4, 4)),      # divisible: disjoint blocks
          ((1, 2, 7, 5), (3, 2)),      # overlapping windows on both axes
          ((2, 1, 4, 6), (1, 1)),      # global average pooling
          ((1, 2, 3, 3), (5, 4)),      # more cells than pixels: windows repeat pixels
          ((1, 1, 6, 9), (6, 9))]      # identity


@pytest.mark.parametrize("shape,out", SHAPES, ids=[f"{s}->{o}" for s, o in SHAPES])
def test_adaptive_avg_pool2d_matches_loops(shape, out):
    x = np.random.default_rng(0).standard_normal(shape)
    got = F.adaptive_avg_pool2d(Tensor(x), out).numpy()
    np.testing.assert_allclose(got, _ref_pool(x, *out), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,out", SHAPES, ids=[f"{s}->{o}" for s, o in SHAPES])
def test_adaptive_avg_pool2d_gradient_matches_finite_differences(shape, out):
    x = Tensor(np.random.default_rng(1).standard_normal(shape), requires_grad=True)
    assert gradcheck(lambda t: F.adaptive_avg_pool2d(t, out), [x])


@pytest.mark.parametrize("shape,out", SHAPES, ids=[f"{s}->{o}" for s, o in SHAPES])
def test_adaptive_avg_pool2d_matches_torch(shape, out, torch):
    x = np.random.default_rng(2).standard_normal(shape)
    g = np.random.default_rng(3).standard_normal((shape[0], shape[1]) + out)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, out)
    ty.backward(torch.tensor(g))
    ours = Tensor(x, requires_grad=True)
    y = F.adaptive_avg_pool2d(ours, out)
    y.backward(Tensor(g))
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_adaptive_avg_pool2d_keeps_an_axis_given_none():
    x = np.random.default_rng(4).standard_normal((1, 2, 6, 4))
    got = F.adaptive_avg_pool2d(Tensor(x), (None, 2)).numpy()
    np.testing.assert_allclose(got, _ref_pool(x, 6, 2), rtol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, (2, 0), (2,), 2.5, "4", True])
def test_adaptive_avg_pool2d_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match="output_size"):
        F.adaptive_avg_pool2d(Tensor(np.zeros((1, 1, 4, 4))), bad)
    with pytest.raises(ValueError, match="output_size"):
        nn.AdaptiveAvgPool2d(bad)


def test_adaptive_avg_pool2d_rejects_other_ranks():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        F.adaptive_avg_pool2d(Tensor(np.zeros((2, 4, 4))), 2)


# ----------------------------------------------------------------------------- LocalGlobal
def _layer(transposed, grid, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    if transposed:
        local = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1, dtype=np.float64, rng=rng)
    else:
        local = nn.Conv2d(3, 2, 3, stride=2, padding=1, dtype=np.float64, rng=rng)
    layer = nn.LocalGlobal(local, 3, 2, grid=grid)
    layer.global_weight.data[...] = rng.standard_normal(layer.global_weight.shape)
    return layer


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
@pytest.mark.parametrize("grid", [1, 2, 3])
def test_local_global_is_the_convolution_plus_a_broadcast_global_term(transposed, grid):
    layer = _layer(transposed, grid)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6))
    y = layer(Tensor(x)).numpy()
    local = layer.local(Tensor(x)).numpy()
    pooled = _ref_pool(x, grid, grid).reshape(2, -1)
    g = pooled @ layer.global_weight.data.T             # (N, C_out)
    np.testing.assert_allclose(y, local + g[:, :, None, None], rtol=1e-12, atol=1e-12)
    # the global term is the same at every output pixel and differs between images
    diff = y - local
    assert np.allclose(diff, diff[:, :, :1, :1])
    assert not np.allclose(diff[0], diff[1])


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "convT"])
def test_local_global_gradients_match_finite_differences(transposed):
    layer = _layer(transposed, grid=2, rng_seed=6)
    x = Tensor(np.random.default_rng(7).standard_normal((2, 3, 5, 5)), requires_grad=True)
    params = [layer.local.weight, layer.local.bias, layer.global_weight]

    def fn(xx, w, b, gw):
        return layer(xx)

    assert gradcheck(fn, [x] + params)


def test_local_global_starts_as_the_plain_convolution_and_learns_its_global_path():
    rng = np.random.default_rng(8)
    conv = nn.Conv2d(2, 4, 3, padding=1, dtype=np.float64, rng=rng)
    layer = nn.LocalGlobal(conv, 2, 4, grid=2)
    assert np.all(layer.global_weight.data == 0)
    x = Tensor(rng.standard_normal((3, 2, 4, 4)))
    np.testing.assert_array_equal(layer(x).numpy(), conv(x).numpy())
    layer(x).sum().backward()
    assert np.abs(np.asarray(layer.global_weight.grad)).max() > 0
    names = dict(layer.named_parameters())
    assert set(names) == {"local.weight", "local.bias", "global_weight"}
    assert layer.global_weight.shape == (4, 2 * 2 * 2)


def test_local_global_rejects_mismatched_channels_and_non_modules():
    conv = nn.Conv2d(2, 4, 3)
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        nn.LocalGlobal(conv, 2, 4)(Tensor(np.zeros((1, 3, 5, 5), np.float32)))
    with pytest.raises(ValueError, match="local layer gave"):
        nn.LocalGlobal(conv, 2, 5)(Tensor(np.zeros((1, 2, 5, 5), np.float32)))
    with pytest.raises(TypeError, match="Module"):
        nn.LocalGlobal(lambda t: t, 2, 4)
    with pytest.raises(ValueError, match="grid"):
        nn.LocalGlobal(conv, 2, 4, grid=0)


# ----------------------------------------------------------------------------- in the model
def test_local_global_levels_wrap_those_levels_and_start_as_the_plain_model():
    from gasca_core.models import GascaConfig, build_full
    plain_cfg = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 3])
    lg_cfg = GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 3],
                         local_global_levels=[2], local_global_grid=2)
    assert GascaConfig.from_dict(lg_cfg.to_dict()).local_global_levels == [2]
    plain, _ = build_full(plain_cfg, seed=3)
    lg, _ = build_full(lg_cfg, seed=3)
    levels = list(lg.levels)
    assert not isinstance(levels[0].encoder[0], nn.LocalGlobal)
    enc, dec = levels[1].encoder[0], levels[1].decoder[0]
    assert isinstance(enc, nn.LocalGlobal) and isinstance(dec, nn.LocalGlobal)
    assert enc.global_weight.shape == (6, 4 * 4) and dec.global_weight.shape == (4, 6 * 4)
    extra = sum(p.data.size for p in lg.parameters()) - sum(p.data.size for p in plain.parameters())
    assert extra == 6 * 16 + 4 * 24
    # the same initial convolutions (same streams), and the global paths start at zero
    x = Tensor(np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32))
    np.testing.assert_array_equal(lg(x).numpy(), plain(x).numpy())
    for bad in ([3], [1, 1]):
        with pytest.raises(ValueError, match="local_global_levels"):
            GascaConfig(image_size=16, channels=[4, 6], kernel_sizes=[3, 3], local_global_levels=bad)
    with pytest.raises(ValueError, match="local_global_grid"):
        GascaConfig(local_global_grid=0)
