"""GASCA models: shallow convolutional autoencoders, the generator stack G that grows in the
middle, and the discriminator stack D that grows one conv layer at a time under a head.

This module is the only place where levels of G and D are built (`grow`); the trainer,
the checkpoint loader and the tools all call it.  Shapes are NCHW.  With the default
"gasca-64" configuration (docs/DESIGN.md walks through it):

    level k | encoder of G^k               | decoder of G^k                        | conv of D^k
    1       | conv 1->32,  k5 s2 p2, LReLU  | convT 32->1,   k5 s2 p2 op1, Sigmoid   | conv 1->32,  k5 s2 p2
    2       | conv 32->64, k5 s2 p2, LReLU  | convT 64->32,  k5 s2 p2 op1, LReLU     | conv 32->64, k5 s2 p2
    3       | conv 64->128,k3 s2 p1, LReLU  | convT 128->64, k3 s2 p1 op1, LReLU     | conv 64->128,k3 s2 p1

A 1x64x64 image becomes a 32x32x32, 64x16x16, then 128x8x8 code.  Every D^k also owns a
head (flatten -> linear -> one logit) sized for the code it sees; the full D is
conv_1 ... conv_k followed by the newest head.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import nn
from .rng import stream
from .tensor import Tensor

ACTIVATIONS = ("leaky_relu", "relu", "sigmoid", "tanh", "identity")
DECODERS = ("transposed", "resize")


@dataclass
class GascaConfig:
    """Architecture of a GASCA model: saved with every checkpoint.

    channels[k-1], kernel_sizes[k-1], paddings[k-1] describe level k (k = 1..levels); the
    encoder of level k maps channels[k-2] (or in_channels) to channels[k-1] with stride 2.
    """
    in_channels: int = 1
    image_size: int = 64
    channels: list = field(default_factory=lambda: [32, 64, 128])
    kernel_sizes: list = field(default_factory=lambda: [5, 5, 3])
    paddings: Optional[list] = None          # default: kernel_size // 2 ("same" before the stride)
    stride: int = 2
    hidden_activation: str = "leaky_relu"     # encoders, and decoders of levels >= 2
    output_activation: str = "sigmoid"        # the decoder of level 1 (the image)
    leaky_slope: float = 0.2
    disc_channels: Optional[list] = None      # default: the generator's channels
    disc_activation: str = "leaky_relu"
    decoder: str = "transposed"               # or "resize": upsample (nearest), then conv
    # Levels (1-based) of G whose encoder convolution and decoder (transposed) convolution
    # have mirror-symmetric kernels (nn.SymmetricConv2d / SymmetricConvTranspose2d: about
    # half the weights).  D stays plain.
    symmetric_levels: list = field(default_factory=list)
    # Levels (1-based) of G whose encoder and decoder convolutions get a global path
    # (nn.LocalGlobal: the input pooled to a local_global_grid^2 map, one matrix, added at
    # every output pixel; zero at the start).  D stays plain.
    local_global_levels: list = field(default_factory=list)
    local_global_grid: int = 4
    name: str = "gasca-64"

    def layer_variant(self) -> str:
        """How G's layers depart from plain convolutions, for logs and table rows:
        "symmetric levels 1,2; local+global levels 3 (grid 4)", or "" for plain layers."""
        parts = []
        if self.symmetric_levels:
            parts.append("symmetric levels " + ",".join(map(str, self.symmetric_levels)))
        if self.local_global_levels:
            parts.append("local+global levels " + ",".join(map(str, self.local_global_levels))
                         + f" (grid {self.local_global_grid})")
        return "; ".join(parts)

    def __post_init__(self) -> None:
        self.channels = [int(c) for c in self.channels]
        self.kernel_sizes = [int(k) for k in self.kernel_sizes]
        if self.paddings is None:
            # "same" before the stride: k // 2 for odd k; (k - stride) // 2 for even k, whose
            # transposed convolution then overlaps evenly (every output pixel gets k / s taps)
            self.paddings = [k // 2 if k % 2 else max(0, (k - self.stride) // 2)
                             for k in self.kernel_sizes]
        self.paddings = [int(p) for p in self.paddings]
        if self.disc_channels is None:
            self.disc_channels = list(self.channels)
        self.disc_channels = [int(c) for c in self.disc_channels]
        self.symmetric_levels = sorted(int(k) for k in self.symmetric_levels)
        self.local_global_levels = sorted(int(k) for k in self.local_global_levels)
        self.local_global_grid = int(self.local_global_grid)
        self.validate()

    @property
    def levels(self) -> int:
        return len(self.channels)

    def validate(self) -> None:
        n = len(self.channels)
        if n < 1:
            raise ValueError("GascaConfig.channels must name at least one level")
        for name in ("kernel_sizes", "paddings", "disc_channels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"GascaConfig.{name} has {len(getattr(self, name))} entries, "
                                 f"expected one per level ({n})")
        if any(c < 1 for c in self.channels + self.disc_channels) or self.in_channels < 1:
            raise ValueError(f"channel counts must be >= 1, got {self.channels}")
        for act in (self.hidden_activation, self.output_activation, self.disc_activation):
            if act not in ACTIVATIONS:
                raise ValueError(f"unknown activation '{act}', expected one of {ACTIVATIONS}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        for name in ("symmetric_levels", "local_global_levels"):
            levels = getattr(self, name)
            if len(set(levels)) != len(levels) or any(not 1 <= k <= n for k in levels):
                raise ValueError(f"GascaConfig.{name} {levels} must name distinct levels in 1..{n}")
        if self.local_global_grid < 1:
            raise ValueError(f"GascaConfig.local_global_grid must be >= 1, got {self.local_global_grid}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder '{self.decoder}', expected one of {DECODERS}")
        if self.decoder == "resize" and any(k % 2 == 0 or p != k // 2 for k, p in
                                            zip(self.kernel_sizes, self.paddings)):
            raise ValueError(f"decoder 'resize' convolves at stride 1 and needs odd kernel sizes "
                             f"with padding kernel_size // 2, got kernel sizes "
                             f"{self.kernel_sizes}, paddings {self.paddings}")
        size = self.image_size
        for k in range(n):
            if size % self.stride:
                raise ValueError(
                    f"image_size {self.image_size} is not divisible by stride^{k + 1}: level "
                    f"{k + 1} would see a {size}x{size} map; use an image size divisible by "
                    f"{self.stride ** n} or fewer levels")
            k_size, pad, s = self.kernel_sizes[k], self.paddings[k], self.stride
            code = (size + 2 * pad - k_size) // s + 1          # the encoder's output
            plain = (code - 1) * s - 2 * pad + k_size          # the decoder's, output_padding 0
            if code != size // s or not 0 <= size - plain < s:
                raise ValueError(
                    f"level {k + 1}: kernel size {k_size} with padding {pad} and stride {s} maps "
                    f"a {size}x{size} map to {code}x{code} and back to at most "
                    f"{plain + s - 1}x{plain + s - 1}; each level must halve the map and restore "
                    f"it exactly (an odd kernel size with padding kernel_size // 2, or an even "
                    f"one with padding (kernel_size - stride) // 2)")
            size //= self.stride
            if size < 1:
                raise ValueError(f"image_size {self.image_size} is too small for {n} levels")

    def output_padding(self, level: int) -> int:
        """The decoder of `level`'s output_padding: what restores the map exactly (s - 1 for
        an odd kernel with padding k // 2, 0 for an even kernel with padding (k - s) // 2)."""
        size = self.image_size // self.stride ** (level - 1)
        k, p, s = self.kernel_sizes[level - 1], self.paddings[level - 1], self.stride
        return size - ((size // s - 1) * s - 2 * p + k)

    def code_shape(self, level: int) -> tuple[int, int, int]:
        """(C, H, W) of the code after `level` encoders (level 0 = the image)."""
        c = self.in_channels if level == 0 else self.channels[level - 1]
        s = self.image_size // self.stride**level
        return (c, s, s)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GascaConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GascaConfig fields {sorted(unknown)}")
        return cls(**d)

    def __str__(self) -> str:
        return json.dumps(self.to_dict())


# The architectures the tools know by name (--arch).  Each is a set of GascaConfig fields;
# the others keep their defaults.  "gasca-64" is the paper's shapes and the one the kernel
# and step benchmarks measure, whatever the default of the training tools is.
# "gasca-64-deep" is the training tools' default (README, Results: why): five levels down
# to a 2x2 code, narrow where the maps are large, and kernels of size 4 (a multiple of the
# stride, so every transposed convolution overlaps evenly).
ARCHITECTURES: dict[str, dict] = {
    "gasca-64": {},
    "gasca-64-deep": {"channels": [16, 32, 64, 128, 128], "kernel_sizes": [4, 4, 4, 4, 4]},
}
DEFAULT_ARCHITECTURE = "gasca-64-deep"   # of the training tools (train, compare)


def architecture(name: str, **overrides) -> GascaConfig:
    """The named architecture (see ARCHITECTURES), with any fields overridden."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}', expected one of {sorted(ARCHITECTURES)}")
    return GascaConfig(**{**ARCHITECTURES[name], **overrides, "name": name})


def make_activation(name: str, slope: float = 0.2) -> nn.Module:
    if name == "leaky_relu":
        return nn.LeakyReLU(slope)
    if name == "relu":
        return nn.ReLU()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    if name == "identity":
        return nn.Identity()
    raise ValueError(f"unknown activation '{name}', expected one of {ACTIVATIONS}")


class ShallowAutoencoder(nn.Module):
    """G^k: one conv encoder + activation, one transposed-conv decoder + activation.

    Level k maps a (C_{k-1}, S, S) code to (C_k, S/2, S/2) and back to (C_{k-1}, S, S).
    """

    def __init__(self, config: GascaConfig, level: int, rng: np.random.Generator) -> None:
        super().__init__()
        if not 1 <= level <= config.levels:
            raise ValueError(f"level must be in 1..{config.levels}, got {level}")
        self.level = level
        c_in = config.code_shape(level - 1)[0]
        c_out = config.channels[level - 1]
        k, p, s = config.kernel_sizes[level - 1], config.paddings[level - 1], config.stride
        out_act = config.output_activation if level == 1 else config.hidden_activation
        symmetric = level in config.symmetric_levels
        conv = nn.SymmetricConv2d if symmetric else nn.Conv2d
        conv_t = nn.SymmetricConvTranspose2d if symmetric else nn.ConvTranspose2d
        def with_global(layer, cin, cout):
            if level not in config.local_global_levels:
                return layer
            return nn.LocalGlobal(layer, cin, cout, grid=config.local_global_grid)
        self.encoder = nn.Sequential(
            with_global(conv(c_in, c_out, k, stride=s, padding=p, rng=rng), c_in, c_out),
            make_activation(config.hidden_activation, config.leaky_slope))
        if config.decoder == "transposed":
            up = [with_global(conv_t(c_out, c_in, k, stride=s, padding=p,
                                     output_padding=config.output_padding(level), rng=rng),
                              c_out, c_in)]
        else:  # "resize": every code pixel becomes an s x s block, then a stride-1 conv
            up = [nn.Upsample(scale_factor=s),
                  with_global(conv(c_out, c_in, k, padding=p, rng=rng), c_out, c_in)]
        self.decoder = nn.Sequential(*up, make_activation(out_act, config.leaky_slope))

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class Generator(nn.Module):
    """G: a stack of shallow autoencoders, run as enc_1 .. enc_k, dec_k .. dec_1.

    `add_level` puts a new G^k in the middle: after the deepest encoder, before the
    deepest decoder.
    """

    def __init__(self, config: GascaConfig) -> None:
        super().__init__()
        self.config = config
        self.levels = nn.Sequential()

    @property
    def depth(self) -> int:
        return len(self.levels)

    def add_level(self, ae: ShallowAutoencoder) -> None:
        """Insert G^k (k = depth + 1) between the deepest encoder and the deepest decoder."""
        if ae.level != self.depth + 1:
            raise ValueError(f"the next level of a depth-{self.depth} generator is "
                             f"{self.depth + 1}, got a level-{ae.level} autoencoder")
        self.levels.append(ae)

    def encode(self, x: Tensor, depth: Optional[int] = None) -> Tensor:
        """The code after the first `depth` encoders (default: all)."""
        depth = self.depth if depth is None else depth
        for ae in list(self.levels)[:depth]:
            x = ae.encode(x)
        return x

    def decode(self, z: Tensor, depth: Optional[int] = None) -> Tensor:
        depth = self.depth if depth is None else depth
        for ae in reversed(list(self.levels)[:depth]):
            z = ae.decode(z)
        return z

    def forward(self, x: Tensor) -> Tensor:
        if self.depth == 0:
            raise RuntimeError("the generator has no levels yet")
        return self.decode(self.encode(x))

    def layer_order(self) -> list[str]:
        """Names of the conv layers in the order forward() runs them (for tests and docs)."""
        k = self.depth
        return [f"enc{i}" for i in range(1, k + 1)] + [f"dec{i}" for i in range(k, 0, -1)]


class DiscriminatorLevel(nn.Module):
    """D^k: conv_k + activation, and a head (flatten -> linear -> one logit) on its output."""

    def __init__(self, config: GascaConfig, level: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.level = level
        c_in = config.in_channels if level == 1 else config.disc_channels[level - 2]
        c_out = config.disc_channels[level - 1]
        k, p, s = config.kernel_sizes[level - 1], config.paddings[level - 1], config.stride
        size = config.image_size // s**level
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, c_out, k, stride=s, padding=p, rng=rng),
            make_activation(config.disc_activation, config.leaky_slope))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_out * size * size, 1, rng=rng))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x))


class Discriminator(nn.Module):
    """D: conv_1 .. conv_k, then one head -> (N, 1) logits.

    `add_level(D^k)` puts D^k's conv on top of the stack and makes D^k's head the head; the
    previous head, sized for the previous top, is dropped (it has nothing left to read).
    """

    def __init__(self, config: GascaConfig) -> None:
        super().__init__()
        self.config = config
        self.convs = nn.Sequential()
        self.head: Optional[nn.Module] = None

    @property
    def depth(self) -> int:
        return len(self.convs)

    def add_level(self, d: DiscriminatorLevel) -> None:
        """Put D^k's conv on top of the stack and make its head the head (k = depth + 1)."""
        if d.level != self.depth + 1:
            raise ValueError(f"the next level of a depth-{self.depth} discriminator is "
                             f"{self.depth + 1}, got level {d.level}")
        self.convs.append(d.conv)
        self.head = d.head

    def forward(self, x: Tensor) -> Tensor:
        if self.head is None:
            raise RuntimeError("the discriminator has no levels yet")
        return self.head(self.convs(x))


def grow(g: Generator, d: Optional[Discriminator], depth: int, seed: int,
         device: str = "cpu") -> None:
    """Add levels to G (and D, unless None) until they have `depth` levels.

    Level k of G draws its initial weights from the stream ("init-G", seed, k) and level k
    of D from ("init-D", seed, k) (see gasca_core.rng), so a level's initial weights do not
    depend on how or when it was built: all at once, one greedy stage at a time, or again
    on resume.
    """
    if d is not None and d.depth != g.depth:
        raise RuntimeError(f"G has {g.depth} levels and D {d.depth}: they grow together")
    while g.depth < depth:
        k = g.depth + 1
        g.add_level(ShallowAutoencoder(g.config, k, stream("init-G", seed, k)).to(device))
        if d is not None:
            d.add_level(DiscriminatorLevel(d.config, k, stream("init-D", seed, k)).to(device))


def parameter_counts(config: GascaConfig) -> tuple[int, int]:
    """(G's, D's) number of parameters with every level built (what training reports)."""
    g, d = build_full(config, seed=0)
    return g.num_parameters(), d.num_parameters()


def build_full(config: GascaConfig, seed: int, depth: Optional[int] = None
               ) -> tuple[Generator, Discriminator]:
    """G and D with `depth` levels (default: all), initialised as `grow` does."""
    g, d = Generator(config), Discriminator(config)
    grow(g, d, config.levels if depth is None else depth, seed)
    return g, d
