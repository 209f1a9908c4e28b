"""The graph walk: accumulation, freeing, no_grad, detach, error cases, deep and diamond graphs."""
import gc as pygc
import weakref

import numpy as np
import pytest

import gasca_core as gc
import gasca_core.functional as F


def test_gradients_accumulate_across_backward_calls():
    x = gc.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, [2.0, 4.0, 6.0])
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [5.0, 7.0, 9.0])
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [3.0, 3.0, 3.0])


def test_grad_is_a_fresh_array_of_the_tensor_dtype():
    x = gc.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = gc.Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    (x + y).sum().backward()  # Add hands one gradient array to both inputs
    assert isinstance(x.grad, np.ndarray) and x.grad.dtype == np.float32
    assert x.grad is not y.grad and not np.shares_memory(x.grad, y.grad)
    x.grad *= 2  # the user owns it
    np.testing.assert_allclose(y.grad, 1.0)


def test_only_leaves_get_grad_unless_retained():
    x = gc.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    h = x * 2.0
    k = x * 3.0
    k.retain_grad()
    (h + k).sum().backward()
    assert h.grad is None
    np.testing.assert_allclose(k.grad, [1.0, 1.0])
    np.testing.assert_allclose(x.grad, [5.0, 5.0])


def test_diamond_graph_sums_both_paths():
    x = gc.Tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    a = x * x          # path 1
    b = F.exp(x)       # path 2
    c = a * b          # joins
    d = c + a          # a is used twice
    d.sum().backward()
    xv = x.data
    expected = 2 * xv * np.exp(xv) + xv * xv * np.exp(xv) + 2 * xv
    np.testing.assert_allclose(x.grad, expected)


def test_same_tensor_used_twice_in_one_op():
    x = gc.Tensor(np.array([3.0]), requires_grad=True)
    (x * x).backward()
    np.testing.assert_allclose(x.grad, [6.0])


def test_deep_graph_has_no_recursion_limit():
    x = gc.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0001 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 5000] * 2, rtol=1e-9)


def test_graph_is_freed_after_backward():
    x = gc.Tensor(np.random.default_rng(0).standard_normal(1000), requires_grad=True)
    h = F.exp(x)                 # Exp saves its (1000,) output for backward
    saved = weakref.ref(h._ctx)
    loss = (h * 2.0).sum()
    loss.backward()
    assert h._ctx.released and h._ctx.saved == () and h._ctx.inputs == ()
    del h, loss
    pygc.collect()
    assert saved() is None       # nothing else holds the graph
    with pytest.raises(RuntimeError, match="retain_graph"):
        y = (x * 2.0).sum()
        y.backward()
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = gc.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    y = (F.tanh(x) * 2.0).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(x.grad, 2 * first)


def test_no_grad_records_nothing():
    x = gc.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    assert gc.is_grad_enabled()
    with gc.no_grad():
        assert not gc.is_grad_enabled()
        y = x * 2.0
        with gc.enable_grad():
            z = x * 2.0
    assert gc.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()

    @gc.no_grad()
    def double(t):
        return t * 2.0

    assert not double(x).requires_grad


def test_detach_cuts_the_graph_and_shares_data():
    x = gc.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    d = (x * 2.0).detach()
    assert not d.requires_grad and d.is_leaf
    y = (d * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad, d.data)  # d is a constant: dy/dx = d
    x2 = x.detach()
    assert np.shares_memory(x2.data, x.data)


def test_non_scalar_backward_needs_a_grad():
    x = gc.Tensor(np.ones((2, 2)), requires_grad=True)
    y = x * 3.0
    with pytest.raises(RuntimeError, match="scalar"):
        y.backward()
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones(3))
    y.backward(np.full((2, 2), 2.0))
    np.testing.assert_allclose(x.grad, 6.0)


def test_inputs_without_requires_grad_get_no_grad():
    x = gc.Tensor(np.ones(3), requires_grad=True)
    c = gc.Tensor(np.ones(3))
    (x * c).sum().backward()
    assert c.grad is None and x.grad is not None
    r = c * 2.0
    assert not r.requires_grad


def test_requires_grad_toggle_and_errors():
    x = gc.Tensor(np.ones(2))
    assert x.requires_grad_() is x and x.requires_grad
    y = x * 2.0
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad_(False)


def test_dtype_conventions():
    assert gc.Tensor([1, 2, 3]).dtype == np.float32
    assert gc.Tensor(np.arange(3)).dtype == np.float32
    assert gc.Tensor(2.5).dtype == np.float32
    f64 = np.ones(2)
    t = gc.Tensor(f64)
    assert t.dtype == np.float64 and t.data is f64  # float arrays are held, not copied
    assert gc.Tensor([1, 2], dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="float32 or float64"):
        gc.Tensor([1], dtype=np.int32)
    with pytest.raises(TypeError, match="Tensor data"):
        gc.Tensor("abc")
    # A float32 tensor stays float32 when combined with Python numbers.
    assert (gc.Tensor(np.ones(2, np.float32)) * 2.5 + 1).dtype == np.float32


def test_cast_is_differentiable():
    x = gc.Tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    y = x.double()
    assert y.dtype == np.float64
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


def test_tensor_basics():
    x = gc.Tensor(np.arange(6.0).reshape(2, 3))
    assert x.shape == (2, 3) and x.ndim == 2 and x.device == "cpu" and len(x) == 2
    assert x.numpy() is x.data
    assert x.sum().item() == 15.0
    with pytest.raises(ValueError, match="one element"):
        x.item()
    assert x.to("cpu") is x
    assert "Tensor(" in repr(x)
    with pytest.raises(ValueError, match="device"):
        x.to("tpu")


def test_memory_stays_flat_over_training_steps():
    """No graph (and no activation) survives a step: traced memory does not grow."""
    import tracemalloc

    from gasca_core import nn, optim
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
    opt = optim.Adam(model.parameters(), lr=1e-3)
    x = gc.Tensor(rng.standard_normal((128, 64)).astype(np.float32))
    history = []

    def step():
        opt.zero_grad()
        loss = gc.functional.mse_loss(model(x), x)
        loss.backward()
        opt.step()
        history.append(loss)  # keeping the loss must not keep its graph's arrays

    tracemalloc.start()
    try:
        for _ in range(5):
            step()
        pygc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(40):
            step()
        pygc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_step_activations = 128 * 256 * 4 * 2  # what one leaked graph would hold, at least
    assert after - before < per_step_activations, (before, after)
