"""The benchmark command prints every field (its speed is measured by people, not asserted here)."""
import json

import pytest

from cgan_bench.bench import cpu_cores, main


def run_bench(capsys, *args):
    assert main(["train=smoke", "--heads", "projection,acgan", "--repeats", "1", "--warmup", "1", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_bench_json_has_every_field(capsys):
    out = run_bench(capsys, "--baseline", "--eval")
    assert out["device"].startswith("cpu") and out["torch"] and "median" in out["method"]
    assert out["cpu"]["model"] and out["cpu"]["cores"] >= 1 and isinstance(out["cpu"]["native_bf16"], bool)
    assert [r["head"] for r in out["train"]] == ["projection", "acgan"]
    for row in out["train"]:
        for key in ("ms_per_it", "it_per_s", "gflop_per_it", "tflop_per_s", "first_it_s", "baseline_ms_per_it",
                    "speedup_vs_baseline"):
            assert row[key] > 0, key
        assert row["it_per_s"] * row["ms_per_it"] == __import__("pytest").approx(1000.0)
        assert row["peak_fraction"] is None  # no peak is claimed for a CPU
        assert row["precision"] == "fp32" and row["compile"] is False and row["cuda_graph"] is False
        assert row["compile_mode"] == "default"
    ev = out["eval"]
    for key in ("generated_img_per_s", "features_img_per_s", "curve_eval_s", "final_eval_s", "final_eval_generate_s",
                "final_eval_metrics_s"):
        assert ev[key] > 0
    assert ev["final_eval_generate_s"] + ev["final_eval_metrics_s"] == pytest.approx(ev["final_eval_s"])
    assert ev["feature_space"] == "classifier"


@pytest.mark.slow
def test_flops_and_ops_grow_with_discriminator_steps(capsys):
    rows = {n: run_bench(capsys, "--heads", "projection", f"train.n_dis={n}")["train"][0] for n in (1, 2, 3)}
    assert rows[3]["gflop_per_it"] > 1.5 * rows[1]["gflop_per_it"]
    # every D step dispatches the same ops: the count is linear in n_dis
    ops = {n: r["aten_ops_per_it"] for n, r in rows.items()}
    assert ops[3] - ops[2] == ops[2] - ops[1] > 0
    joint = run_bench(capsys, "--heads", "projection", "train.n_dis=3", "train.joint_d_forward=true")["train"][0]
    assert joint["joint_d_forward"] is True and joint["gflop_per_it"] == pytest.approx(rows[3]["gflop_per_it"])
    assert joint["aten_ops_per_it"] < ops[3] - 0.5 * (ops[3] - ops[2])  # one D call per D step: fewer ops


def test_op_counter_counts_each_dispatched_operator():
    import torch
    from cgan_bench.bench import OpCounter
    a = torch.ones(3, requires_grad=True)
    with OpCounter() as ops:
        torch.add(a, 1).mul(2)
    assert ops.count == 2
    with OpCounter() as ops:
        (a * 3).sum().backward()
    assert ops.count >= 4  # mul, sum; backward: expand of the sum's grad, mul by 3 (and the accumulation)


def test_bad_override_is_a_one_line_error(capsys):
    assert main(["train.n_dis=0", "--json"]) == 2
    assert "train.n_dis" in capsys.readouterr().err


def test_eval_timing_without_inception_weights_uses_the_architecture_and_says_so(tmp_path, monkeypatch):
    import torch
    from cgan_bench.bench import inception_space, make_config
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty cache; the download fails offline
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    space = inception_space(make_config(["eval.feature_space=inception"]), torch.device("cpu"))
    assert "random weights" in space.name
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features, logits = space.extract(images, 8)
    assert features.shape == (8, 2048) and logits.shape == (8, 1008)
    # of order one, like real Inception features (PyTorch's default init gave ~1e-8: the metric math would be
    # timed on degenerate matrices)
    assert 0.01 < features.std().item() < 10 and 0.01 < logits.std().item() < 10


@pytest.mark.slow
def test_compiled_step_is_timed_and_its_flops_counted_like_eager(capsys):
    eager = run_bench(capsys, "--heads", "projection")["train"][0]
    compiled = run_bench(capsys, "--heads", "projection", "train.compile=true")["train"][0]
    assert compiled["compile"] is True and compiled["ms_per_it"] > 0
    assert compiled["gflop_per_it"] == eager["gflop_per_it"]  # counted on the same arithmetic, not on fused kernels
    assert compiled["aten_ops_per_it"] == eager["aten_ops_per_it"]  # the eager step's launches, not the fused
    assert compiled["first_it_s"] > compiled["ms_per_it"] / 1e3  # the first step pays for compilation
    counts = compiled["compile_counts"]  # what was compiled, so a row that fell back to eager would say so
    assert counts["unique_graphs"] >= 2 and counts["cudagraph_skips"] == 0, counts  # G and D at least
    assert "compile_counts" not in eager


@pytest.mark.slow
def test_packing_runs_concurrent_jobs_and_sums_their_rates(capsys):
    out = run_bench(capsys, "--heads", "projection", "--jobs", "1,2", "--pack-seconds", "0.5")
    pack = out["packing"]
    assert pack["head"] == "projection" and "threads per job" in pack["method"]  # CPU: threads split, and said
    assert [r["jobs"] for r in pack["rows"]] == [1, 2]
    for row in pack["rows"]:
        assert len(row["per_job"]) == len(row["per_job_it_per_s"]) == row["jobs"]
        rates = [job["steps"] / job["seconds"] for job in row["per_job"]]
        assert all(rate > 0 for rate in rates) and row["per_job_it_per_s"] == pytest.approx(rates)
        assert row["aggregate_it_per_s"] == pytest.approx(sum(rates))
        assert row["threads_per_job"] == max(1, cpu_cores() // row["jobs"])
    assert pack["rows"][0]["speedup_vs_1_job"] == 1.0
    assert pack["rows"][1]["speedup_vs_1_job"] == pytest.approx(
        pack["rows"][1]["aggregate_it_per_s"] / pack["rows"][0]["aggregate_it_per_s"])


def test_bad_jobs_is_a_one_line_error(capsys):
    assert main(["train=smoke", "--jobs", "0,2", "--json"]) == 2
    assert "--jobs" in capsys.readouterr().err


def bench_cli(tmp_path, *args):
    """`python -m cgan_bench.bench ARGS` in a subprocess, its temporary files under tmp_path/tmp (checked empty)."""
    import os
    import subprocess
    import sys
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "cgan_bench.bench", "train=smoke", "--json", *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})


@pytest.mark.parametrize("args, shown", [
    (["--heads", "projection,projecton"], "'projecton' is no known head; the heads are acgan, concat"),  # 2nd head
    (["bogus=1"], "bogus=1 is not allowed"),
    (["head=nope"], "head=nope is not allowed: registered heads are"),
    (["train.n_dis=["], "train.n_dis=[ do not compose"),  # Hydra's own refusal (syntax), its first line
    (["+seed=3"], "Could not append to config. An item is already at 'seed'"),
    (["--repeats", "0"], "argument --repeats: '0' is not allowed: an integer >= 1"),  # was StatisticsError
    (["--warmup", "-1"], "argument --warmup: '-1' is not allowed: an integer >= 0"),
    (["--pack-seconds", "0"], "argument --pack-seconds: '0' is not allowed"),
    (["--heads", "", "--jobs", "2"], "--jobs 2 packs jobs of the first of --heads, and --heads is empty"),
])
def test_bad_bench_input_is_one_line_before_any_timing(tmp_path, args, shown):
    """Exit code 2 and one `error:` line naming the value and the fix, before the first head is timed (a bad
    second head used to be found after timing the first, then a Hydra traceback); nothing printed, nothing left."""
    r = bench_cli(tmp_path, *args)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.startswith("error: ") and len(r.stderr.splitlines()) == 1 and shown in r.stderr, r.stderr
    assert r.stdout == "" and [p.name for p in tmp_path.iterdir()] == ["tmp"]
    assert not any((tmp_path / "tmp").iterdir())


def test_frechet_timing_compares_both_methods_on_the_same_statistics():
    from cgan_bench.bench import bench_frechet
    rows = bench_frechet(dim=64, repeats=2)
    assert [r["case"] for r in rows] == ["full rank", "an ImageNet class"]
    assert rows[0]["n_real"] == 160 and rows[1]["n_real"] == 33  # the second real covariance is rank-deficient
    for row in rows:
        assert row["dim"] == 64 and row["repeats"] == 2 and row["cpu_threads"] >= 1
        for key in ("torch_fidelity_s", "frechet_s", "frechet_cached_root_s"):
            assert row[key] > 0, key
        assert row["relative_difference"] < 1e-6  # the same distance, computed two ways
        assert isinstance(row["cpu_native_bf16"], bool)


def test_eval_timing_of_the_per_class_intra_fid_mode(capsys):
    """--heads "" times only the evaluation; in the per-class mode the per-class pass is timed on its own and
    scaled to every class (what a final evaluation at eval=paper_imagenet costs on one device)."""
    assert main(["train=smoke", "eval=smoke", "eval.intra_fid_per_class=20", "eval.intra_fid_classes=3",
                 "--heads", "", "--eval", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ev = out["eval"]
    assert out["train"] == [] and ev["intra_fid_mode"] == "per_class"
    assert ev["intra_fid_generated_per_class"] == 20 and ev["intra_fid_classes"] == 3
    assert ev["per_class_pass_s_all_classes_one_device"] == pytest.approx(10 * ev["per_class_pass_s_per_class"])


def test_metric_math_timing_covers_every_part_at_the_protocol_sizes():
    from cgan_bench.bench import bench_metric_math, make_config
    cfg = make_config(["eval=smoke", "eval.n_real=300", "eval.n_fake=200", "eval.n_generated=400"])
    row = bench_metric_math(cfg, n_classes=4, dim=64, real_total=2000)
    assert (row["n_real"], row["n_fake"], row["n_generated"], row["real_per_class"]) == (300, 200, 400, 500)
    parts = ["inception_score_s", "fid_s", "kid_s", "precision_recall_s", "density_coverage_s", "per_class_cached_s"]
    assert all(row[k] > 0 for k in parts + ["per_class_first_s"])
    assert row["final_eval_metric_math_s"] == pytest.approx(sum(row[k] for k in parts))


@pytest.mark.slow
def test_gpu_script_writes_each_rows_json_and_records_refused_and_cut_rows(tmp_path):
    """scripts/bench_gpu.sh, the one command a lent GPU runs, exercised on the CPU with a tiny model: a row's JSON
    is written and parses, a row the CPU refuses (CUDA graphs) is recorded as failed without stopping the rest,
    rows not named in ROWS do not run, and a row over ROW_TIMEOUT is cut and says so. With $OUT set (as on the
    lent machines, which return at most 8 files from it) everything comes back as one archive plus nothing else."""
    import os
    import subprocess
    import sys
    import tarfile
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_gpu.sh"
    tiny = ["model.g_ch=8", "model.d_ch=8", "train.n_dis=1", "train.batch_d=4", "train.batch_g=4",
            "dataset.resolution=32", "--warmup", "1", "--repeats", "1"]

    def run(out, rows, row_timeout):
        out.mkdir()
        env = {**os.environ, "OUT": str(out), "BENCH_ROWS_DIR": str(out.parent / f"{out.name}_rows"), "ROWS": rows,
               "ROW_TIMEOUT": str(row_timeout), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        done = subprocess.run(["bash", str(script), *tiny], env=env, capture_output=True, text=True, timeout=600)
        assert [p.name for p in out.iterdir()] == ["bench_rows.tgz"], done.stdout + done.stderr
        with tarfile.open(out / "bench_rows.tgz") as archive:
            archive.extractall(out / "x", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        return done, out / "x"

    done, rows = run(tmp_path / "a", "bf16_cuda_graph bf16_joint", 300)
    assert done.returncode == 1, done.stdout + done.stderr  # the graph row failed, so the script says so
    row = json.loads((rows / "bf16_joint.json").read_text())["train"][0]
    assert (row["precision"], row["joint_d_forward"], row["cuda_graph"]) == ("bf16", True, False)
    assert row["it_per_s"] > 0
    assert "needs a CUDA device" in (rows / "bf16_cuda_graph.err").read_text()
    assert "FAILED" in done.stdout and "bf16_joint" in done.stdout
    assert sorted(p.name for p in rows.glob("*.json")) == ["bf16_cuda_graph.json", "bf16_joint.json"]
    assert "== bf16_joint" in (rows / "log.txt").read_text()  # the log travels with the rows

    cut, rows = run(tmp_path / "b", "fp32", 1)
    assert cut.returncode == 1 and "exit status 124" in cut.stdout
    assert "cut at ROW_TIMEOUT=1 s" in (rows / "fp32.err").read_text()


def test_profile_ranks_a_cpu_steps_operators_by_self_time(capsys):
    out = run_bench(capsys, "--profile", "--heads", "projection")  # run_bench's --heads comes first; this one wins
    assert [r["head"] for r in out["train"]] == ["projection"]
    prof = out["train"][0]["profile"]
    assert prof["iterations"] == 3 and prof["wall_ms_per_it"] > 0 and prof["time_ranked_by"] == "self CPU time"
    assert prof["device_kernels_per_it"] is None and prof["device_busy_ms_per_it"] is None  # no GPU counters here
    times = [t["self_ms_per_it"] for t in prof["top"]]
    assert times == sorted(times, reverse=True) and 0 < sum(t["share"] for t in prof["top"]) <= 1 + 1e-9
    assert any("convolution" in t["name"] for t in prof["top"][:5])  # a conv net's step is led by its convolutions
    assert all(t["calls_per_it"] > 0 for t in prof["top"])


def test_profile_counts_kernels_busy_time_and_launches_per_iteration_on_cuda(monkeypatch):
    """The CUDA arithmetic, fed a profiler's events by hand (no GPU here): 2 iterations, each 3 kernels of
    10/20/30 us launched by 3 cudaLaunchKernel calls -> 3 kernels, 0.06 ms busy and 3 launches per iteration."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    import cgan_bench.bench as bench

    events = []
    for it in range(2):
        for k, us in enumerate((10, 20, 30)):
            start = 1000 * it + 100 * k
            events.append(FunctionEvent(id=len(events), name="cudaLaunchKernel", thread=0, start_us=start,
                                        end_us=start + 2))
            events.append(FunctionEvent(id=len(events), name=f"kernel_{us}", thread=0, start_us=start + 5,
                                        end_us=start + 5 + us, device_type=DeviceType.CUDA))

    class Avg:
        def __init__(self, key, count, self_device_time_total):
            self.key, self.count, self.self_device_time_total = key, count, self_device_time_total

    class FakeProfile:
        def __init__(self, activities):
            assert torch.profiler.ProfilerActivity.CUDA in activities

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def events(self):
            return events

        def key_averages(self):
            return [Avg("kernel_10", 2, 20.0), Avg("kernel_30", 2, 60.0), Avg("kernel_20", 2, 40.0),
                    Avg("cudaLaunchKernel", 6, 0.0)]

    import torch
    monkeypatch.setattr(torch.profiler, "profile", FakeProfile)
    monkeypatch.setattr(bench, "synchronize", lambda device: None)
    prof = bench.profile_step(lambda: None, torch.device("cuda"), iterations=2)
    assert prof["device_kernels_per_it"] == 3 and prof["launch_calls_per_it"] == 3
    assert prof["device_busy_ms_per_it"] == pytest.approx(0.06)
    assert [t["name"] for t in prof["top"]] == ["kernel_30", "kernel_20", "kernel_10"]  # zero-time rows left out
    assert prof["top"][0]["self_ms_per_it"] == pytest.approx(0.03) and prof["top"][0]["share"] == pytest.approx(0.5)
    assert prof["top"][0]["calls_per_it"] == 1


def test_a_profiler_failure_is_recorded_and_keeps_the_timing(capsys, monkeypatch):
    import torch

    class Unavailable:
        def __init__(self, *a, **k):
            raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(torch.profiler, "profile", Unavailable)
    row = run_bench(capsys, "--profile", "--heads", "projection")["train"][0]
    assert row["profile"] == {"error": "RuntimeError: CUPTI unavailable"} and row["it_per_s"] > 0


def test_the_imagenet_models_row_writes_its_json(capsys):
    """The 128px row (issue 13's one GPU number) crashed after timing: its model config holds lists (g_mult,
    d_mult), which json could not write, so the script's only 128px row would have come back empty."""
    out = run_bench(capsys, "--heads", "projection", "model=sngan_128", "dataset.resolution=128", "model.g_ch=2",
                    "model.d_ch=2", "train.batch_d=2", "train.batch_g=2", "--n-classes", "4")
    assert out["config"]["model"]["g_mult"] == [16, 16, 8, 4, 2, 1] and out["config"]["resolution"] == 128
    assert out["train"][0]["it_per_s"] > 0
