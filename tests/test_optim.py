"""Optimizers: textbook formulas over several steps, exact resume, PyTorch's trajectories."""
import copy

import numpy as np
import pytest

import gasca_core as gc
from gasca_core import nn, optim


def _grads(rng, shape, steps):
    return [rng.standard_normal(shape) for _ in range(steps)]


def _run(opt_cls, kwargs, p0, grads, dtype=np.float64):
    p = nn.Parameter(p0.astype(dtype))
    opt = opt_cls([p], **kwargs)
    for g in grads:
        p.grad = g.astype(dtype)
        opt.step()
    return p.data


def sgd_textbook(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf = p.copy(), None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_textbook(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.3),
             dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01), dict(lr=0.1, weight_decay=0.1)]


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_matches_the_textbook(kwargs, rng):
    p0, grads = rng.standard_normal((3, 5)), _grads(rng, (3, 5), 6)
    np.testing.assert_allclose(_run(optim.SGD, kwargs, p0, grads), sgd_textbook(p0, grads, **kwargs),
                               rtol=1e-12, atol=1e-12)


ADAM_CASES = [dict(lr=0.01), dict(lr=0.1, betas=(0.5, 0.9), eps=1e-6), dict(lr=0.01, weight_decay=0.1)]


@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_matches_the_textbook(kwargs, rng):
    p0, grads = rng.standard_normal(17), _grads(rng, 17, 6)
    np.testing.assert_allclose(_run(optim.Adam, kwargs, p0, grads), adam_textbook(p0, grads, **kwargs),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(lr=0.01), dict(lr=0.05, weight_decay=0.5)])
def test_adamw_matches_the_textbook(kwargs, rng):
    p0, grads = rng.standard_normal(17), _grads(rng, 17, 6)
    expected = adam_textbook(p0, grads, decoupled=True, **{"weight_decay": 1e-2, **kwargs})
    np.testing.assert_allclose(_run(optim.AdamW, kwargs, p0, grads), expected, rtol=1e-12, atol=1e-12)


def test_float32_parameters_stay_float32(rng):
    p0, grads = rng.standard_normal(9), _grads(rng, 9, 3)
    out = _run(optim.Adam, dict(lr=0.01), p0, grads, dtype=np.float32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, adam_textbook(p0, grads, lr=0.01), rtol=1e-5, atol=1e-6)


def test_parameters_without_grad_are_skipped_and_lr_can_change(rng):
    a, b = nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))
    opt = optim.SGD([a, b], lr=0.5)
    a.grad = np.ones(3)
    opt.step()
    np.testing.assert_allclose(a.data, 0.5)
    np.testing.assert_allclose(b.data, 1.0)
    opt.param_groups[0]["lr"] = 0.25
    opt.step()
    np.testing.assert_allclose(a.data, 0.25)
    opt.zero_grad()
    assert a.grad is None


def test_param_groups_have_their_own_hyperparameters():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.1}], lr=1.0)
    a.grad, b.grad = np.ones(2), np.ones(2)
    opt.step()
    np.testing.assert_allclose(a.data, 0.0)
    np.testing.assert_allclose(b.data, 0.9)
    with pytest.raises(ValueError, match="more than one"):
        opt.add_param_group({"params": [a]})


def _model(seed):
    return nn.Sequential(nn.Linear(4, 8, dtype=np.float64, rng=np.random.default_rng(seed)), nn.Tanh(),
                         nn.Linear(8, 1, dtype=np.float64, rng=np.random.default_rng(seed + 1)))


def _train(model, opt, batches):
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = gc.functional.mse_loss(model(gc.Tensor(x)), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.AdamW(ps, lr=0.01),
    lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
])
def test_state_dict_resume_gives_identical_trajectories(make_opt, rng):
    batches = [(rng.standard_normal((5, 4)), rng.standard_normal((5, 1))) for _ in range(8)]
    # Uninterrupted run.
    m1 = _model(0)
    o1 = make_opt(m1.parameters())
    losses = _train(m1, o1, batches)
    # Interrupted after 3 steps: save, rebuild everything fresh, load, continue.
    m2 = _model(0)
    o2 = make_opt(m2.parameters())
    first = _train(m2, o2, batches[:3])
    saved_model, saved_opt = copy.deepcopy(m2.state_dict()), copy.deepcopy(o2.state_dict())
    m3 = _model(7)
    o3 = make_opt(m3.parameters())
    m3.load_state_dict(saved_model)
    o3.load_state_dict(saved_opt)
    rest = _train(m3, o3, batches[3:])
    assert first + rest == losses  # bit-identical
    for p, q in zip(m1.parameters(), m3.parameters()):
        np.testing.assert_array_equal(p.data, q.data)


def test_state_dict_contents_and_load_errors():
    p = nn.Parameter(np.ones(3))
    opt = optim.Adam([p], lr=0.1)
    p.grad = np.ones(3)
    opt.step()
    opt.step()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 2 and sd["param_groups"][0]["params"] == [0]
    assert sd["param_groups"][0]["lr"] == 0.1
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state[p]["exp_avg"])
    other = optim.Adam([nn.Parameter(np.ones(4))])
    with pytest.raises(ValueError, match="shape"):
        other.load_state_dict(sd)
    two = optim.Adam([nn.Parameter(np.ones(3)), nn.Parameter(np.ones(3))])
    with pytest.raises(ValueError, match="parameters"):
        two.load_state_dict(sd)
    fresh = optim.Adam([nn.Parameter(np.ones(3))], lr=0.5)
    fresh.load_state_dict(sd)
    assert fresh.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-1), "lr"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "momentum"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)), "betas"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), "betas"),
    (lambda ps: optim.Adam(ps, eps=-1e-8), "eps"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.1), "weight_decay"),
    (lambda ps: optim.Adam([], lr=0.1), "empty"),
])
def test_bad_hyperparameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make([nn.Parameter(np.ones(2))])


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
])
def test_matches_torch_optim(name, kwargs, torch, rng):
    p0, grads = rng.standard_normal((4, 3)), _grads(rng, (4, 3), 8)
    tp = torch.tensor(p0, requires_grad=True)
    topt = getattr(torch.optim, name)([tp], **kwargs)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    ours = _run(getattr(optim, name), kwargs, p0, grads)
    np.testing.assert_allclose(ours, tp.detach().numpy(), rtol=1e-12, atol=1e-13)
