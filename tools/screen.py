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
    wall = time.perf_counter() - t0   # training and prediction, not the scoring
    # quality_metrics' outputs row already holds MSE / PSNR / SSIM and sharpness: computed
    # once, not again beside it.
    q = None if a.no_quality else quality_metrics(out, val, train)
    o = q["overall"]["outputs"] if q else dict(summarize(out, val.targets),
                                               sharpness=sharpness_ratio(out, val.targets))
    row = dict(tag=a.tag, people=a.people, channels=a.channels, kernel_sizes=a.kernel_sizes,
               decoder=a.decoder, method=a.method, steps=a.steps, lr=a.lr,
               lr_schedule=a.lr_schedule, adv_weight=a.adv_weight, seed=a.seed,
               n_train=len(train), val_mse=o["mse"], val_psnr=o["psnr"], val_ssim=o["ssim"],
               batch_size=a.batch_size, finetune_share=a.finetune_share,
               sharpness=o["sharpness"], train_seconds=final["train_seconds"],
               wall_seconds=wall)
    rec = q and q["identity"]["recognizer"]
    if q:
        row.update(artefact=o["artefact"], realism=o.get("realism"))
    if rec:
        def per_yaw(name: str) -> dict:
            return {y: v["rank1"] for y, v in rec["rows"][name]["per_yaw"].items()}
        rows = rec["rows"]
        row.update(rank1=rows["outputs"]["rank1"], rank1_inputs=rows["inputs"]["rank1"],
                   rank1_targets=rows["targets"]["rank1"], rank1_per_yaw=per_yaw("outputs"),
                   rank1_inputs_per_yaw=per_yaw("inputs"))
    os.makedirs(a.out, exist_ok=True)
    idx = np.linspace(0, len(val) - 1, 8).astype(int)
    save_image_grid([val.inputs[idx], out[idx], val.targets[idx]], os.path.join(a.out, f"{a.tag}.png"))
    with open(os.path.join(a.out, "results.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
