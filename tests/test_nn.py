"""nn.Module: registration, state_dict round trips and errors, initialisation, modes, containers."""
import math

import numpy as np
import pytest

import gasca_core as gc
import gasca_core.functional as F
from gasca_core import nn


class TinyAE(nn.Module):
    def __init__(self, rng=None):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1, rng=rng), nn.LeakyReLU(0.2))
        self.dec = nn.Sequential(nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1, rng=rng),
                                 nn.Sigmoid())
        self.scale = 2.0  # a plain attribute, not a parameter

    def forward(self, x):
        return self.dec(self.enc(x))


def test_parameters_are_registered_in_order_with_dotted_names():
    m = TinyAE()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["enc.0.weight", "enc.0.bias", "dec.0.weight", "dec.0.bias"]
    assert [p.shape for p in m.parameters()] == [(4, 1, 3, 3), (4,), (4, 1, 3, 3), (1,)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in m.parameters())
    assert m.num_parameters() == 36 + 4 + 36 + 1
    assert [type(c).__name__ for c in m.children()] == ["Sequential", "Sequential"]
    assert len(list(m.modules())) == 7
    assert m.scale == 2.0 and "scale" not in dict(m.named_parameters())


def test_shared_parameter_is_listed_once():
    lin = nn.Linear(3, 3)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(m.parameters())) == 2


def test_forward_and_backward_reach_every_parameter(rng):
    m = TinyAE(rng=np.random.default_rng(0))
    x = gc.Tensor(rng.random((2, 1, 8, 6)).astype(np.float32))
    y = m(x)
    assert y.shape == (2, 1, 8, 6)
    F.mse_loss(y, x).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_state_dict_round_trip_gives_identical_outputs(rng):
    a, b = TinyAE(rng=np.random.default_rng(1)), TinyAE(rng=np.random.default_rng(2))
    x = gc.Tensor(rng.random((1, 1, 6, 6)).astype(np.float32))
    assert not np.allclose(a(x).data, b(x).data)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    b.load_state_dict(state)
    np.testing.assert_array_equal(a(x).data, b(x).data)
    # state_dict holds copies: changing the module later does not change it
    a.enc[0].weight.data[...] = 0
    assert np.any(state["enc.0.weight"] != 0)


def test_load_state_dict_errors_name_the_key():
    m = TinyAE()
    state = m.state_dict()
    before = m.enc[0].weight.data.copy()
    missing = dict(state)
    del missing["dec.0.bias"]
    with pytest.raises(KeyError, match="dec.0.bias"):
        m.load_state_dict(missing)
    extra = dict(state, **{"head.weight": np.zeros(3)})
    with pytest.raises(KeyError, match="head.weight"):
        m.load_state_dict(extra)
    wrong = dict(state)
    wrong["enc.0.weight"] = np.zeros((4, 1, 5, 5), np.float32)
    wrong["enc.0.bias"] = np.full(4, 7.0, np.float32)
    with pytest.raises(ValueError, match=r"enc.0.weight.*\(4, 1, 5, 5\)"):
        m.load_state_dict(wrong)
    assert np.all(m.enc[0].bias.data != 7.0)  # nothing was half-loaded
    with pytest.raises(ValueError, match="dtype"):
        m.load_state_dict(dict(state, **{"enc.0.bias": np.zeros(4, dtype=np.int64)}))
    result = m.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["dec.0.bias"] and result.unexpected_keys == []
    np.testing.assert_array_equal(m.enc[0].weight.data, before)


def test_load_state_dict_converts_dtype_in_place():
    m = nn.Linear(2, 3)
    w = m.weight
    m.load_state_dict({"weight": np.ones((3, 2)), "bias": np.zeros(3)})
    assert m.weight is w and m.weight.dtype == np.float32
    np.testing.assert_array_equal(m.weight.data, 1.0)


@pytest.mark.parametrize("make,fan_in", [
    (lambda rng: nn.Conv2d(6, 16, (5, 3), rng=rng), 6 * 5 * 3),
    (lambda rng: nn.ConvTranspose2d(16, 6, (5, 3), rng=rng), 6 * 5 * 3),  # fan_in from weight.shape[1]
    (lambda rng: nn.Linear(200, 50, rng=rng), 200),
])
def test_default_init_matches_pytorch_bounds(make, fan_in):
    m = make(np.random.default_rng(0))
    bound = 1 / math.sqrt(fan_in)
    for p in (m.weight, m.bias):
        assert np.abs(p.data).max() <= bound
        assert np.abs(p.data).max() > 0.9 * bound  # fills the interval...
    w = m.weight.data
    np.testing.assert_allclose(w.std(), bound / math.sqrt(3), rtol=0.1)  # ...uniformly
    assert abs(w.mean()) < 0.1 * bound


def test_init_matches_torch_bounds(torch):
    for ours, theirs in [(nn.Conv2d(3, 8, 4), torch.nn.Conv2d(3, 8, 4)),
                         (nn.ConvTranspose2d(8, 3, 4), torch.nn.ConvTranspose2d(8, 3, 4)),
                         (nn.Linear(30, 5), torch.nn.Linear(30, 5))]:
        assert ours.weight.shape == tuple(theirs.weight.shape)
        fan_in = gc.init.calculate_fan_in_and_fan_out(ours.weight.shape)
        assert fan_in == torch.nn.init._calculate_fan_in_and_fan_out(theirs.weight)
        bound = 1 / math.sqrt(fan_in[0])
        # Both fill (-bound, bound): their largest weights lie just inside it.
        for w in (ours.weight.data, theirs.weight.detach().numpy()):
            assert 0.9 * bound < np.abs(w).max() <= bound
        for b in (ours.bias.data, theirs.bias.detach().numpy()):
            assert np.abs(b).max() <= bound


def test_seeding_makes_init_deterministic():
    gc.manual_seed(3)
    a = nn.Conv2d(2, 3, 3)
    gc.manual_seed(3)
    b = nn.Conv2d(2, 3, 3)
    c = nn.Conv2d(2, 3, 3)
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    assert not np.array_equal(b.weight.data, c.weight.data)
    d = nn.Conv2d(2, 3, 3, rng=np.random.default_rng(5))
    e = nn.Conv2d(2, 3, 3, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(d.weight.data, e.weight.data)
    assert nn.Linear(2, 2, dtype=np.float64).weight.dtype == np.float64


def test_train_eval_and_freezing():
    m = TinyAE()
    assert m.training and all(mod.training for mod in m.modules())
    assert m.eval() is m
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    m.enc.requires_grad_(False)
    x = gc.Tensor(np.random.default_rng(0).random((1, 1, 4, 4)).astype(np.float32))
    m(x).sum().backward()
    assert m.enc[0].weight.grad is None and m.dec[0].weight.grad is not None
    assert m.num_parameters(trainable_only=True) == 37


def test_module_to_dtype_keeps_parameter_objects():
    m = TinyAE()
    params = list(m.parameters())
    m.double()
    assert [id(p) for p in m.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 and p.data.flags.c_contiguous for p in m.parameters())
    with pytest.raises(ValueError, match="device"):
        m.to("gpu")


def test_sequential_container_operations():
    a, b, c = nn.ReLU(), nn.Tanh(), nn.Sigmoid()
    s = nn.Sequential(a, b)
    assert len(s) == 2 and s[0] is a and s[-1] is b and list(s) == [a, b]
    s.append(c)
    s.insert(1, nn.Identity())
    assert [type(m).__name__ for m in s] == ["ReLU", "Identity", "Tanh", "Sigmoid"]
    assert [n for n, _ in s.named_children()] == ["0", "1", "2", "3"]
    sub = s[1:3]
    assert isinstance(sub, nn.Sequential) and len(sub) == 2 and sub[0] is s[1]
    del s[0]
    assert len(s) == 3 and s[0] is not a
    s[0] = a
    assert s[0] is a and [n for n, _ in s.named_children()] == ["0", "1", "2"]
    with pytest.raises(IndexError):
        s[5]
    x = gc.Tensor(np.array([-1.0, 2.0]))
    np.testing.assert_allclose(s(x).data, 1 / (1 + np.exp(-np.tanh(np.maximum(x.data, 0)))))
    lst = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    assert len(list(lst.parameters())) == 4


def test_sequential_insert_renames_state_dict_keys():
    s = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 2))
    s.insert(1, nn.Linear(3, 3))
    assert list(s.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert s.state_dict()["1.weight"].shape == (3, 3)


def test_module_attribute_errors():
    class Broken(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match="super"):
        Broken()
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        m.weight = np.zeros((2, 2))
    with pytest.raises(AttributeError, match="nothing"):
        m.nothing


def test_layer_argument_validation():
    with pytest.raises(ValueError, match="kernel_size"):
        nn.Conv2d(1, 2, 0)
    with pytest.raises(ValueError, match="in_channels"):
        nn.Conv2d(0, 2, 3)
    with pytest.raises(ValueError, match="output_padding"):
        nn.ConvTranspose2d(2, 1, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"output_padding \(2, 1\) must be smaller than "
                                         r"max\(stride, dilation\) = \(2, 3\)"):
        nn.ConvTranspose2d(2, 1, 3, stride=1, output_padding=(2, 1), dilation=(2, 3))
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(2, 2, 3, groups=2)
    with pytest.raises(ValueError, match="dtype"):
        nn.Linear(2, 2, dtype=np.int32)


def test_conv_transpose_output_padding_below_dilation_is_accepted(rng):
    """PyTorch's rule, output_padding < max(stride, dilation): with stride 1 and dilation 2,
    output_padding 1 adds a row and a column (the kernels compute it)."""
    m = nn.ConvTranspose2d(2, 3, 3, stride=1, output_padding=1, dilation=2, rng=rng)
    y = m(gc.Tensor(rng.standard_normal((1, 2, 4, 5)).astype(np.float32)))
    assert y.shape == (1, 3, 4 - 1 + 2 * 2 + 1 + 1, 5 - 1 + 2 * 2 + 1 + 1)
    assert "output_padding=(1, 1)" in repr(m) and "dilation=(2, 2)" in repr(m)


def test_repr_lists_layers():
    text = repr(TinyAE())
    assert "Conv2d(1, 4, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))" in text
    assert "output_padding=(1, 1)" in text and "LeakyReLU(negative_slope=0.2)" in text


def test_modules_deepcopy_and_pickle(rng):
    import copy
    import pickle
    m = TinyAE()
    x = gc.Tensor(rng.random((1, 1, 4, 4)).astype(np.float32))
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        np.testing.assert_array_equal(clone(x).data, m(x).data)
        clone.enc[0].weight.data[...] = 0  # an independent copy
        assert np.any(m.enc[0].weight.data != 0)


def test_cuda_requests_fail_clearly_without_cupy():
    pytest.importorskip("numpy")
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: this checks the message on machines without it")
    except Exception:
        pass
    with pytest.raises(RuntimeError, match="CuPy"):
        nn.Linear(2, 2).to("cuda")
    with pytest.raises(RuntimeError, match="CuPy"):
        gc.Tensor([1.0]).to("cuda")


def test_importing_gasca_core_does_not_import_cupy():
    import subprocess
    import sys
    code = "import sys, gasca_core; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")
