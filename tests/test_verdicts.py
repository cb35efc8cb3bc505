"""The report's verdicts: run directories written here with known final numbers (the files a run writes), the
report built from them, and its tables parsed and checked against scipy computed independently: Holm-corrected
paired tests, simultaneous intervals, effect sizes, bold only for a real winner, the mode ceiling and noise floor.
"""
import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from cgan_bench.report.build import build_report
from cgan_bench.report.tables import holm

SEEDS = [0, 1, 2, 3, 4]
FLOOR = {"floor_fid": 7.5, "floor_intra_fid_mean": 50.25, "floor_kid_mean": -0.0004, "floor_kid_sem": 0.0002,
         "floor_kid_subset_size": 1000,
         "floor_n_a": 5000, "floor_n_b": 5000}
PROTOCOL = {"feature_space": "digit_channels", "n_fake": 5000, "n_real": 5000, "n_generated": 10000,
            "real_split": "train", "isc_splits": 10}


def final_numbers(head: str, seed: int) -> dict:
    """Known per-seed values: concat much worse FID than projection, acgan within noise of projection,
    `none` ties projection exactly on class accuracy; modes from a fixed pattern."""
    rs = np.random.RandomState(100 + seed)
    base_fid = 100 + 10 * rs.randn()
    fid = {"projection": base_fid, "concat": base_fid + 40 + rs.randn(), "acgan": base_fid + 3 * rs.randn(),
           "none": base_fid + 200 + 5 * rs.randn()}[head]
    modes = {"projection": 90, "concat": 60, "acgan": 88, "none": 95}[head] + seed % 3
    return {"fid": fid, "is_mean": 8.0 + 0.1 * rs.randn(), "intra_fid_mean": 2 * fid, "kid_mean": fid / 1e4,
            "kid_std": 0.001, "kid_sem": 0.0001, "precision": 0.7, "recall": 0.5, "density": 0.9, "coverage": 0.8,
            "class_accuracy": 0.95 if head in ("projection", "none") else 0.9 + 0.01 * seed,
            "modes_covered_mean": float(modes), "modes_total": 10 * modes, "mode_kl_mean": 1.0 - modes / 100,
            "mode_collapsed_classes": 0, "real_modes_covered_mean": 99.9, "real_modes_total": 1000,
            "real_mode_kl_mean": 0.05, "collapsed_classes": 0, "diversity_ratio_mean": 0.9,
            "near_duplicate_rate_mean": 0.1, "class_coverage_mean": 0.7, **FLOOR, **PROTOCOL}


def write_run(root, head: str, seed: int) -> None:
    run = root / f"{head}_s{seed}"
    (run / ".hydra").mkdir(parents=True)
    cfg = {"seed": seed, "head": {"name": head}, "dataset": {"name": "stacked_digits", "resolution": 16},
           "train": {"n_dis": 2, "batch_d": 64, "batch_g": 128, "lr": 0.002, "beta1": 0.0, "beta2": 0.9},
           "model": {"g_ch": 32, "d_ch": 32}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"head={head}", f"seed={seed}"]))
    (run / "status.json").write_text(json.dumps({"state": "completed", "iteration": 10, "total_iterations": 10}))
    final = {"iteration": 10, "phase": "final", **final_numbers(head, seed)}
    curve = {**final, "iteration": 5, "phase": "curve"}
    (run / "metrics.jsonl").write_text(json.dumps(curve) + "\n" + json.dumps(final) + "\n")
    rows = [{"class": c, "intra_fid": final["intra_fid_mean"], "diversity_ratio": 0.9, "modes_covered": 90,
             "real_modes_covered": 100} for c in range(10)]
    (run / "per_class.csv").write_text(pd.DataFrame(rows).to_csv(index=False))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_sweep")
    for head in ("projection", "concat", "acgan", "none"):
        for seed in SEEDS:
            write_run(root / "sweep", head, seed)
    out = build_report(root / "sweep", root / "report", "stacked test")
    return out.read_text()


def table(md: str, heading: str) -> pd.DataFrame:
    block = md.split(f"## {heading}")[1].split("\n## ")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return pd.DataFrame(cells[2:], columns=cells[0])


def test_holm_matches_a_hand_computation():
    # sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> monotone: 0.06)
    assert holm([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_verdicts_are_holm_corrected_and_match_scipy(report):
    paired = table(report, "Each head against projection")
    for metric, key, scale in (("FID", "fid", 1), ("KID ×10³", "kid_mean", 1000),
                               ("modes covered per class (of 100)", "modes_covered_mean", 1)):
        rows = paired[paired["metric"] == metric].set_index("head")
        assert sorted(rows.index) == ["acgan", "concat", "none"]
        diffs = {h: scale * np.array([final_numbers(h, s)[key] - final_numbers("projection", s)[key] for s in SEEDS])
                 for h in rows.index}
        raw = {h: stats.ttest_1samp(d, 0).pvalue if d.std() > 0 else (0.0 if d.mean() else 1.0)
               for h, d in diffs.items()}
        order = sorted(raw, key=raw.get)  # Holm by hand: (m - rank) * p, running maximum
        adjusted, running = {}, 0.0
        for rank, h in enumerate(order):
            running = max(running, min(1.0, (len(order) - rank) * raw[h]))
            adjusted[h] = running
        for h, d in diffs.items():
            row = rows.loc[h]
            assert int(row["pairs"]) == 5
            assert float(row["difference"]) == pytest.approx(d.mean(), rel=1e-3, abs=1e-3)
            assert float(row["p_holm"]) == pytest.approx(adjusted[h], rel=1e-3, abs=1e-6)
            half = stats.t.ppf(1 - 0.05 / 3 / 2, 4) * d.std(ddof=1) / math.sqrt(5)  # simultaneous, m = 3
            if half > 0:
                # the markdown keeps 4 significant digits
                assert float(row["ci_high"]) - float(row["ci_low"]) == pytest.approx(2 * half, rel=5e-3)
                assert float(row["effect_dz"]) == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-3)
    fid = paired[paired["metric"] == "FID"].set_index("head")
    assert fid.loc["concat", "verdict"] == "worse than projection"
    assert fid.loc["acgan", "verdict"] == "no clear difference"
    assert float(fid.loc["concat", "reference"]) == pytest.approx(FLOOR["floor_fid"])
    modes = paired[paired["metric"] == "modes covered per class (of 100)"].set_index("head")
    assert modes.loc["concat", "verdict"] == "worse than projection"
    assert float(modes.loc["concat", "reference"]) == pytest.approx(99.9)


def test_bold_only_for_a_real_winner(report):
    main = table(report, "Main table").set_index("head")
    fid = main["stacked_digits FID"]
    # projection and acgan are within noise of each other: no bold anywhere in the column
    assert not any(cell.startswith("**") for cell in fid)
    extra = table(report, "Intra-class and distribution metrics").set_index("head")
    # class accuracy: projection and none tie exactly (0.95 each) -> no bold
    assert not any(cell.startswith("**") for cell in extra["stacked_digits class acc."])
    # identical values everywhere (0 collapsed classes): no bold on a tie
    assert not any(cell.startswith("**") for cell in extra["stacked_digits collapsed classes"])
    modes = table(report, "Exact mode counts").set_index("head")
    # none covers 95-97 modes, projection 90-92 on every seed: a real winner, bold
    assert modes.loc["none", "stacked_digits modes covered per class (of 100)"].startswith("**")
    assert modes.loc["real data (ceiling)", "stacked_digits modes covered per class (of 100)"] == "99.9"


def test_kid_is_shown_times_1000_and_the_noise_floor_beside_it(report):
    extra = table(report, "Intra-class and distribution metrics").set_index("head")
    kid = np.array([final_numbers("concat", s)["kid_mean"] for s in SEEDS]) * 1000
    mean, std = (float(x) for x in extra.loc["concat", "stacked_digits KID ×10³"].strip("*").split("±"))
    assert mean == pytest.approx(kid.mean(), abs=0.006) and std == pytest.approx(kid.std(ddof=1), abs=0.006)
    floor = table(report, "Noise floor").iloc[0]
    assert floor["real vs real (images)"] == "5000 vs 5000"
    assert float(floor["FID"]) == pytest.approx(7.5)
    assert floor["KID ×10³ ± s.e."] == "-0.40 ± 0.20" and floor["KID subset size"] == "1000"
    assert "## Published values" not in report  # no CIFAR/ImageNet numbers under a stacked-digits table


def test_curves_and_finals_are_kept_apart(report, tmp_path_factory):
    out = next(p for p in tmp_path_factory.getbasetemp().glob("fake_sweep*/report"))
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["phase"]) == {"curve", "final"}
    assert (out / "curves_stacked_digits.png").exists()


def test_the_floor_shows_its_kid_subset_size_only_where_runs_recorded_it():
    from cgan_bench.report.tables import noise_floor_table
    old = pd.DataFrame([{"column": "digits", **{k: v for k, v in FLOOR.items() if k != "floor_kid_subset_size"}}])
    assert "KID subset size" not in noise_floor_table(old)  # runs from before it was recorded: no empty column
    new = pd.DataFrame([{"column": "digits", **FLOOR, "floor_kid_subset_size": 359}])
    assert noise_floor_table(new).iloc[0]["KID subset size"] == "359"
