"""python -m gasca_core.compare: its statistics (Student t confidence intervals on known
numbers), the fair clock in its runs, the adversarial-weight sweep and ablations, and
rebuilding the report from results.json."""
import json
import math
import os

import pytest

from gasca_core import statistics
from gasca_core.cli import compare
from gasca_core.training import TrainConfig, gangglw_d_ratio

TINY = ["--image-size", "16", "--channels", "4,6", "--kernel-sizes", "3,3", "--batch-size", "8"]


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory, shifted_pairs):
    return shifted_pairs(tmp_path_factory.mktemp("data") / "pairs.npz", yaws=True)


def test_student_t_quantiles_match_the_tables():
    for df, t in ((1, 12.706204736), (2, 4.302652730), (4, 2.776445105), (10, 2.228138852),
                  (30, 2.042272456), (100, 1.983971519)):
        assert statistics.student_t_975(df) == pytest.approx(t, abs=1e-8), df


def test_confidence_interval_on_known_numbers():
    mean, half = statistics.mean_ci([1.0, 2.0, 3.0])          # s = 1, n = 3, t(0.975, 2)
    assert mean == 2.0 and half == pytest.approx(4.302652730 / math.sqrt(3), rel=1e-9)
    mean, half = statistics.mean_ci([0.004, 0.006])           # s = sqrt(2) / 1000, t(0.975, 1)
    assert mean == pytest.approx(0.005) and half == pytest.approx(12.706204736 * 0.001, rel=1e-8)
    assert statistics.mean_ci([0.5]) == (0.5, None)           # one seed: no interval
    runs = [{"method": "joint", "budget": "steps", "adv_weight": 0.0, "seed": s, "test_mse": v,
             "g_updates": 10, "d_updates": 0, "train_seconds": 1.0, "wall_seconds": 2.0}
            for s, v in ((1, 1.0), (2, 2.0), (3, 3.0))]
    (row,) = compare.summarize_runs(runs, ["joint"], "steps", 0.0)
    assert row[:2] == ["joint", 3] and row[2] == f"2 [{2 - 2.484137:.4g}, {2 + 2.484137:.4g}]"
    (row,) = compare.summarize_runs(runs[:1], ["joint"], "steps", 0.0)
    assert row[2] == "1"       # one seed: the mean alone, no interval


def test_flags_are_checked():
    p = compare.build_parser()
    for bad in (["--d-ratio", "0"], ["--d-ratio", "1.5"], ["--adv-weights", "x"],
                ["--adv-weights", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    args = p.parse_args(["--adv-weights", "0,1e-4,1e-3", "--d-ratio", "0.5"])
    assert args.adv_weights == [0.0, 1e-4, 1e-3] and args.d_ratio == 0.5


def test_sweep_with_ablations_on_one_clock_and_the_report_rebuilt(tmp_path, npz_data):
    out = str(tmp_path / "cmp")
    assert compare.main(["--dataset", "npz", "--data", npz_data, "--steps", "8", "--seeds", "1",
                         "--adv-weights", "0.01", "--ablations", "--out", out] + TINY) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    runs = results["runs"]
    assert results["adv_weights"] == [0.0, 0.01]          # --ablations added "no D"
    for r in runs:
        for key in ("train_seconds", "wall_seconds", "g_updates", "d_updates", "phase_seconds"):
            assert r[key] is not None, key
        assert r["wall_seconds"] >= r["train_seconds"] > 0
        assert math.isclose(sum(r["phase_seconds"]), r["train_seconds"], rel_tol=1e-9)
        if r["adv_weight"] == 0:
            assert r["d_updates"] == 0 and not any(p.startswith("finetune_d") for p in r["phases"])
    # Equal time: every method gets joint's training-clock seconds (same seed and weight).
    for r in runs:
        if r["budget"] == "time" and r["variant"] != "joint":
            joint = next(j for j in runs if j["variant"] == "joint" and j["budget"] == "steps"
                         and j["adv_weight"] == r["adv_weight"])
            assert r["time_budget"] == joint["train_seconds"]
    ablation = [r for r in runs if r["variant"] == compare.JOINT_AT_GANGGLW_RATIO]
    assert {(r["adv_weight"], r["budget"]) for r in ablation} == {(0.01, "steps"), (0.01, "time")}
    ratio = gangglw_d_ratio(TrainConfig(steps=8, adv_weight=0.01), 2)
    steps_run = next(r for r in ablation if r["budget"] == "steps")
    assert steps_run["method"] == "joint" and steps_run["d_ratio"] == pytest.approx(ratio)
    assert steps_run["d_updates"] == math.floor(8 * ratio) and steps_run["g_updates"] == 8
    gangglw = next(r for r in runs if r["variant"] == "gangglw" and r["budget"] == "steps"
                   and r["adv_weight"] == 0.01)
    assert gangglw["d_updates"] / gangglw["g_updates"] == pytest.approx(ratio)

    report = open(os.path.join(out, "results.md")).read()
    for text in ("MSE [95% CI]", "SSIM [95% CI]", "rank-1 [95% CI]", "train s (clock)", "wall s", "D updates",
                 compare.JOINT_AT_GANGGLW_RATIO, "no D", "Every run", "Sweep"):
        assert text in report, text
    os.remove(os.path.join(out, "results.md"))
    assert compare.main(["--report-only", out]) == 0
    assert open(os.path.join(out, "results.md")).read() == report


def test_report_only_reads_a_results_file_of_the_first_format(tmp_path):
    """results.json written before the fair clock: no weights, variants or D updates."""
    runs = [{"method": m, "seed": 1, "test_mse": v, "g_updates": 400, "train_seconds": 10.0,
             "wall_seconds": 12.0, "per_yaw": {"0": v}, "budget": "steps"}
            for m, v in (("gangglw", 0.0064), ("joint", 0.0046))]
    (tmp_path / "results.json").write_text(json.dumps(
        {"args": {"adv_weight": 1e-4, "steps": 400, "dataset": "synthetic-faces"},
         "model_config": {"channels": [32, 64, 128], "hidden_activation": "leaky_relu"},
         "runs": runs}))
    assert compare.main(["--report-only", str(tmp_path)]) == 0
    report = (tmp_path / "results.md").read_text()
    assert "adversarial weight 0.0001" in report and "0.0064" in report


def test_learning_curves_run_every_method_at_every_budget(tmp_path, npz_data, capsys):
    out = str(tmp_path / "curve")
    assert compare.main(["--dataset", "npz", "--data", npz_data, "--curve", "20,10", "--seeds", "1,2",
                         "--methods", "gangglw,joint", "--out", out] + TINY) == 0
    # The header says what runs: the curve's budgets, not the comparison's default --steps.
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("learning curves of ['gangglw', 'joint']") and "[10, 20] G updates" in header
    runs = json.load(open(os.path.join(out, "curves.json")))["runs"]
    assert sorted((r["method"], r["steps"], r["seed"]) for r in runs) == sorted(
        (m, b, s) for m in ("gangglw", "joint") for b in (10, 20) for s in (1, 2))
    assert all(r["g_updates"] == r["steps"] and r["train_seconds"] > 0 for r in runs)
    table = open(os.path.join(out, "curves.md")).read()
    assert table.count("| gangglw ") == 2 and table.count("| joint ") == 2


def test_runs_split_over_processes_merge_into_one_report(tmp_path, npz_data, capsys):
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "merged"))
    for d, seed in ((a, "1"), (b, "2")):
        assert compare.main(["--dataset", "npz", "--data", npz_data, "--steps", "8", "--seeds", seed,
                             "--budget", "steps", "--methods", "joint,glw", "--out", d] + TINY) == 0
    assert compare.main(["--report-only", f"{a},{b}", "--out", out]) == 0
    merged = json.load(open(os.path.join(out, "results.json")))
    assert sorted((r["variant"], r["seed"]) for r in merged["runs"]) == \
        [("glw", 1), ("glw", 2), ("joint", 1), ("joint", 2)]
    report = open(os.path.join(out, "results.md")).read()
    assert "Merged from" in report and "| joint " in report
    other = str(tmp_path / "other")
    assert compare.main(["--dataset", "npz", "--data", npz_data, "--steps", "8", "--seeds", "1",
                         "--budget", "steps", "--methods", "glw", "--out", other] + TINY[:2]
                        + ["--channels", "4,6,8", "--kernel-sizes", "3,3,3", "--batch-size", "8"]) == 0
    with pytest.raises(SystemExit):   # another architecture: refused
        compare.main(["--report-only", f"{a},{other}", "--out", str(tmp_path / "bad")])
    lr = str(tmp_path / "lr")
    assert compare.main(["--dataset", "npz", "--data", npz_data, "--steps", "8", "--seeds", "3",
                         "--budget", "steps", "--methods", "glw", "--lr", "0.01", "--out", lr]
                        + TINY) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):   # another learning rate: refused, and said why
        compare.main(["--report-only", f"{a},{lr}", "--out", str(tmp_path / "bad")])
    assert "--lr 0.01" in capsys.readouterr().err


def test_merging_parts_of_other_code_modes_is_refused_only_for_equal_time_runs(capsys):
    """--codes changes what a second buys, not the floats of a run at equal updates: parts
    run with per-batch and with in-memory codes merge at equal updates and are refused when
    a part holds equal-time runs."""
    from gasca_core.cli.compare import merge_results

    def part(codes, budget):
        run = {"method": "glw", "seed": 1, "test_mse": 0.01, "budget": budget, "adv_weight": 0.0}
        return {"args": {"steps": 8, "codes": codes}, "model_config": {}, "data": None,
                "budgets": [budget], "runs": [run]}
    merged = merge_results([part("memory", "steps"), part("per-batch", "steps")], ["a", "b"])
    assert len(merged["runs"]) == 2
    with pytest.raises(SystemExit):
        merge_results([part("memory", "time"), part("per-batch", "time")], ["a", "b"])
    assert "--codes per-batch" in capsys.readouterr().err


def test_learning_curves_split_over_processes_merge_and_untimed_runs_keep_off_the_clock(
        tmp_path, npz_data, capsys):
    """--curve runs of other seeds merge with --report-only; runs made with
    --shared-machine count in every figure but the seconds (the clock column and the
    chart's clock axis), and the report says how many were left out."""
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "merged"))
    base = ["--dataset", "npz", "--data", npz_data, "--curve", "6,12", "--methods", "joint,glw"] + TINY
    assert compare.main(base + ["--seeds", "1", "--out", a]) == 0
    assert compare.main(base + ["--seeds", "2", "--out", b, "--shared-machine"]) == 0
    runs_b = json.load(open(os.path.join(b, "curves.json")))["runs"]
    assert runs_b and all(r["timed"] is False for r in runs_b)
    assert compare.main(["--report-only", f"{a},{b}", "--out", out]) == 0
    merged = json.load(open(os.path.join(out, "curves.json")))
    assert sorted({r["seed"] for r in merged["runs"]}) == [1, 2] and len(merged["runs"]) == 8
    table = open(os.path.join(out, "curves.md")).read()
    rows = [line for line in table.splitlines() if line.startswith("| joint ")]
    assert len(rows) == 2 and all(line.split("|")[3].strip() == "2" for line in rows)   # runs
    assert all(line.split("|")[-2].strip() == "1" for line in rows)                    # timed
    seconds = [float(line.split("|")[-3]) for line in rows]
    timed_a = [r["train_seconds"] for r in json.load(open(os.path.join(a, "curves.json")))["runs"]
               if r["method"] == "joint"]
    assert seconds == pytest.approx(sorted(timed_a), rel=1e-3) or \
        seconds == pytest.approx(timed_a, rel=1e-3)
    assert "4 of the 8 runs shared the machine" in table
    capsys.readouterr()
    with pytest.raises(SystemExit):   # a curve and a comparison cannot be merged
        compare.main(["--report-only", f"{a},{tmp_path}", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit):   # equal-time budgets are seconds: refused
        compare.main(["--dataset", "npz", "--data", npz_data, "--budget", "time",
                      "--shared-machine", "--out", str(tmp_path / "t")] + TINY)
    assert "--shared-machine" in capsys.readouterr().err
