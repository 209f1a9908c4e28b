"""Fused optimizer kernels (every version) against the textbook formulas, over several
steps, and against torch.optim where PyTorch is installed."""
import numpy as np
import pytest

from gasca_core import _C, backend
from gasca_core.testing import call_version, version_id, kernel_covers

# Every version of the family (backend.kernel_versions: built-in and registered); a test of
# one kernel skips a registered version that covers only the other.
OPTIM_VERSIONS = backend.kernel_versions("optim")
STEPS = 6
SIZES = [1, 7, 1000, 40_001]  # the last spans several parallel chunks and a ragged tail


def _state(rng, n, dtype):
    p = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(STEPS)]
    return p, grads


def _tol(dtype):
    return dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- SGD
def textbook_sgd(p, grads, lr, momentum, dampening, wd, nesterov):
    p = p.astype(np.float64).copy()
    buf = None
    for g in grads:
        g = g.astype(np.float64) + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p -= lr * g
    return p


SGD_CASES = [  # lr, momentum, dampening, weight_decay, nesterov
    (0.1, 0.0, 0.0, 0.0, False),
    (0.05, 0.9, 0.0, 0.0, False),
    (0.05, 0.9, 0.1, 1e-2, False),
    (0.01, 0.8, 0.0, 1e-3, True),
    (0.2, 0.0, 0.0, 0.1, False),
]


@pytest.mark.parametrize("version", OPTIM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", SGD_CASES, ids=[str(c) for c in SGD_CASES])
def test_sgd_matches_textbook(case, n, dtype, version):
    if not kernel_covers("sgd_step", version):
        pytest.skip(f"{version!r} is registered for adam_step only")
    lr, mom, damp, wd, nest = case
    rng = np.random.default_rng(n)
    p0, grads = _state(rng, n, dtype)
    p = p0.copy()
    buf = np.zeros_like(p) if mom else None
    for i, g in enumerate(grads):
        call_version("sgd_step", version, p, g, buf, lr, mom, damp, wd, nest, i == 0)
    np.testing.assert_allclose(p, textbook_sgd(p0, grads, lr, mom, damp, wd, nest), **_tol(dtype))


# ----------------------------------------------------------------------------- Adam / AdamW
def textbook_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    p = p.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p *= 1 - lr * wd
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1 ** t)
        vhat = v / (1 - b2 ** t)
        p -= lr * mhat / (np.sqrt(vhat) + eps)
    return p, m, v


ADAM_CASES = [  # lr, beta1, beta2, eps, weight_decay, decoupled
    (1e-3, 0.9, 0.999, 1e-8, 0.0, False),
    (1e-2, 0.5, 0.99, 1e-6, 1e-2, False),   # Adam with L2
    (2e-3, 0.9, 0.999, 1e-8, 1e-2, True),   # AdamW
    (1e-1, 0.0, 0.9, 1e-3, 0.0, True),
]


@pytest.mark.parametrize("version", OPTIM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("case", ADAM_CASES, ids=[str(c) for c in ADAM_CASES])
def test_adam_matches_textbook(case, n, dtype, version):
    if not kernel_covers("adam_step", version):
        pytest.skip(f"{version!r} is registered for sgd_step only")
    lr, b1, b2, eps, wd, dec = case
    rng = np.random.default_rng(n + 1)
    p0, grads = _state(rng, n, dtype)
    p = p0.copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        call_version("adam_step", version, p, g, m, v, t, lr, b1, b2, eps, wd, dec)
    ep, em, ev = textbook_adam(p0, grads, lr, b1, b2, eps, wd, dec)
    tol = _tol(dtype)
    np.testing.assert_allclose(m, em, **tol)
    np.testing.assert_allclose(v, ev, **tol)
    np.testing.assert_allclose(p, ep, **tol)


def test_fast_version_equals_reference_in_float64(rng):
    """Same arithmetic, same order: the parallel/SIMD version agrees to rounding (FMA
    contraction).  The built-in versions only: a registered one need not share the order."""
    n = 50_000
    p0 = rng.standard_normal(n)
    g = rng.standard_normal(n)
    res = []
    for version in [v for v in OPTIM_VERSIONS if isinstance(v, int)]:
        p, m, v = p0.copy(), np.zeros(n), np.zeros(n)
        for t in range(1, 4):
            call_version("adam_step", version, p, g, m, v, t, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)
        res.append(p)
    for other in res[1:]:
        np.testing.assert_allclose(other, res[0], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- PyTorch oracle
@pytest.mark.parametrize("case", SGD_CASES, ids=[str(c) for c in SGD_CASES])
def test_sgd_matches_torch(case, torch):
    lr, mom, damp, wd, nest = case
    rng = np.random.default_rng(9)
    p0, grads = _state(rng, 300, np.float32)
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    opt = torch.optim.SGD([tp], lr=lr, momentum=mom, dampening=damp, weight_decay=wd,
                          nesterov=nest, foreach=False)
    p = p0.copy()
    buf = np.zeros_like(p) if mom else None
    for i, g in enumerate(grads):
        tp.grad = torch.tensor(g)
        opt.step()
        _C.sgd_step(p, g, buf, lr, mom, damp, wd, nest, i == 0)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ADAM_CASES, ids=[str(c) for c in ADAM_CASES])
def test_adam_matches_torch(case, torch):
    lr, b1, b2, eps, wd, dec = case
    rng = np.random.default_rng(10)
    p0, grads = _state(rng, 300, np.float32)
    tp = torch.nn.Parameter(torch.tensor(p0.copy()))
    cls = torch.optim.AdamW if dec else torch.optim.Adam
    opt = cls([tp], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=False)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        tp.grad = torch.tensor(g)
        opt.step()
        _C.adam_step(p, g, m, v, t, lr, b1, b2, eps, wd, dec)
    st = opt.state[tp]
    np.testing.assert_allclose(m, st["exp_avg"].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v, st["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
