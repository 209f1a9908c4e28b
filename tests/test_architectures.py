"""Nearest upsampling (F.interpolate, nn.Upsample) and the decoders built on it, even kernel
sizes, and the architectures the tools know by name.

Upsampling is held to finite differences in float64 and, where PyTorch is installed, to
torch.nn.functional.interpolate (values and gradients).  Each decoder must restore the map
size of its level exactly, and the 'resize' decoder must turn a constant code into a
constant image (no grid stamped by the decoder itself, the property it exists for).
"""
import numpy as np
import pytest

import gasca_core.functional as F
from gasca_core import nn
from gasca_core.models import ARCHITECTURES, GascaConfig, architecture, build_full
from gasca_core.tensor import Tensor
from gasca_core.testing import gradcheck


@pytest.mark.parametrize("kwargs", [dict(scale_factor=2), dict(scale_factor=(2, 3)),
                                    dict(size=(8, 15)), dict(scale_factor=1)])
def test_interpolate_nearest_matches_torch(kwargs, torch, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    g = None
    ours = Tensor(x, requires_grad=True)
    y = F.interpolate(ours, **kwargs)
    g = rng.standard_normal(y.shape)
    y.backward(Tensor(g))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.interpolate(tx, mode="nearest", **kwargs)
    ty.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.data, ty.detach().numpy())
    np.testing.assert_allclose(ours.grad.data, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_interpolate_gradient_matches_finite_differences(rng):
    x = Tensor(rng.standard_normal((2, 2, 3, 4)), requires_grad=True)
    w = rng.standard_normal((2, 2, 6, 12))
    gradcheck(lambda t: (F.interpolate(t, scale_factor=(2, 3)) * Tensor(w)).sum(), [x])


def test_upsample_module_matches_the_function_and_has_no_parameters(rng):
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    up = nn.Upsample(scale_factor=2)
    assert list(up.parameters()) == []
    np.testing.assert_array_equal(up(Tensor(x)).data, np.repeat(np.repeat(x, 2, 2), 2, 3))
    assert repr(up) == "Upsample(scale_factor=2, mode='nearest')"


@pytest.mark.parametrize("call, match", [
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), "mode 'bilinear'"),
    (lambda x: F.interpolate(x, scale_factor=1.5), "scale_factor"),
    (lambda x: F.interpolate(x, scale_factor=0), "scale_factor"),
    (lambda x: F.interpolate(x, size=(7, 8)), "multiple"),
    (lambda x: F.interpolate(x), "exactly one"),
    (lambda x: F.interpolate(x, size=8, scale_factor=2), "exactly one"),
    (lambda x: F.interpolate(x, scale_factor=2, align_corners=True), "align_corners"),
    (lambda x: F.interpolate(Tensor(np.zeros((4, 4))), scale_factor=2), r"\(N, C, H, W\)"),
    (lambda x: nn.Upsample(scale_factor=2, mode="bicubic"), "bicubic"),
])
def test_interpolate_refuses_what_it_does_not_implement(call, match):
    with pytest.raises(ValueError, match=match):
        call(Tensor(np.zeros((1, 1, 4, 4), np.float32)))


@pytest.mark.parametrize("kernel_sizes, decoder", [([5, 5, 3], "transposed"), ([4, 4, 4], "transposed"),
                                                   ([6, 4, 2], "transposed"), ([5, 5, 3], "resize"),
                                                   ([3, 3, 3], "resize")])
def test_every_level_halves_and_restores_the_map(kernel_sizes, decoder):
    cfg = GascaConfig(kernel_sizes=kernel_sizes, decoder=decoder, channels=[4, 6, 8])
    g, d = build_full(cfg, seed=0)
    x = Tensor(np.random.default_rng(0).random((2, 1, 64, 64), dtype=np.float32))
    for level in (1, 2, 3):
        assert g.encode(x, depth=level).shape == (2,) + cfg.code_shape(level)
    assert g(x).shape == x.shape
    assert d(x).shape == (2, 1)


def test_even_kernels_get_padding_k_minus_s_over_2_and_no_output_padding():
    cfg = GascaConfig(kernel_sizes=[4, 4, 6])
    assert cfg.paddings == [1, 1, 2]
    assert [cfg.output_padding(k) for k in (1, 2, 3)] == [0, 0, 0]
    assert [GascaConfig().output_padding(k) for k in (1, 2, 3)] == [1, 1, 1]


def test_resize_decoder_turns_a_constant_code_into_a_constant_image():
    """Away from the border, a transposed convolution of stride 2 stamps its kernel's
    per-phase sums onto a constant code (a checkerboard); upsample-then-convolve cannot."""
    for decoder, flat in (("resize", True), ("transposed", False)):
        cfg = GascaConfig(kernel_sizes=[5, 5, 3], decoder=decoder, channels=[4, 6, 8],
                          output_activation="identity", hidden_activation="identity")
        g, _ = build_full(cfg, seed=1)
        code = Tensor(np.ones((1,) + cfg.code_shape(3), np.float32))
        inner = g.decode(code).data[0, 0, 16:48, 16:48]
        assert (np.ptp(inner) < 1e-5 * max(1.0, np.abs(inner).max())) == flat, decoder


def test_resize_decoder_needs_odd_kernels_and_unknown_decoders_are_named():
    with pytest.raises(ValueError, match="odd kernel sizes"):
        GascaConfig(kernel_sizes=[4, 4, 4], decoder="resize")
    with pytest.raises(ValueError, match="unknown decoder 'bilinear'"):
        GascaConfig(decoder="bilinear")
    with pytest.raises(ValueError, match="halve the map and restore"):
        GascaConfig(kernel_sizes=[5, 5, 3], paddings=[1, 2, 1])


def test_named_architectures_and_gasca_64_unchanged():
    assert GascaConfig().to_dict() == architecture("gasca-64").to_dict()
    g64 = architecture("gasca-64")
    assert (g64.channels, g64.kernel_sizes, g64.decoder) == ([32, 64, 128], [5, 5, 3], "transposed")
    for name in ARCHITECTURES:
        assert architecture(name).name == name
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        architecture("nope")


def test_old_checkpoint_configs_without_a_decoder_read_as_transposed(tmp_path):
    from gasca_core.training.checkpoint import load_checkpoint, save_checkpoint
    cfg = GascaConfig().to_dict()
    del cfg["decoder"]
    path = str(tmp_path / "old.npz")
    save_checkpoint(path, {"model_config": cfg}, {"g": {}})
    meta, _ = load_checkpoint(path)
    assert GascaConfig.from_dict(meta["model_config"]).decoder == "transposed"
