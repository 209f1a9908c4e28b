"""The named random streams: every random draw gasca_core makes comes from one of these.

A stream is ``numpy.random.default_rng([seed, id, *keys])``: a pure function of the run's
seed, the stream's id and its keys (a level, a phase, an epoch), so that any draw can be
made again without replaying the ones before it. That is what makes a resumed run exact:
the batches of epoch e of phase p are the same whether the run was interrupted or not.

    stream              id   keys              used for
    init-G              0    level             initial weights of G's level k
    init-D              1    level             initial weights of D's level k
    split               1    -                 which people go to train / val / test
    subset              2    -                 the random subset kept by --max-train
    classifier-head     5    -                 the classify tool's linear head
    batches             7    [phase,] epoch    the order of the pairs in one epoch
    classifier-batches  11   epoch             the classify tool's batches
    classifier-holdout  -    -                 the classify tool's held-out images: [seed]
    recognizer-init     13   -                 initial weights of the face recognizer (recognition.py)
    recognizer-batches  17   epoch             the recognizer's training batches
    recognizer-augment  19   step              the recognizer's shifts and brightness/contrast jitter
    preview             -    -                 which pairs `python -m gasca_core.data preview` shows
    multipie-tree       23   subject, session, recording, camera   where the generated Multi-PIE-shaped tree puts a face
    multipie-tree-missing 29 -                 which recordings of that tree lose their target

and one family of its own: person i of the synthetic faces draws its face from
person_stream(data_seed, i), the i-th child of SeedSequence(data_seed), so that a person's
face does not depend on how many people are rendered.

gasca_core.manual_seed (init.py) seeds the global generator that layers built without an
rng= draw from, as torch.manual_seed does; the trainer and the tools never use it.

Seed lists of different lengths seed different streams, so "init-D" ([seed, 1, k]) and
"split" ([seed, 1]) never repeat each other. The ids are the ones the first release used:
changing one changes every result that depends on it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

STREAMS: dict[str, Optional[int]] = {
    "init-G": 0,
    "init-D": 1,
    "split": 1,
    "subset": 2,
    "classifier-head": 5,
    "batches": 7,
    "classifier-batches": 11,
    "classifier-holdout": None,  # seeded by [seed] alone, as the first release did
    "recognizer-init": 13,
    "recognizer-batches": 17,
    "recognizer-augment": 19,
    "preview": None,
    "multipie-tree": 23,
    "multipie-tree-missing": 29,
}


def stream(name: str, seed: int, *keys: int) -> np.random.Generator:
    """The generator of stream `name` for this seed and keys (see the table above)."""
    try:
        ident = STREAMS[name]
    except KeyError:
        raise ValueError(f"unknown random stream {name!r}; the streams are "
                         f"{', '.join(STREAMS)}") from None
    if ident is None:
        return np.random.default_rng([int(seed), *(int(k) for k in keys)])
    return np.random.default_rng([int(seed), ident, *(int(k) for k in keys)])


def person_stream(data_seed: int, person: int) -> np.random.Generator:
    """The generator of synthetic person `person`: SeedSequence(data_seed).spawn(n)[person]
    for any n > person."""
    return np.random.default_rng(np.random.SeedSequence(int(data_seed), spawn_key=(int(person),)))
