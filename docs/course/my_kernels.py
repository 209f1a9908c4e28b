"""Your own kernel versions, in Python on NumPy arrays (docs/COURSE.md, lessons 1, 2 and 8).

Each function takes its kernel's backend arguments (gasca_core/backend.py) without
`version`, and returns what the backend wrapper returns (the optimizer step updates its
arrays in place).  register_kernel makes each a version named "mine" of its kernel, beside
the built-in 0, 1, 2:

    python -m pytest tests/test_kernels_conv.py -k mine    (with GASCA_KERNEL_FILES=this file)
    python -m gasca_core.train --kernel-file docs/course/my_kernels.py --kernels conv2d_forward=mine
    python -m gasca_core.bench --ladder --kernel-file docs/course/my_kernels.py

The versions below are finished and correct: write yours before reading them, then break
one on purpose (an index off by one, say) and watch the kernel tests fail.
"""
import numpy as np

import gasca_core


def conv2d_forward(x, weight, bias, stride, padding, dilation):
    """y[n, co, oh, ow] = bias[co] + sum over ci, i, j of
    weight[co, ci, i, j] * x[n, ci, oh*sh - ph + i*dh, ow*sw - pw + j*dw]  (zero outside x).

    One NumPy product per kernel tap (i, j): the tap reads a strided slab of the padded
    input, and the channels are contracted by einsum; KH*KW products in all."""
    n, ci, h, w = x.shape
    co, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, co, oh, ow), x.dtype)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                     j * dw: j * dw + sw * (ow - 1) + 1: sw]
            y += np.einsum("nchw,oc->nohw", tap, weight[:, :, i, j])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv_transpose2d_backward_input(grad_out, weight, input_shape, stride, padding,
                                    output_padding, dilation):
    """The transposed convolution's input gradient IS a convolution (its adjoint's
    forward), with the same weight read as (out, in, KH, KW): conv2d_forward above, cut to
    the input's size (the natural size is larger when output_padding >= stride)."""
    y = conv2d_forward(grad_out, weight, None, stride, padding, dilation)
    return y[:, :, :input_shape[2], :input_shape[3]]


def adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
              decoupled):
    """One Adam (AdamW when decoupled) update in place, with PyTorch's formulas; NumPy
    makes a temporary per operation, where the fused kernel makes one pass."""
    if decoupled:
        param *= 1 - lr * weight_decay
    elif weight_decay:
        grad = grad + weight_decay * param
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * grad * grad
    bias1, bias2 = 1 - beta1 ** step, 1 - beta2 ** step
    param -= (lr / bias1) * exp_avg / (np.sqrt(exp_avg_sq / bias2) + eps)


gasca_core.register_kernel("conv2d_forward", conv2d_forward, name="mine")
gasca_core.register_kernel("conv_transpose2d_backward_input", conv_transpose2d_backward_input,
                           name="mine")
gasca_core.register_kernel("adam_step", adam_step, name="mine")
