"""Image-quality metrics on the [0, 1] range: MSE, PSNR and SSIM.

All take arrays of shape (N, C, H, W) (NumPy or CuPy; computed in float64 on the host) and
return one value per image, so that callers can average, or group by a label such as yaw.
"""
from __future__ import annotations

import numpy as np

from .backend import to_numpy


def _host(a) -> np.ndarray:
    return np.asarray(to_numpy(a), dtype=np.float64)


def _check_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _host(pred), _host(target)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(f"expected two (N, C, H, W) arrays of one shape, got {pred.shape} and {target.shape}")
    return pred, target


def mse_per_image(pred, target) -> np.ndarray:
    """Mean squared error of each image, shape (N,)."""
    pred, target = _check_pair(pred, target)
    return ((pred - target) ** 2).reshape(len(pred), -1).mean(axis=1)


def psnr_per_image(pred, target, data_range: float = 1.0, eps: float = 1e-12) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of each image, shape (N,); 10 log10(range^2 / MSE)."""
    return 10.0 * np.log10(data_range**2 / np.maximum(mse_per_image(pred, target), eps))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' Gaussian filtering over the last two axes of (N, C, H, W)."""
    k = len(g)
    h, w = img.shape[-2:]
    rows = sum(g[i] * img[..., i:h - k + 1 + i, :] for i in range(k))
    return sum(g[j] * rows[..., :, j:w - k + 1 + j] for j in range(k))


def ssim_per_image(pred, target, data_range: float = 1.0, win_size: int = 11,
                   sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Structural similarity (Wang et al. 2004) of each image, shape (N,).

    Gaussian window 11x11, sigma 1.5, C1 = (0.01 R)^2, C2 = (0.03 R)^2, computed over the
    'valid' region and averaged over pixels and channels, as in the reference
    implementation.  Images smaller than the window use a window as large as they allow.
    """
    pred, target = _check_pair(pred, target)
    win_size = min(win_size, pred.shape[-1], pred.shape[-2])
    g = _gaussian_window(win_size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(pred, g), _filter_valid(target, g)
    sxx = _filter_valid(pred * pred, g) - mu_x**2
    syy = _filter_valid(target * target, g) - mu_y**2
    sxy = _filter_valid(pred * target, g) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return ssim_map.reshape(len(pred), -1).mean(axis=1)


def summarize(pred, target) -> dict[str, float]:
    """Mean MSE, PSNR (dB) and SSIM over a batch of (N, C, H, W) images in [0, 1]."""
    return {
        "mse": float(mse_per_image(pred, target).mean()),
        "psnr": float(psnr_per_image(pred, target).mean()),
        "ssim": float(ssim_per_image(pred, target).mean()),
    }
