"""Checkpoints: one .npz file holding arrays and a JSON header, written atomically.

Layout of a checkpoint file:
    "__meta__"            a JSON string: format version, config, method, phase, step, ...
    "g/<name>"            every generator parameter (state_dict keys)
    "d/<name>"            every discriminator parameter
    "opt_g/<key>", "opt_d/<key>"   the current phase's optimizer states (flattened)

Writes go to a temporary file in the same directory, are flushed to disk, then renamed over
the old file: a process killed at any moment leaves either the old or the new checkpoint,
never a torn one.  Loading never unpickles anything (allow_pickle=False), and reads the
checkpoints of earlier releases (see _upgrade).
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from ..backend import to_numpy
from ..models import GascaConfig, Generator, grow
from .phases import METHOD_ALIASES

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not fit what it is loaded into."""


def flatten_state(prefix: str, state: Any, out: dict[str, np.ndarray], meta: dict) -> None:
    """Flatten nested dicts/lists of arrays and scalars into "a/b/0/c" keyed arrays.

    Scalars, strings and None go into `meta` (JSON) under the same keys; arrays into `out`.
    """
    if isinstance(state, dict):
        for k, v in state.items():
            flatten_state(f"{prefix}/{k}", v, out, meta)
    elif isinstance(state, (list, tuple)):
        meta[f"{prefix}/__len__"] = [len(state), "tuple" if isinstance(state, tuple) else "list"]
        for i, v in enumerate(state):
            flatten_state(f"{prefix}/{i}", v, out, meta)
    elif hasattr(state, "shape") and hasattr(state, "dtype") and getattr(state, "ndim", 0) >= 0 \
            and not isinstance(state, (np.generic,)):
        out[prefix] = to_numpy(state)
    elif isinstance(state, np.generic):
        meta[prefix] = state.item()
    else:
        meta[prefix] = state


def unflatten_state(prefix: str, arrays: dict[str, np.ndarray], meta: dict) -> Any:
    """Inverse of flatten_state for one prefix."""
    if prefix in arrays:
        return arrays[prefix]
    if prefix in meta:
        return meta[prefix]
    if f"{prefix}/__len__" in meta:
        n, kind = meta[f"{prefix}/__len__"]
        items = [unflatten_state(f"{prefix}/{i}", arrays, meta) for i in range(n)]
        return tuple(items) if kind == "tuple" else items
    head = prefix + "/"
    keys = {k[len(head):].split("/")[0] for k in list(arrays) + list(meta) if k.startswith(head)}
    keys.discard("__len__")
    if not keys:
        raise CheckpointError(f"checkpoint has no entry '{prefix}'")
    return {k: unflatten_state(head + k, arrays, meta) for k in sorted(keys, key=_natural)}


def _natural(k: str):
    return (0, int(k), "") if k.isdigit() else (1, 0, k)


def save_checkpoint(path: str, meta: dict, states: dict[str, Any]) -> None:
    """Atomically write `states` (name -> nested state) and `meta` (JSON-able) to `path`."""
    arrays: dict[str, np.ndarray] = {}
    flat_meta: dict[str, Any] = {}
    for name, state in states.items():
        flatten_state(name, state, arrays, flat_meta)
    header = {"format_version": FORMAT_VERSION, "meta": meta, "flat": flat_meta}
    arrays["__meta__"] = np.array(json.dumps(header))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        try:  # make the rename itself durable
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> tuple[dict, dict[str, Any]]:
    """Read a checkpoint: returns (meta, states) with states[name] as saved."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, OSError, ValueError...
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {e}") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path} is not a gasca_core checkpoint (no __meta__ entry)")
    header = json.loads(str(arrays.pop("__meta__")))
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this gasca_core reads version "
            f"{FORMAT_VERSION}")
    flat = header["flat"]
    names = {k.split("/")[0] for k in list(arrays) + list(flat)}
    states = {n: unflatten_state(n, arrays, flat) for n in names}
    return _upgrade(header["meta"], path), states


def _upgrade(meta: dict, path: str) -> dict:
    """Read a checkpoint of an earlier release as this one writes them.

    Earlier releases spelled the method GANGGLW "ganglw": the name is converted (parameters,
    optimizer states and every other field are stored the same way) and the conversion is
    listed in meta["notes"], which the tools print.  Their model configs have no "decoder"
    field: they all used transposed convolutions, and the field is filled in so.
    """
    tc = meta.get("train_config")
    if isinstance(tc, dict) and tc.get("method") in METHOD_ALIASES:
        old = tc["method"]
        tc["method"] = METHOD_ALIASES[old]
        meta.setdefault("notes", []).append(f"{path}: method '{old}' (as earlier releases spelled it) read as "
                     f"'{tc['method']}'")
    mc = meta.get("model_config")
    if isinstance(mc, dict) and "decoder" not in mc:
        mc["decoder"] = "transposed"  # the only decoder before the field existed
    return meta


def load_generator(path: str, device: str = "cpu") -> tuple[Generator, GascaConfig, dict]:
    """G from a checkpoint, in eval mode: (generator, its config, the checkpoint's meta)."""
    meta, states = load_checkpoint(path)
    try:
        mc = GascaConfig.from_dict(meta["model_config"])
        depth = int(meta["g_depth"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad or missing model config: {e}") from None
    g = Generator(mc)
    grow(g, None, depth, seed=0)  # every weight is overwritten by the checkpoint's
    try:
        g.load_state_dict(states["g"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: generator weights do not fit its config: {e}") from None
    g = g.to(device)
    g.eval()
    return g, mc, meta
