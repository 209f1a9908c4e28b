"""The README's table of the default run over several seeds, from the runs' quality.json.

    for s in 0 1 2 3 4; do python -m gasca_core.train --seed $s --out runs/deep_s$s; done
    python tools/seeds_table.py runs/deep_s0 runs/deep_s1 runs/deep_s2 runs/deep_s3 runs/deep_s4

Prints one row per run (test split: MSE, SSIM, sharpness, artefact, realism, identity
rank-1 of the outputs and of the raw inputs, rank-1 of the outputs at the yaws where the
raw inputs are hardest to beat) and a last row of mean [95% interval] (Student t,
gasca_core.statistics.mean_ci), then which of the default run's targets each run meets:
identity rank-1 of the outputs at least the raw inputs' at every yaw (at 0 degrees the
raw inputs are at this recognizer's ceiling, so the outputs can at best tie), within 5
points of the targets' rank-1 at -30 and +30, artefact within 10% of the targets'
(<= 1.10), SSIM >= 0.85.
"""
import argparse
import json
import os

from gasca_core.statistics import mean_ci

YAWS = ("-30", "-15", "0", "15", "30")


def read(run_dir: str) -> dict:
    path = os.path.join(run_dir, "quality.json")
    try:
        with open(path, encoding="utf-8") as f:
            q = json.load(f)
    except (OSError, ValueError) as e:
        raise SystemExit(f"{run_dir}: cannot read quality.json ({e}); it is written by "
                         f"python -m gasca_core.train at the end of a run")
    rec = (q.get("identity") or {}).get("recognizer")
    if not rec:
        raise SystemExit(f"{run_dir}: quality.json has no identity rows (dataset without "
                         f"identity labels?)")
    rows = rec["rows"]
    out = rows["outputs"]
    o = q["overall"]["outputs"]
    per = {y: out["per_yaw"][y]["rank1"] for y in out["per_yaw"]}
    inp = {y: rows["inputs"]["per_yaw"][y]["rank1"] for y in rows["inputs"]["per_yaw"]}
    tgt = {y: rows["targets"]["per_yaw"][y]["rank1"] for y in rows["targets"]["per_yaw"]}
    return dict(name=os.path.basename(os.path.normpath(run_dir)), mse=o["mse"], ssim=o["ssim"],
                sharpness=o["sharpness"], artefact=o["artefact"], realism=o["realism"],
                rank1=out["rank1"], rank1_inputs=rows["inputs"]["rank1"], per=per, inp=inp,
                tgt=tgt)


def targets_met(r: dict) -> dict:
    return {"SSIM >= 0.85": r["ssim"] >= 0.85,
            "rank-1 >= raw inputs' at every yaw": all(r["per"][y] >= r["inp"][y] for y in r["per"]),
            "within 5 points of the ceiling at -30 and +30":
                all(r["per"][y] >= r["tgt"][y] - 0.05 for y in ("-30", "30")),
            "artefact <= 1.10": r["artefact"] <= 1.10}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (python -m gasca_core.train --out)")
    runs = [read(d) for d in p.parse_args().runs]
    cols = ["mse", "ssim", "sharpness", "artefact", "realism", "rank1", "rank1_inputs"]
    fmt = {"mse": "{:.5f}", "realism": "{:.3f}"}
    head = ["run", "test MSE", "SSIM", "sharpness", "artefact", "realism", "rank-1 outputs",
            "rank-1 raw inputs", "rank-1 at " + " / ".join(YAWS) + " (raw inputs)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in runs:
        cells = [fmt.get(c, "{:.3f}").format(r[c]) for c in cols]
        yaw = " / ".join(f"{r['per'][y]:.3f}" for y in YAWS)
        yaw_in = " / ".join(f"{r['inp'][y]:.3f}" for y in YAWS)
        print(f"| {r['name']} | " + " | ".join(cells) + f" | {yaw} ({yaw_in}) |")
    if len(runs) > 1:
        cells = []
        for c in cols:
            m, h = mean_ci([r[c] for r in runs])
            f = fmt.get(c, "{:.3f}")
            cells.append(f"{f.format(m)} [{f.format(m - h)}, {f.format(m + h)}]")
        yaw = " / ".join(f"{mean_ci([r['per'][y] for r in runs])[0]:.3f}" for y in YAWS)
        print("| mean [95% CI] | " + " | ".join(cells) + f" | {yaw} |")
    print()
    met = [targets_met(r) for r in runs]
    for t in met[0]:
        ok = [r["name"] for r, m in zip(runs, met) if m[t]]
        print(f"- {t}: {len(ok)} of {len(runs)} runs ({', '.join(ok) or 'none'})")


if __name__ == "__main__":
    main()
