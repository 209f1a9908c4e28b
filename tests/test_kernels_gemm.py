"""gemm (every version: backend.kernel_versions, built-in and registered) against numpy's
matmul: transposes, alpha/beta, odd sizes."""
import numpy as np
import pytest

from gasca_core import _C, backend
from gasca_core.testing import call_version, version_id

GEMM_VERSIONS = backend.kernel_versions("gemm")
SIZES = [(1, 1, 1), (7, 5, 3), (1, 33, 7), (33, 1, 9), (17, 19, 1), (16, 32, 64),
         (33, 65, 31), (48, 257, 129), (129, 70, 300), (257, 33, 7),
         # last row panels of at most half the register tile (the even/odd edge kernel),
         # with odd and even k, and k past one KC block
         (32, 40, 25), (2, 17, 256), (128, 24, 301)]


def _operands(rng, m, n, k, ta, tb, dtype):
    a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
    return a, b


def _expect(a, b, c, ta, tb, alpha, beta):
    opa = a.T if ta else a
    opb = b.T if tb else b
    out = alpha * (opa.astype(np.float64) @ opb.astype(np.float64))
    if beta != 0:
        out += beta * c.astype(np.float64)
    return out


def _tol(dtype, k):
    return dict(rtol=1e-4, atol=1e-5 * np.sqrt(k) * 4) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12 * k)


@pytest.mark.parametrize("version", GEMM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("m,n,k", SIZES, ids=[f"{m}x{n}x{k}" for m, n, k in SIZES])
def test_gemm_matches_numpy(m, n, k, ta, tb, dtype, version):
    rng = np.random.default_rng(m * 10007 + n * 101 + k)
    a, b = _operands(rng, m, n, k, ta, tb, dtype)
    c0 = rng.standard_normal((m, n)).astype(dtype)
    for alpha, beta in ((1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)):
        c = c0.copy()
        call_version("gemm", version, a, b, c, trans_a=ta, trans_b=tb, alpha=alpha, beta=beta)
        np.testing.assert_allclose(c, _expect(a, b, c0, ta, tb, alpha, beta), **_tol(dtype, k),
                                   err_msg=f"alpha={alpha} beta={beta}")


@pytest.mark.parametrize("version", GEMM_VERSIONS, ids=version_id)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_gemm_beta_zero_never_reads_c(version, dtype, rng):
    """beta == 0 overwrites C: NaN (or garbage) already in C must not leak into the result."""
    for m, n, k in ((5, 7, 3), (64, 100, 37), (130, 260, 70)):
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = np.full((m, n), np.nan, dtype=dtype)
        call_version("gemm", version, a, b, c, beta=0.0)
        assert np.isfinite(c).all()
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, **_tol(dtype, k))


@pytest.mark.parametrize("version", GEMM_VERSIONS, ids=version_id)
def test_gemm_k_zero_scales_c(version):
    a = np.zeros((4, 0), np.float32)
    b = np.zeros((0, 3), np.float32)
    c = np.ones((4, 3), np.float32)
    call_version("gemm", version, a, b, c, alpha=1.0, beta=2.0)
    np.testing.assert_array_equal(c, 2.0)
    c[...] = np.nan
    call_version("gemm", version, a, b, c, beta=0.0)
    np.testing.assert_array_equal(c, 0.0)


def test_gemm_large_matches_numpy_with_threads(rng):
    """Products big enough to be split over threads and cache blocks in every dimension:
    C's columns split between threads, then (few columns) its rows, so that a thread's
    first row panel falls inside a block of the macro-kernel's A panels."""
    old = _C.get_num_threads()
    try:
        for m, n, k in ((300, 700, 600), (600, 40, 300)):
            a = rng.standard_normal((m, k)).astype(np.float32)
            b = rng.standard_normal((k, n)).astype(np.float32)
            for t in (1, 2, 3):
                _C.set_num_threads(t)
                c = np.empty((m, n), np.float32)
                _C.gemm(a, b, c)
                np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=1e-4, atol=2e-3,
                                           err_msg=f"{m}x{n}x{k}, {t} threads")
    finally:
        _C.set_num_threads(old)


def test_versions_are_listed_by_name():
    v = _C.versions()
    assert set(v) == {"gemm", "conv2d", "optim", "symconv2d", "eltwise"}
    for names in v.values():
        assert len(names) >= 1 and all(isinstance(s, str) and s for s in names)
