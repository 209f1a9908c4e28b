"""Is the person kept? A face recognizer and the identity protocol every tool reports.

A frontalized face can have a low pixel error and still look like someone else (the mean
face is the classic case). So we also ask a recognizer: give it G's output, a gallery of
one photo per person, and see whether the nearest photo is the right person (rank-1).

The recognizer
--------------
:class:`Recognizer` is a small CNN (three stride-2 convolutions, then a linear layer to a
128-d embedding) trained, with our own nn / optim, to tell the *training* people apart
(identity classification, softmax cross-entropy, on their frontal images under every light,
with small random shifts and brightness/contrast jitter). Its embedding layer, L2-normalised,
is then used on people it has never seen: two photos of one person should have a high
cosine similarity. :func:`get_recognizer` trains it once per training set and caches it
(under ``gasca_core.data.synthetic.cache_dir() / "recognizers"``); its training time is
reported separately (``info["train_seconds"]``) and must not be charged to a G's training.

:class:`Eigenfaces` (PCA of the same training images) is a transparent second opinion: no
training, nothing learned but the principal axes of face pixels.

The protocol (:func:`identity_rank1`)
-------------------------------------
- Gallery: for each person of the evaluated split (the test split: people never seen in
  training), ONE frontal image that is not the probes' own target: the input at yaw 0 under
  a non-neutral light (by default the lowest light index other than ``neutral_light``, 0 =
  the targets' light in the synthetic faces), and never an image identical to that pair's
  target.
- Probes: one image per pair of the split (G's outputs, or the raw inputs, or the true
  targets); the pairs whose input IS a gallery image are left out.
- Rank-1: the share of probes whose most similar gallery image (cosine similarity of the
  embeddings) is the right person. Ties count fairly: a probe tied between t gallery images,
  the right one among them, scores 1/t, so a probe that carries no information (embedding
  0, e.g. a constant image under a mean-removing embedding) scores exactly chance, 1/G.

:func:`identity_report` gives rank-1 overall and per yaw for G's outputs, the raw inputs
(what G starts from), the true targets (the ceiling of this recognizer on this gallery),
and chance (1/G); a dataset the protocol cannot apply to (no identity or yaw labels, no
frontal non-neutral image) gives None and a one-line note saying why.

:func:`realism_distance` is a Frechet distance (FID-style) between the recognizer's
L2-normalised embeddings of G's outputs and of the targets.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import functional as F
from . import nn, optim
from .backend import to_device, to_numpy
from .data.batching import BatchIterator
from .data.pairs import PairDataset
from .data.synthetic import cache_dir, write_cache_npz
from .metrics import frechet_distance
from .rng import stream
from .tensor import Tensor, no_grad

# Bump whenever a change here changes a trained recognizer: it is part of the cache key.
RECOGNIZER_VERSION = 1
DEFAULT_STEPS = 300
EMBED_DIM = 128
# Cosine similarities closer than this count as a tie (embeddings are float32).
TIE_TOLERANCE = 1e-6


class IdentityProtocolError(ValueError):
    """The identity protocol cannot be applied to this data (the message says why)."""


# ----------------------------------------------------------------------------- the network

class Recognizer(nn.Module):
    """A small face-recognition CNN.

        conv 5x5 stride 2 (in_channels -> 16), LeakyReLU(0.2)
        conv 5x5 stride 2 (16 -> 32), LeakyReLU(0.2)
        conv 3x3 stride 2 (32 -> 64), LeakyReLU(0.2)
        flatten, linear -> embed_dim          (the embedding)
        linear -> n_classes                   (logits, for training only)

    Images (N, in_channels, H, W) with H and W divisible by 8 (each convolution halves them).
    forward(x) gives the logits (a Tensor); features(x) the embeddings and embed(x) the
    L2-normalised embeddings, both (N, embed_dim) host NumPy arrays, computed in batches
    without recording a graph.
    """

    def __init__(self, in_channels: int, image_size: Union[int, tuple[int, int]], n_classes: int,
                 embed_dim: int = EMBED_DIM, rng: Optional[np.random.Generator] = None) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, (int, np.integer)) \
            else tuple(image_size)
        if h < 8 or w < 8 or h % 8 or w % 8:
            raise ValueError(f"Recognizer: image size {h}x{w} must be divisible by 8 (three "
                             f"stride-2 convolutions), and at least 8")
        if int(n_classes) < 2:
            raise ValueError(f"Recognizer: needs at least 2 identities to tell apart, got "
                             f"{n_classes}")
        self.config = {"in_channels": int(in_channels), "image_size": [int(h), int(w)],
                       "n_classes": int(n_classes), "embed_dim": int(embed_dim)}
        act = 0.2
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, stride=2, padding=2, rng=rng), nn.LeakyReLU(act),
            nn.Conv2d(16, 32, 5, stride=2, padding=2, rng=rng), nn.LeakyReLU(act),
            nn.Conv2d(32, 64, 3, stride=2, padding=1, rng=rng), nn.LeakyReLU(act),
            nn.Flatten(),
            nn.Linear(64 * (h // 8) * (w // 8), embed_dim, rng=rng))
        self.head = nn.Linear(embed_dim, n_classes, rng=rng)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def _check(self, x: Any) -> Any:
        c, (h, w) = self.config["in_channels"], self.config["image_size"]
        if getattr(x, "ndim", 0) != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(f"Recognizer expects images (N, {c}, {h}, {w}), got shape "
                             f"{getattr(x, 'shape', None)}")
        return x

    def features(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Embeddings (N, embed_dim), before L2 normalisation, as a host float32 array."""
        x = self._check(x)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        outs = []
        with no_grad():
            for i in range(0, len(x), batch_size):
                xb = to_device(np.ascontiguousarray(to_numpy(x[i:i + batch_size]),
                                                    dtype=np.float32), device)
                outs.append(to_numpy(self.body(Tensor(xb)).data))
        self.train(was_training)
        return np.concatenate(outs) if outs else np.zeros((0, self.config["embed_dim"]), np.float32)

    def embed(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """L2-normalised embeddings (N, embed_dim), host float64 (a zero vector stays 0)."""
        return l2_normalize(self.features(x, batch_size))


def l2_normalize(e: Any) -> np.ndarray:
    """Rows of e (N, d) scaled to unit length, in float64; an all-zero row stays zero (it
    then ties with every gallery image, see identity_rank1)."""
    e = np.asarray(to_numpy(e), dtype=np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.where(n > 0, n, 1.0)


# ----------------------------------------------------------------------------- training data

def identity_labels(ds: PairDataset) -> np.ndarray:
    """The label that names a person ("identity" or "subject"); IdentityProtocolError if
    the dataset has neither."""
    ids = ds.groups()
    if ids is None:
        raise IdentityProtocolError(f"{ds.name} has no identity or subject label (its labels: "
                                    f"{', '.join(sorted(ds.labels)) or 'none'})")
    return np.asarray(ids)


# At most this many frontal inputs of one person train the recognizer (Multi-PIE has up to
# about 160 per person: sessions x recordings x flashes). The recognizer makes 300 steps,
# so more would only cost memory, which would then grow with the dataset.
MAX_FRONTAL_PER_PERSON = 32


def frontal_training_images(train: PairDataset) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, C, H, W) float32 on the host, identity (M,)): the frontal images of each
    training person, to train a recognizer or fit eigenfaces on.

    With a yaw label: the inputs at yaw 0 (under every light; at most
    MAX_FRONTAL_PER_PERSON a person, evenly spread over them) and the person's target,
    once. Without: every target and input. Byte-identical images of one person are kept
    once (in the synthetic faces the yaw-0 input under the neutral light is the target).
    """
    ids = identity_labels(train)
    # A prepared cache's images are read one by one below, never all at once.
    inputs, targets = ((train.inputs, train.targets) if getattr(train, "lazy", False)
                       else (to_numpy(train.inputs), to_numpy(train.targets)))
    if "yaw" in train.labels:
        frontal = np.flatnonzero(np.asarray(train.labels["yaw"], float) == 0.0)
        picked = [(inputs, _at_most_per_person(frontal, ids, MAX_FRONTAL_PER_PERSON))]
        _, first = np.unique(ids, return_index=True)
        picked.append((targets, np.sort(first)))
    else:
        picked = [(targets, np.arange(len(train))), (inputs, np.arange(len(train)))]
    images, who, seen = [], [], set()
    for source, idx in picked:
        for i in idx:
            key = (ids[i].item() if hasattr(ids[i], "item") else ids[i],
                   hashlib.sha1(source[i].tobytes()).digest())
            if key not in seen:
                seen.add(key)
                images.append(source[i])
                who.append(ids[i])
    if not images:
        raise IdentityProtocolError(f"{train.name} has no frontal (yaw 0) images to train on")
    return np.stack(images).astype(np.float32), np.asarray(who)


def _at_most_per_person(idx: np.ndarray, ids: np.ndarray, most: int) -> np.ndarray:
    """The indices idx, keeping at most `most` of each person's, evenly spread over them
    (in order; no randomness)."""
    keep = []
    for person in dict.fromkeys(ids[idx].tolist()):
        mine = idx[ids[idx] == person]
        if len(mine) > most:
            mine = mine[np.linspace(0, len(mine) - 1, most).round().astype(np.int64)]
        keep.append(mine)
    return np.sort(np.concatenate(keep)) if keep else idx


def _augment(x: np.ndarray, rng: np.random.Generator, shift: int = 2) -> np.ndarray:
    """Random shifts of up to `shift` px (edge-padded) and brightness/contrast jitter."""
    n, _, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge")
    dy, dx = rng.integers(-shift, shift + 1, size=(2, n))
    out = np.stack([padded[i, :, shift + dy[i]:shift + dy[i] + h, shift + dx[i]:shift + dx[i] + w]
                    for i in range(n)])
    contrast = rng.uniform(0.8, 1.25, size=(n, 1, 1, 1))
    brightness = rng.uniform(-0.08, 0.08, size=(n, 1, 1, 1))
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    return ((out - mean) * contrast + mean + brightness).astype(np.float32)


def _train_config(images: np.ndarray, n_classes: int, steps: int, batch_size: int, lr: float,
                  seed: int) -> dict[str, Any]:
    c, h, w = images.shape[1:]
    return {"version": RECOGNIZER_VERSION, "in_channels": int(c), "image_size": [int(h), int(w)],
            "n_classes": int(n_classes), "embed_dim": EMBED_DIM, "steps": int(steps),
            "batch_size": int(batch_size), "lr": float(lr), "seed": int(seed)}


def _fit(images: np.ndarray, ids: np.ndarray, steps: int, batch_size: int, lr: float, seed: int,
         device: str, progress: bool, log: Optional[Callable[[str], Any]]
         ) -> tuple[Recognizer, dict[str, Any]]:
    classes, y = np.unique(ids, return_inverse=True)
    y = y.reshape(-1).astype(np.int64)
    if len(classes) < 2:
        raise IdentityProtocolError(f"a recognizer needs at least 2 training people, got "
                                    f"{len(classes)}")
    if int(steps) < 1 or int(batch_size) < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    t0 = time.perf_counter()
    model = Recognizer(images.shape[1], images.shape[2:], len(classes),
                       rng=stream("recognizer-init", seed)).to(device)
    opt = optim.Adam(list(model.parameters()), lr=lr)
    # The class rides along as a label; the targets are unused.
    batches = BatchIterator(PairDataset(images, images, {"class": y}, check=False),
                            min(int(batch_size), len(images)), seed=seed,
                            stream="recognizer-batches")
    from tqdm.auto import tqdm
    bar = tqdm(total=int(steps), desc="recognizer", disable=not progress, leave=False)
    model.train()
    try:
        for step in range(int(steps)):
            batch, _ = batches.batch_at(step)
            x = _augment(batch.inputs, stream("recognizer-augment", seed, step))
            loss = F.cross_entropy(model(Tensor(to_device(x, device))), batch.labels["class"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss.item()):.3f}")
    finally:
        bar.close()
    # Final loss and accuracy on the training images themselves, without augmentation.
    model.eval()
    with no_grad():
        logits = np.concatenate([to_numpy(model(Tensor(to_device(images[i:i + 256], device))).data)
                                 for i in range(0, len(images), 256)]).astype(np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    info = {"train_seconds": round(time.perf_counter() - t0, 3), "steps": int(steps),
            "final_train_loss": float(-logp[np.arange(len(y)), y].mean()),
            "final_train_accuracy": float((logits.argmax(axis=1) == y).mean()),
            "n_identities": int(len(classes)), "n_images": int(len(images)),
            "device": device, "cached": False}
    if log is not None:
        log(f"recognizer: {info['n_identities']} training people, {info['n_images']} frontal "
            f"images, {steps} steps in {info['train_seconds']:.1f} s; train accuracy "
            f"{info['final_train_accuracy']:.3f}, loss {info['final_train_loss']:.3f}")
    return model, info


def train_recognizer(train: PairDataset, steps: int = DEFAULT_STEPS, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0, device: str = "cpu", progress: bool = True,
                     log: Optional[Callable[[str], Any]] = print
                     ) -> tuple[Recognizer, dict[str, Any]]:
    """Train a Recognizer to classify the training people (their frontal images, see
    frontal_training_images), with Adam and softmax cross-entropy.

    Batches come from the random stream ("recognizer-batches", seed), the augmentation of
    step k (shifts of +-2 px, contrast x0.8..1.25, brightness +-0.08) from
    ("recognizer-augment", seed, k) and the initial weights from ("recognizer-init", seed):
    the result is a pure function of the data and the seed. The default 300 steps at batch
    64 take about 10 s for the 84 training people of the default split (420 images) and
    14 s for 236 people, on a 2-core CPU.

    Returns (recognizer, info): info holds train_seconds, steps, final_train_loss and
    final_train_accuracy (on the un-augmented training images), n_identities, n_images,
    device and cached (False). IdentityProtocolError (a ValueError) when the data has no
    identity label, no frontal image, or fewer than 2 people.
    """
    images, ids = frontal_training_images(train)
    return _fit(images, ids, steps, batch_size, lr, seed, device, progress, log)


# ----------------------------------------------------------------------------- the cache

def recognizer_cache_key(images: np.ndarray, ids: np.ndarray, config: dict[str, Any]) -> str:
    """sha256 over the training images' bytes, their identity labels and the training
    configuration (with RECOGNIZER_VERSION)."""
    h = hashlib.sha256()
    h.update(json.dumps(config, sort_keys=True).encode())
    h.update(repr(images.shape).encode())
    h.update(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    classes, inverse = np.unique(ids, return_inverse=True)
    h.update(json.dumps([str(c) for c in classes]).encode())
    h.update(np.asarray(inverse, dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def _save(path: Path, model: Recognizer, config: dict[str, Any], info: dict[str, Any]) -> None:
    """Write atomically (data.synthetic.write_cache_npz): a reader sees no file or the whole file."""
    arrays = {f"param/{k}": v for k, v in model.state_dict().items()}
    write_cache_npz(path, "recognizer", {"meta": np.array(json.dumps({"config": config, "info": info})),
                                         **arrays})


def _load(path: Path, config: dict[str, Any]) -> tuple[Recognizer, dict[str, Any]]:
    """The cached recognizer; ValueError (saying what is wrong) for a corrupt or foreign
    file."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            state = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    except Exception as e:  # truncated, not a zip, bad JSON: all mean "corrupt"
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("config") != config:
        raise ValueError("its configuration does not match its key")
    model = Recognizer(config["in_channels"], config["image_size"], config["n_classes"],
                       config["embed_dim"], rng=np.random.default_rng(0))
    model.load_state_dict(state)  # KeyError / ValueError on missing or misshapen weights
    return model, dict(meta.get("info", {}))


def get_recognizer(train: PairDataset, cache: bool = True, steps: int = DEFAULT_STEPS,
                   batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu",
                   progress: bool = True, log: Optional[Callable[[str], Any]] = print
                   ) -> tuple[Recognizer, dict[str, Any]]:
    """The recognizer for this training set: trained once (see train_recognizer), then
    loaded from ``cache_dir() / "recognizers" / <key>.npz`` (key: recognizer_cache_key).

    Returns (recognizer, info) as train_recognizer, with info["cached"] True when it was
    loaded (info["train_seconds"] is then the time the cached one took to train) and
    info["path"] the cache file. A corrupt or mismatched cache file is reported with a
    warning and replaced by a freshly trained recognizer.
    """
    images, ids = frontal_training_images(train)
    config = _train_config(images, len(np.unique(ids)), steps, batch_size, lr, seed)
    path = cache_dir() / "recognizers" / f"{recognizer_cache_key(images, ids, config)}.npz"
    if cache and path.is_file():
        try:
            model, info = _load(path, config)
        except (ValueError, KeyError) as e:
            warnings.warn(f"recognizer cache {path} is corrupt: {e}; training it again")
        else:
            info.update(cached=True, path=str(path), device=device)
            if log is not None:
                log(f"recognizer: loaded from the cache ({path.name}; it trained in "
                    f"{info.get('train_seconds', float('nan')):.1f} s)")
            return model.to(device), info
    model, info = _fit(images, ids, steps, batch_size, lr, seed, device, progress, log)
    if cache:
        _save(path, model, config, info)
    info["path"] = str(path)
    return model, info


# ----------------------------------------------------------------------------- eigenfaces

class Eigenfaces:
    """PCA of face pixels (Turk & Pentland 1991): a recognizer with nothing learned but
    the principal axes of the training faces.

    Eigenfaces.fit(images, n_components) centres the (M, C*H*W) pixel matrix on its mean
    and keeps the first n_components right singular vectors (numpy SVD); embed(x) projects
    centred images onto them and L2-normalises, so that identity_rank1 can use it like the
    Recognizer.
    """

    def __init__(self, mean: np.ndarray, components: np.ndarray, image_shape: tuple[int, ...]) -> None:
        self.mean, self.components, self.image_shape = mean, components, tuple(image_shape)

    @classmethod
    def fit(cls, images: Any, n_components: int = 50) -> "Eigenfaces":
        x = np.asarray(to_numpy(images), dtype=np.float64)
        if x.ndim != 4 or len(x) < 2:
            raise ValueError(f"Eigenfaces.fit needs at least 2 images (M, C, H, W), got shape "
                             f"{x.shape}")
        if int(n_components) < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        flat = x.reshape(len(x), -1)
        mean = flat.mean(axis=0)
        _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
        keep = min(int(n_components), int((s > s[0] * 1e-10).sum()))
        return cls(mean, vt[:keep], x.shape[1:])

    def features(self, x: Any) -> np.ndarray:
        """Coordinates (N, k) of the centred images along the principal axes."""
        x = np.asarray(to_numpy(x), dtype=np.float64)
        if x.ndim != 4 or x.shape[1:] != self.image_shape:
            raise ValueError(f"Eigenfaces expects images (N, {', '.join(map(str, self.image_shape))}), "
                             f"got shape {x.shape}")
        return (x.reshape(len(x), -1) - self.mean) @ self.components.T

    def embed(self, x: Any) -> np.ndarray:
        """L2-normalised coordinates (N, k)."""
        return l2_normalize(self.features(x))


# ----------------------------------------------------------------------------- the protocol

EmbedderLike = Union[Recognizer, Eigenfaces, Callable[[np.ndarray], np.ndarray]]


def _embed_fn(embedder: EmbedderLike) -> Callable[[Any], np.ndarray]:
    fn = getattr(embedder, "embed", None) or embedder
    if not callable(fn):
        raise TypeError(f"expected a Recognizer, Eigenfaces or a function images -> (N, d) "
                        f"embeddings, got {type(embedder).__name__}")
    return lambda x: l2_normalize(fn(x))


def _label_value(v: Any) -> Any:
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, float) and v.is_integer() else v


def choose_gallery(split: PairDataset, gallery_light: Optional[int] = None,
                   neutral_light: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(gallery indices into split (G,), their identities (G,)): per person, the input at yaw
    0 under light `gallery_light` (default: the lowest light != neutral_light that person
    has; 0 is the targets' light in the synthetic faces, 7 in Multi-PIE), never one
    identical to its pair's target. Without a light label, the first yaw-0
    input that differs from its target. IdentityProtocolError when fewer than 2 people have
    such an image."""
    ids = identity_labels(split)
    if "yaw" not in split.labels:
        raise IdentityProtocolError(f"{split.name} has no yaw label, so no frontal gallery "
                                    f"image can be chosen")
    yaw = np.asarray(split.labels["yaw"], dtype=np.float64)
    light = np.asarray(split.labels["light"]) if "light" in split.labels else None
    cand = yaw == 0.0
    if light is not None:
        cand &= (light == gallery_light) if gallery_light is not None else (light != neutral_light)
    inputs, targets = to_numpy(split.inputs), to_numpy(split.targets)
    chosen: dict[Any, tuple[Any, int]] = {}
    for i in np.flatnonzero(cand):
        if np.array_equal(inputs[i], targets[i]):
            continue  # that would be the probe's own target
        person = ids[i].item() if hasattr(ids[i], "item") else ids[i]
        order = light[i].item() if light is not None else 0
        if person not in chosen or order < chosen[person][0]:
            chosen[person] = (order, int(i))
    if len(chosen) < 2:
        which = (f"light {gallery_light}" if gallery_light is not None
                 else f"a light other than {neutral_light}" if light is not None else "any light")
        raise IdentityProtocolError(f"{split.name}: {len(chosen)} people have a frontal (yaw 0) "
                                    f"image under {which} to serve as gallery; need at least 2")
    idx = np.array(sorted(i for _, i in chosen.values()), dtype=np.int64)
    return idx, ids[idx]


def _rank1_scores(probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray,
                  gallery_ids: np.ndarray) -> np.ndarray:
    """Tie-aware rank-1 score of each probe: 1/t when the best cosine similarity is shared
    by t gallery images, the right person among them; 0 when the right one is not best."""
    right, tied = _rank1_counts(probe_emb, probe_ids, gallery_emb, gallery_ids)
    return right / tied


def _rank1_counts(probe_emb: np.ndarray, probe_ids: np.ndarray, gallery_emb: np.ndarray,
                  gallery_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, tied) per probe, integers: the score is right / tied (see _rank1_scores)."""
    sims = probe_emb @ gallery_emb.T
    best = sims.max(axis=1, keepdims=True)
    tied = sims >= best - TIE_TOLERANCE
    right = gallery_ids[None, :] == probe_ids[:, None]
    return (tied & right).sum(axis=1), tied.sum(axis=1)


def _exact_mean(right: np.ndarray, tied: np.ndarray) -> float:
    """mean(right / tied) in exact fractions, then rounded once: a constant image, tied
    with all G gallery images, gives exactly float(1 / G)."""
    total = sum((Fraction(int(right[tied == t].sum()), int(t)) for t in np.unique(tied)),
                Fraction(0))
    return float(total / len(right))


def _summary(right: np.ndarray, tied: np.ndarray, yaws: Optional[np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {"rank1": _exact_mean(right, tied), "n": int(len(right)), "per_yaw": {}}
    if yaws is not None:
        for v in np.unique(yaws):
            m = yaws == v
            out["per_yaw"][_label_value(v)] = {"rank1": _exact_mean(right[m], tied[m]),
                                               "n": int(m.sum())}
    return out


def _probe_mask(split: PairDataset, gallery_idx: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    mask = np.isin(identity_labels(split), gallery_ids)
    mask[gallery_idx] = False
    if not mask.any():
        raise IdentityProtocolError(f"{split.name}: no probe left once the gallery images are "
                                    f"taken out")
    return mask


def identity_rank1(probes: Any, split: PairDataset, recognizer_or_embed_fn: EmbedderLike,
                   gallery_light: Optional[int] = None, neutral_light: int = 0) -> dict[str, Any]:
    """Rank-1 identification of `probes` (N, C, H, W), aligned with split's pairs (e.g. G's
    outputs for split.inputs), against the gallery of choose_gallery(split).

    recognizer_or_embed_fn: a Recognizer, Eigenfaces, or any function images -> (N, d)
    embeddings (they are L2-normalised here). Pairs whose input is a gallery image, and
    pairs of people without a gallery image, are not probes. Tie-aware (see the module
    docstring).

    Returns {"rank1": overall, "n": number of probes, "n_gallery": G, "chance": 1/G,
    "per_yaw": {yaw: {"rank1", "n"}}} (per_yaw empty without a yaw label).
    IdentityProtocolError (a ValueError) when the split does not allow the protocol.
    """
    if getattr(probes, "shape", None) != split.inputs.shape:
        raise ValueError(f"probes must be aligned with the split's pairs, shape "
                         f"{split.inputs.shape}, got {getattr(probes, 'shape', None)}")
    g_idx, g_ids = choose_gallery(split, gallery_light, neutral_light)
    mask = _probe_mask(split, g_idx, g_ids)
    embed = _embed_fn(recognizer_or_embed_fn)
    counts = _rank1_counts(embed(to_numpy(probes)[mask]), identity_labels(split)[mask],
                           embed(to_numpy(split.inputs)[g_idx]), g_ids)
    yaws = np.asarray(split.labels["yaw"])[mask]
    return {**_summary(*counts, yaws), "n_gallery": int(len(g_idx)), "chance": 1.0 / len(g_idx)}


IDENTITY_ROWS = ("outputs", "inputs", "targets", "chance")


def identity_report(outputs: Any, split: PairDataset, recognizer: EmbedderLike,
                    gallery_light: Optional[int] = None, neutral_light: int = 0,
                    rows: Sequence[str] = IDENTITY_ROWS
                    ) -> tuple[Optional[dict[str, Any]], str]:
    """Rank-1 (overall and per yaw) of up to four probe sets against one gallery:

        outputs   G's outputs for split.inputs
        inputs    the raw inputs (what G starts from)
        targets   the true targets (this recognizer's ceiling on this gallery)
        chance    1 / number of gallery people

    rows: which of them to compute (default all; the references inputs, targets and chance
    are the same for every run on a split, so a caller scoring many runs computes them once).

    Returns (report, note): report = {"n_gallery", "n_probes", "gallery_light",
    "rows": {name: {"rank1", "n", "per_yaw"}}}, and a one-line note describing the gallery;
    (None, why) when the data does not allow the protocol (no identity or yaw label, no
    frontal non-neutral image). Never raises for such data.
    """
    unknown = [r for r in rows if r not in IDENTITY_ROWS]
    if unknown:
        raise ValueError(f"identity_report: rows must be among {IDENTITY_ROWS}, got {unknown}")
    try:
        if getattr(outputs, "shape", None) != split.inputs.shape:
            raise ValueError(f"outputs must be aligned with the split's pairs, shape "
                             f"{split.inputs.shape}, got {getattr(outputs, 'shape', None)}")
        g_idx, g_ids = choose_gallery(split, gallery_light, neutral_light)
        mask = _probe_mask(split, g_idx, g_ids)
    except IdentityProtocolError as e:
        return None, f"identity rank-1 skipped: {e}"
    embed = _embed_fn(recognizer)
    ids = identity_labels(split)[mask]
    yaws = np.asarray(split.labels["yaw"])[mask]
    gallery = embed(to_numpy(split.inputs)[g_idx])
    wanted, rows = rows, {}
    for name, probes in (("outputs", outputs), ("inputs", split.inputs),
                         ("targets", split.targets)):
        if name in wanted:
            rows[name] = _summary(*_rank1_counts(embed(to_numpy(probes)[mask]), ids, gallery,
                                                 g_ids), yaws)
    n_probes = int(mask.sum())
    if "chance" in wanted:
        rows["chance"] = _summary(np.ones(n_probes, np.int64), np.full(n_probes, len(g_idx)),
                                  yaws)
    lights = sorted({_label_value(v) for v in np.asarray(split.labels["light"])[g_idx]}) \
        if "light" in split.labels else []
    report = {"n_gallery": int(len(g_idx)), "n_probes": int(mask.sum()),
              "gallery_light": lights, "rows": rows}
    light_txt = f" under light {', '.join(map(str, lights))}" if lights else ""
    note = (f"identity rank-1: gallery = one frontal (yaw 0) image{light_txt} of each of the "
            f"{len(g_idx)} {split.name} people; {int(mask.sum())} probes")
    return report, note


def realism_distance(outputs: Any, targets: Any, recognizer: EmbedderLike) -> float:
    """Frechet distance (metrics.frechet_distance, FID-style) between the recognizer's
    L2-normalised embeddings (those identity_rank1 compares) of outputs and of targets.

    Normalised embeddings keep the number on one scale whatever the recognizer learned
    (raw embedding lengths vary from one training to the next by orders of magnitude):
    0 = the outputs are distributed like the targets; a collapse to one face (the mean
    face) gives about 1. Only comparable between runs scored with the same recognizer on
    the same split: it is biased upward for small sets, and the targets of a split repeat
    each person's one frontal image. Not comparable to published FIDs (not Inception)."""
    embed = _embed_fn(recognizer)
    return frechet_distance(embed(to_numpy(outputs)), embed(to_numpy(targets)))
