"""One row of the screen in docs/EXPERIMENTS.md: train one setting, score the VALIDATION split.

    python tools/screen.py --tag l --channels 16,32,64,128,128 --kernel-sizes 4,4,4,4,4 \
        --steps 6000 --out screen/

Trains with gasca_core's Trainer exactly as `python -m gasca_core.train` does (no
checkpoints or per-phase validation, to keep it short), then appends one JSON line with the
validation MSE / PSNR / SSIM, sharpness and (unless --no-quality) the identity rank-1
overall and per yaw, artefact and realism figures of evaluation.quality_metrics to
OUT/results.jsonl and saves OUT/TAG.png
(rows: input, output, target for 8 validation pairs).  Settings are chosen on these
figures; the test split is never read here.
"""
import argparse
import json
import os
import time

import numpy as np

from gasca_core.data import get_splits
from gasca_core.data.grid import save_image_grid
from gasca_core.evaluation import predict, quality_metrics
from gasca_core.metrics import sharpness_ratio, summarize
from gasca_core.models import DECODERS, GascaConfig
from gasca_core.training import LR_SCHEDULES, METHODS, Trainer, TrainConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", required=True, help="the row's name (file names, results line)")
    p.add_argument("--out", default="screen", help="directory for results.jsonl and the grids")
    p.add_argument("--people", type=int, default=337, help="synthetic people (n_identities)")
    p.add_argument("--channels", default="32,64,128")
    p.add_argument("--kernel-sizes", default="5,5,3")
    p.add_argument("--decoder", choices=DECODERS, default="transposed")
    p.add_argument("--method", choices=METHODS, default="gangglw")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant")
    p.add_argument("--adv-weight", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--finetune-share", type=float, default=TrainConfig.finetune_share)
    p.add_argument("--no-quality", action="store_true",
                   help="skip identity, artefact and realism (evaluation.quality_metrics)")
    a = p.parse_args()
    train, val, _ = get_splits("synthetic-faces", seed=0, n_identities=a.people)
    mc = GascaConfig(channels=[int(c) for c in a.channels.split(",")],
                     kernel_sizes=[int(k) for k in a.kernel_sizes.split(",")],
                     decoder=a.decoder, name="screen")
    tc = TrainConfig(method=a.method, steps=a.steps, lr=a.lr, lr_schedule=a.lr_schedule,
                     adv_weight=a.adv_weight, seed=a.seed, batch_size=a.batch_size,
                     finetune_share=a.finetune_share, checkpoint_every=10**9,
                     eval_every=10**9)
    t0 = time.perf_counter()
    trainer = Trainer(mc, tc, train, val, out_dir=None, progress=False, log=lambda s: None)
    final = trainer.run()
    out = predict(trainer.G, val.inputs)
    m = summarize(out, val.targets)
    row = dict(tag=a.tag, people=a.people, channels=a.channels, kernel_sizes=a.kernel_sizes,
               decoder=a.decoder, method=a.method, steps=a.steps, lr=a.lr,
               lr_schedule=a.lr_schedule, adv_weight=a.adv_weight, seed=a.seed,
               n_train=len(train), val_mse=m["mse"], val_psnr=m["psnr"], val_ssim=m["ssim"],
               batch_size=a.batch_size, finetune_share=a.finetune_share,
               sharpness=sharpness_ratio(out, val.targets), train_seconds=final["train_seconds"],
               wall_seconds=time.perf_counter() - t0)
    if not a.no_quality:
        q = quality_metrics(out, val, train)
        rec = q["identity"]["recognizer"]["rows"]
        row.update(artefact=q["overall"]["outputs"]["artefact"],
                   realism=q["overall"]["outputs"]["realism"],
                   rank1=rec["outputs"]["rank1"], rank1_inputs=rec["inputs"]["rank1"],
                   rank1_targets=rec["targets"]["rank1"],
                   rank1_per_yaw={y: v["rank1"] for y, v in rec["outputs"]["per_yaw"].items()},
                   rank1_inputs_per_yaw={y: v["rank1"]
                                         for y, v in rec["inputs"]["per_yaw"].items()})
    os.makedirs(a.out, exist_ok=True)
    idx = np.linspace(0, len(val) - 1, 8).astype(int)
    save_image_grid([val.inputs[idx], out[idx], val.targets[idx]], os.path.join(a.out, f"{a.tag}.png"))
    with open(os.path.join(a.out, "results.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
