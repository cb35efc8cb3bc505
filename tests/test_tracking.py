"""W&B per sweep: group = the sweep's name, run names/tags/config carry the job's Hydra overrides, protocol fields
kept out of the charts, best-value summaries, git + system stats, the morph figure; read back from the offline
run's .wandb transaction log (offline W&B writes no files/config.yaml, so the log is the record)."""
import itertools
import json
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import SMOKE, run_cli
from test_report import history_rows, read_complete
from cgan_bench.tracking import WandbTracker, run_name, run_tags

REPO = Path(__file__).resolve().parents[1]


def wandb_env(tmp_path: Path) -> dict:
    """Offline W&B with every folder it writes (cache, config, artifact staging) under tmp_path."""
    return {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_dir"),
            "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
            "WANDB_DATA_DIR": str(tmp_path / "wandb_data"), "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb_artifacts")}


def apply_updates(target: dict, items) -> None:
    """Config/summary update items (key or nested_key path, JSON value) applied in order."""
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)


def read_run(run_dir: Path):
    """(run record, final config, final summary, all records) of the one offline W&B run under run_dir."""
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    records = read_complete(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config, summary = {}, {}
    apply_updates(config, run.config.update)
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "config":
            apply_updates(config, r.config.update)
        elif kind == "summary":
            apply_updates(summary, r.summary.update)
    return run, config, summary, records


def hparams_jobs() -> list[list[str]]:
    """Each job's task overrides in `python -m cgan_bench -m +sweep=hparams`, from the sweep file itself: Hydra's
    basic sweeper puts the sweep's parameters first, then the command line's overrides."""
    params = OmegaConf.load(REPO / "conf" / "sweep" / "hparams.yaml").hydra.sweeper.params
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [[*job, "+sweep=hparams"] for job in itertools.product(*axes)]


def test_hparams_sweep_gets_distinct_names_and_override_tags():
    jobs = hparams_jobs()
    assert len(jobs) == 21  # 3 heads x 7 Adam settings
    projection = [j for j in jobs if "head=projection" in j]
    names = [run_name("digits", "projection", 0, j) for j in projection]
    assert len(set(names)) == 7  # the seven +adam= runs are told apart
    assert "digits-projection-s0-adam=C" in names
    assert all("sweep" not in n for n in names)  # +sweep=hparams is where the runs came from, not a setting
    heads = {j[0].partition("=")[2]: j for j in jobs}
    assert len({run_name("digits", h, 0, j) for h, j in heads.items()}) == 3
    assert len({run_name("digits", j[0].partition("=")[2], 0, j) for j in jobs}) == 21
    tags = run_tags("digits", "projection", 0, ["head=projection", "+adam=C", "+sweep=hparams"])
    assert tags == ["digits", "projection", "seed0", "head=projection", "adam=C", "sweep=hparams"]


def test_names_skip_noise_and_tags_stay_within_wandbs_limit():
    overrides = ["seed=3", "train.lr=0.001", "wandb.mode=offline", "hydra.sweep.dir=/tmp/x", "device=cpu",
                 "hydra/launcher=joblib", "resume=false", "report.publish=reports/x", "dataset.root=/" + "d" * 80]
    overrides += ["dataset.resolution=16", "+train.n_dis=2"]
    assert run_name("cifar10", "concat", 3, overrides) == "cifar10-concat-s3-train.lr=0.001-dataset.resolution=16-train.n_dis=2"
    tags = run_tags("cifar10", "concat", 3, overrides)
    assert "train.lr=0.001" in tags and "device=cpu" in tags and "seed=3" in tags
    assert not any(t.startswith(("wandb.", "hydra")) for t in tags)
    assert max(len(t) for t in tags) == 64  # the long path is cut to W&B's limit, not refused


def final_record(iteration: int) -> dict:
    """An evaluation record shaped like metrics/evaluator.py's (stacked digits: mode counts and the real ceiling)."""
    return {"iteration": iteration, "phase": "final", "is_mean": 8.8, "fid": 95.5, "kid_mean": 2.2, "coverage": 0.42,
            "class_accuracy": 0.97, "modes_total": 661, "floor_fid": 15.4, "floor_n_a": 5000, "floor_n_b": 5000,
            "real_modes_total": 1000, "feature_space": "digit_channels", "n_fake": 5000, "n_real": 5000,
            "n_generated": 10000, "real_split": "train", "isc_splits": 10, "kid_subset_size": 1000,
            "classifier_test_accuracy": 0.975, "device": "cpu", "software": "cgan-bench", "eval_s": 7.7}


def test_protocol_fields_go_to_config_not_charts_and_checkpoints_upload_only_online(tmp_path, monkeypatch):
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # outside any git checkout: W&B records no commit and the run still works
    cfg = OmegaConf.create({"dataset": {"name": "digits"}, "head": {"name": "projection"}, "seed": 0,
                            "wandb": {"mode": "offline", "project": "cgan-bench", "entity": None}})
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"iteration": 7}, run_dir / "checkpoints" / "last.pt")
    tracker = WandbTracker(cfg, run_dir, group="g", job_type="projection", overrides=["+adam=C"])
    tracker.log({"iteration": 5, "phase": "train", "d_loss": 1.5, "g_loss": 0.5, "lr": 2e-4})
    tracker.log(final_record(7))
    uploaded = []
    monkeypatch.setattr(tracker.run, "log_artifact", lambda art, aliases: uploaded.append((art, aliases)))
    tracker.log_checkpoint()  # offline: nothing (W&B would copy the file into its staging folder)
    assert uploaded == []
    monkeypatch.setattr(tracker, "mode", "online")  # what an online run would upload, without the network
    tracker.finish(0)

    (artifact, aliases), = uploaded
    assert artifact.type == "model" and aliases == ["latest", "iteration-7"]
    assert list(artifact.manifest.entries) == ["last.pt"]
    assert artifact.manifest.entries["last.pt"].size == (run_dir / "checkpoints" / "last.pt").stat().st_size
    run, config, summary, records = read_run(run_dir)
    assert run.display_name == "digits-projection-s0-adam=C" and run.run_group == "g"
    assert config["overrides"] == ["+adam=C"]
    assert config["protocol"]["final"] == {k: final_record(7)[k] for k in (
        "feature_space", "n_real", "n_fake", "n_generated", "real_split", "isc_splits", "kid_subset_size",
        "floor_n_a", "floor_n_b", "classifier_test_accuracy", "device", "software")}
    charted = {k for row in history_rows(records) for k in row}
    assert {"train/d_loss", "train/lr", "final/fid", "final/is_mean", "final/eval_s", "iteration"} <= charted
    assert not charted & {"final/n_real", "final/n_fake", "final/n_generated", "final/isc_splits",
                          "final/floor_n_a", "final/floor_fid", "final/real_modes_total", "final/kid_subset_size"}
    assert summary["final/floor_fid"] == 15.4 and summary["final/real_modes_total"] == 1000
    assert summary["final/fid"] == 95.5  # a final evaluation's summary is its value
    envs = [r.environment for r in records if r.WhichOneof("record_type") == "environment"]
    assert not any(e.git.commit for e in envs)
    assert not any(r.WhichOneof("record_type") == "artifact" for r in records)


@pytest.mark.slow
def test_sweep_jobs_are_grouped_by_sweep_name_and_named_by_their_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "head=projection,concat", *SMOKE, "+adam=C", "sweep_name=wb_check", "wandb.mode=offline",
                f"hydra.sweep.dir={sweep}", cwd=REPO, env=wandb_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    run_dirs = sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())
    assert len(run_dirs) == 2
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    names = set()
    for run_dir in run_dirs:
        overrides = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))
        head = next(o.partition("=")[2] for o in overrides if o.startswith("head="))
        run, config, summary, records = read_run(run_dir)
        assert run.run_group == "wb_check" and run.job_type == head
        extras = [o.lstrip("+") for o in overrides if not o.startswith(("head=", "sweep_name=", "wandb.", "hydra."))]
        assert sorted(extras) == ["adam=C", "eval.classifier_epochs=2", "eval=smoke", "train=smoke"]
        assert run.display_name == "-".join([f"digits-{head}-s0", *extras])
        names.add(run.display_name)
        assert {f"head={head}", "adam=C", "train=smoke", "sweep_name=wb_check"} <= set(run.tags)
        assert {"digits", head, "seed0"} <= set(run.tags)
        assert not any(t.startswith(("wandb.", "hydra.")) for t in run.tags)
        assert config["overrides"] == overrides
        assert config["train"]["lr"] == 2e-4 and config["train"]["beta2"] == 0.999  # +adam=C was applied
        # best-value summaries on the evaluation metrics
        metrics = {m.metric.name: m.metric for m in records if m.WhichOneof("record_type") == "metric"}
        for phase in ("curve", "final"):
            assert metrics[f"{phase}/fid"].summary.min and metrics[f"{phase}/intra_fid_mean"].summary.min
            assert metrics[f"{phase}/is_mean"].summary.max and metrics[f"{phase}/coverage"].summary.max
        # protocol counts in the config, not in the charts
        logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        final = next(x for x in logged if x["phase"] == "final")
        assert config["protocol"]["final"]["n_generated"] == final["n_generated"] == 100
        assert config["protocol"]["final"]["feature_space"] == final["feature_space"]
        history = history_rows(records)
        assert not any("final/n_real" in h or "final/isc_splits" in h for h in history)
        assert summary["final/fid"] == pytest.approx(final["fid"])
        # the morph figure, logged at the end as the PNG app.py saved
        morph = [h for h in history if "morph" in h]
        assert len(morph) == 1 and morph[0]["morph"]["_type"] == "image-file"
        media = run_dir.glob(f"wandb/offline-run-*/files/{morph[0]['morph']['path']}")
        assert next(media).stat().st_size > 0
        # system stats and (from a git checkout) the commit
        assert any(x.WhichOneof("record_type") == "stats" for x in records)
        if git.returncode == 0:
            envs = [x.environment for x in records if x.WhichOneof("record_type") == "environment"]
            assert git.stdout.strip() in {e.git.commit for e in envs}
        artifacts = {x.artifact.type for x in records if x.WhichOneof("record_type") == "artifact"}
        assert artifacts == {"run_table"}  # the per-class table; offline, no checkpoint ("model") is copied
    assert len(names) == 2
