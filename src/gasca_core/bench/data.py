"""python -m gasca_core.bench.data: the full-size data path, measured.

    python -m gasca_core.bench.data --work DIR [--pairs 100000] [--steps 300]

1. writes a Multi-PIE-shaped tree of 640 x 480 frames big enough for --pairs input images
   (gasca_core.data.multipie_tree; every head-height camera, 20 flashes, 4 sessions),
   unless DIR/tree holds one already (it continues an interrupted one);
2. prepares it into DIR/cache (python -m gasca_core.data prepare), timed: images per second;
3. trains on the cache for --steps generator updates in a child process (the default
   architecture and batch), reading the child's peak resident memory (VmHWM) and
   comparing it with the dataset's size decoded as float32 and with the stated bound
   (docs: README, "Real datasets at full size").

A benchmark, not a test: run it on an otherwise idle machine. Its figures are printed and
written to DIR/bench_data.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..data.cache import cache_summary, prepare_cache
from ..data.multipie_tree import write_multipie_tree

HEAD_HEIGHT = ("110", "120", "090", "080", "130", "140", "051", "050", "041", "190", "200",
               "010", "240")
FLASHES = tuple(range(20))
SESSIONS = (1, 2, 3, 4)


def subjects_for(pairs: int) -> int:
    """People so that every head-height camera x 20 flashes x 4 sessions gives >= pairs."""
    per_subject = len(HEAD_HEIGHT) * len(FLASHES) * len(SESSIONS)
    return -(-int(pairs) // per_subject)


def _peak_rss_of(cmd: list[str], env: dict) -> tuple[int, float, str]:
    """Run cmd; (its peak resident set in bytes (VmHWM, sampled), seconds, its output tail)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = 0
    status = f"/proc/{proc.pid}/status"
    out_lines: list[str] = []
    import threading

    def drain() -> None:
        for line in proc.stdout:   # type: ignore[union-attr]
            out_lines.append(line)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.2)
    reader.join(timeout=5)
    if proc.returncode != 0:
        raise SystemExit(f"training failed ({proc.returncode}):\n{''.join(out_lines[-30:])}")
    return peak, time.perf_counter() - t0, "".join(out_lines[-5:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gasca_core.bench.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="working directory (tree, cache, run)")
    ap.add_argument("--pairs", type=int, default=100_000, help="input images (pairs) at least")
    ap.add_argument("--steps", type=int, default=300, help="generator updates to train")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    workers = args.workers or os.cpu_count() or 1
    report: dict = {"pairs_asked": args.pairs, "workers": workers}

    n = subjects_for(args.pairs)
    t0 = time.perf_counter()
    tree = write_multipie_tree(work / "tree", n, SESSIONS, (1,), None, FLASHES, seed=0,
                               workers=workers, progress=True)
    report["tree"] = {**tree, "subjects": n, "seconds": time.perf_counter() - t0}
    print(f"tree: {tree['total']} frames ({tree['files']} written now) in "
          f"{report['tree']['seconds']:.0f} s", flush=True)

    t0 = time.perf_counter()
    cache = prepare_cache("multipie", work / "tree", work / "cache", 64, {}, workers=workers)
    secs = time.perf_counter() - t0
    summ = cache_summary(cache)
    report["prepare"] = {"images": summ["images"], "pairs": summ["pairs"], "seconds": secs,
                         "images_per_second": summ["images"] / secs if secs > 0 else None}
    print(f"prepare: {summ['images']} images ({summ['pairs']} pairs) in {secs:.0f} s = "
          f"{report['prepare']['images_per_second']:.0f} images/s", flush=True)
    decoded = summ["pairs"] * 2 * 64 * 64 * 4
    report["decoded_float32_bytes"] = decoded

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "gasca_core.train", "--data", str(cache), "--steps",
           str(args.steps), "--out", str(work / "run"), "--overwrite", "--no-progress",
           "--max-eval", "2000"]
    peak, secs, tail = _peak_rss_of(cmd, env)
    report["train"] = {"steps": args.steps, "peak_rss_bytes": peak, "seconds": secs,
                       "command": " ".join(cmd[1:])}
    print(f"training {args.steps} updates on the cache: peak resident {peak / 2**20:.0f} MiB "
          f"against {decoded / 2**30:.1f} GiB for the pairs decoded as float32 "
          f"({secs:.0f} s)\n{tail}", flush=True)
    with open(work / "bench_data.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
