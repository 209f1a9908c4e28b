"""Optimizers, as torch.optim: SGD, Adam, AdamW.

Each `step()` hands every parameter that has a gradient to one fused C++/CUDA kernel
(see cpp/optim.h), which reads the parameter, its gradient and its state once and updates
the parameter and the state in place.  The formulas are PyTorch's, so trajectories match
torch.optim to rounding.

Parameters are organised in `param_groups` (a list of dicts holding "params" and the
hyper-parameters, e.g. "lr"), so that a schedule can change `group["lr"]` between steps.
`state_dict()` / `load_state_dict()` capture everything needed to resume exactly: the
hyper-parameters of each group, and per parameter its step count and moment buffers
(as NumPy copies, like Module.state_dict()).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple, Union

import numpy as np

from . import backend
from .tensor import Tensor

ParamsT = Union[Iterable[Tensor], Iterable[Dict[str, Any]]]


class Optimizer:
    """Base class: holds param_groups and per-parameter state; subclasses define
    `_check_group(group)` and `_update(param, group, state)`."""

    def __init__(self, params: ParamsT, defaults: Dict[str, Any]) -> None:
        self.defaults = dict(defaults)
        self.param_groups: List[Dict[str, Any]] = []
        self.state: Dict[Tensor, Dict[str, Any]] = {}
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors (e.g. model.parameters()) "
                            "or of dicts, got a single Tensor")
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: Dict[str, Any]) -> None:
        """Add a group of parameters with its own hyper-parameters (defaults fill the rest)."""
        if not isinstance(group, dict) or "params" not in group:
            raise TypeError(f"a param group must be a dict with a 'params' entry, got {group!r}")
        group = dict(group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be Tensors, got {type(p).__name__} at index {i}")
            if not p.is_leaf:
                raise ValueError("optimizer can only optimize leaf tensors (e.g. Parameters), "
                                 f"got a computed tensor at index {i}")
            if id(p) in seen:
                raise ValueError(f"parameter at index {i} appears in more than one param group "
                                 "(or twice in one)")
            seen.add(id(p))
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group: Dict[str, Any]) -> None:
        """Validate a parameter group's hyper-parameters (each optimizer defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _check_group()")

    def _update(self, param: Tensor, group: Dict[str, Any], state: Dict[str, Any]) -> None:
        """Update one parameter in place from its gradient (each optimizer defines it)."""
        raise NotImplementedError(f"{type(self).__name__} must define _update()")

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter: to None (default), or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if tuple(p.grad.shape) != p.shape:
                    raise ValueError(f"{type(self).__name__}.step: a parameter of shape {p.shape} "
                                     f"has a gradient of shape {tuple(p.grad.shape)}")
                xp = backend.get_array_module(p.data)
                if not p.data.flags.c_contiguous:  # the kernels update it in place
                    p.data = xp.ascontiguousarray(p.data)
                state = self.state.setdefault(p, {})
                self._follow_param(p, state)
                self._update(p, group, state)

    @staticmethod
    def _follow_param(p: Tensor, state: Dict[str, Any]) -> None:
        """Keep state buffers on the parameter's device and dtype (after Module.to())."""
        for key, value in state.items():
            if hasattr(value, "shape") and (backend.device_of(value) != p.device or value.dtype != p.dtype):
                moved = backend.to_device(value, p.device).astype(p.dtype)
                state[key] = backend.get_array_module(moved).ascontiguousarray(moved)

    # --- resume
    def state_dict(self) -> Dict[str, Any]:
        """{"state": {index: {name: value}}, "param_groups": [{hyper-parameters, "params":
        [indices]}]}, parameters numbered in group order; arrays are NumPy copies."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {}
        for p, s in self.state.items():
            if id(p) in index and s:
                state[index[id(p)]] = {k: (np.array(backend.to_numpy(v), copy=True)
                                           if hasattr(v, "shape") else v) for k, v in s.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore hyper-parameters and per-parameter state saved by `state_dict()`; the
        optimizer must have been built over parameters of the same shapes, in the same
        groups and order.  Buffers are copied onto each parameter's device and dtype."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        if groups is None or "state" not in state_dict:
            raise ValueError("optimizer state_dict must be a dict with 'state' and 'param_groups'")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state_dict has {len(groups)} param groups, "
                             f"this optimizer has {len(self.param_groups)}")
        params = []
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ValueError(f"param group {i}: state_dict has {len(saved['params'])} "
                                 f"parameters, this optimizer has {len(own['params'])}")
            params.extend(zip(saved["params"], own["params"]))
        by_index = dict(params)
        new_state: Dict[Tensor, Dict[str, Any]] = {}
        for key, saved in state_dict["state"].items():
            key = int(key)
            if key not in by_index:
                raise ValueError(f"optimizer state_dict has state for parameter {key}, which "
                                 "no param group lists")
            p = by_index[key]
            restored = {}
            for name, value in saved.items():
                if name == "step":  # a count, not a buffer
                    restored[name] = int(value)
                    continue
                if not backend.is_cupy_array(value):
                    value = np.asarray(value)
                if tuple(value.shape) != p.shape:
                    raise ValueError(f"optimizer state {name!r} of parameter {key} has shape "
                                     f"{tuple(value.shape)}, the parameter has {p.shape}")
                array = backend.to_device(value, p.device).astype(p.dtype)  # a copy
                restored[name] = backend.get_array_module(array).ascontiguousarray(array)
            new_state[p] = restored
        for saved, own in zip(groups, self.param_groups):
            candidate = {k: v for k, v in saved.items() if k != "params"}
            candidate["params"] = own["params"]
            self._check_group(candidate)
            own.update(candidate)
        self.state = new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join(lines + [")"])


def _check_non_negative(group: Dict[str, Any], *names: str) -> None:
    for name in names:
        value = group[name]
        if not isinstance(value, (int, float, np.floating, np.integer)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov momentum and
    L2 weight decay, exactly as torch.optim.SGD:

        g = grad + weight_decay * p
        buf = g (first step) or momentum * buf + (1 - dampening) * g
        g = g + momentum * buf (nesterov) or buf
        p = p - lr * g
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _check_group(self, group: Dict[str, Any]) -> None:
        _check_non_negative(group, "lr", "momentum", "dampening", "weight_decay")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("nesterov=True needs momentum > 0 and dampening == 0, got "
                             f"momentum={group['momentum']}, dampening={group['dampening']}")

    def _update(self, param: Tensor, group: Dict[str, Any], state: Dict[str, Any]) -> None:
        buf = None
        first_step = False
        if group["momentum"] != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = backend.get_array_module(param.data).zeros_like(param.data)
                state["momentum_buffer"] = buf
                first_step = True
        backend.sgd_step(param.data, param.grad, buf, group["lr"], group["momentum"],
                         group["dampening"], group["weight_decay"], group["nesterov"], first_step)


class Adam(Optimizer):
    """Adam with bias correction, exactly as torch.optim.Adam (weight_decay adds
    weight_decay * p to the gradient, i.e. L2 regularisation):

        m = beta1 m + (1 - beta1) g;    v = beta2 v + (1 - beta2) g^2
        p = p - lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
    """

    decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _check_group(self, group: Dict[str, Any]) -> None:
        _check_non_negative(group, "lr", "eps", "weight_decay")
        betas = group["betas"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, b in enumerate(betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"betas[{i}] must be in [0, 1), got {b!r}")
        group["betas"] = (float(betas[0]), float(betas[1]))

    def _update(self, param: Tensor, group: Dict[str, Any], state: Dict[str, Any]) -> None:
        if "step" not in state:
            xp = backend.get_array_module(param.data)
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(param.data)
            state["exp_avg_sq"] = xp.zeros_like(param.data)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        backend.adam_step(param.data, param.grad, state["exp_avg"], state["exp_avg_sq"],
                          state["step"], group["lr"], beta1, beta2, group["eps"],
                          group["weight_decay"], self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly as torch.optim.AdamW:
    p = p * (1 - lr * weight_decay) before the Adam step."""

    decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
