"""Sweeps on a Ray cluster (``--ray``, ``executor: {name: ray}``): the folder of a local run with the same bits
whatever the shards, a killed worker retried from its checkpoint, a killed driver resumed, a task's real error
in one line, the executor's config errors, and the CLI without Ray installed.

One local Ray cluster (2 CPUs) serves the module. Sweeps are tiny: a few hundred steps of two-column networks."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml

from online_rnn import cli, experiment
from online_rnn.experiment import distributed
from online_rnn.experiment.schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.xdist_group("ray")  # one worker runs them all, on one cluster (dev.py: --dist loadgroup)

CONFIG = {
    "name": "ray_tiny",
    "env": {"name": "trace_conditioning"},
    "objective": {"lam": 0.9},
    "steps": 500,
    "chunk": 5,  # 100 chunks: a driver can be killed mid-way
    "metric": {"window": 50, "bins": 4},
    # 24 runs, runs-last (padded to 32 locally): tasks of 16 runs are 16 + 8 (padded), tasks of 32 runs one task
    "sweep": {"seeds": 12, "learning_rate": [0.01, 0.001]},
    "learners": [
        {"name": "columnar", "n_columns": 2, "optimizer": {"name": "sgd"}},
        # 6 runs: the vmap layout, one task
        {"name": "columnar", "label": "small", "n_columns": 1, "optimizer": {"name": "sgd"}, "sweep": {"seeds": 3}},
    ],
}


def on_ray(config: dict, **executor) -> experiment.Experiment:
    return experiment.resolve({**config, "executor": {"name": "ray", **executor}})


def same_results(a: Path, b: Path, labels: list[str]) -> None:
    """Every array of ``results.npz`` equal, bit for bit."""
    for label in labels:
        with np.load(a / "learners" / label / "results.npz") as ra, \
                np.load(b / "learners" / label / "results.npz") as rb:
            assert sorted(ra.files) == sorted(rb.files)
            for key in ra.files:
                x, y = ra[key], rb[key]
                assert x.dtype == y.dtype and x.shape == y.shape, f"{label}.{key}"
                assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), f"{label}.{key} differs"
                assert x.tobytes() == y.tobytes(), f"{label}.{key} differs in its bits"


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster on this machine for the module; its workers import this checkout's online_rnn."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray") / "local"
    experiment.run(experiment.resolve(CONFIG), out, progress=False, flops=False)
    return out


def test_the_command_line_on_ray_gives_the_local_bits_and_folder(cluster, local, tmp_path, capsys):
    """``--ray`` (followed by an override, not an address) with tasks of 16 runs: the columnar sweep is two
    tasks (16 and 8 runs), the small one a task; ``compare`` and ``plot`` read the folder."""
    config_path = tmp_path / "ray_tiny.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "cli"
    assert cli.main(["run", str(config_path), "--out", str(out), "--quiet", "--no-cache", "--ray",
                     "executor.runs_per_task=16"]) == 0
    printed = capsys.readouterr().out
    assert "on the Ray cluster" in printed and "16 runs per task" in printed and "| columnar |" in printed
    same_results(local, out, ["columnar", "small"])
    assert sorted(p.name for p in (out / "learners" / "columnar").iterdir()) == ["progress.json", "results.npz",
                                                                                  "summary.json"]
    summary = json.loads((out / "learners" / "columnar" / "summary.json").read_text())
    assert summary["executor"]["runs_per_task"] == [16, 8] and summary["layout"] == "runs_last"
    assert summary["flops_per_step"] > 0 and summary["runs"] == 24
    small = json.loads((out / "learners" / "small" / "summary.json").read_text())
    assert small["executor"]["runs_per_task"] == [6] and small["layout"] == "vmap"
    assert cli.main(["compare", str(out)]) == 0 and "| small |" in capsys.readouterr().out
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "learning_curves.png").stat().st_size > 1000


def test_a_killed_worker_is_retried_from_its_last_checkpoint(cluster, local, tmp_path):
    """Tasks of up to 32 runs (the columnar sweep is one); the worker of one is killed after its first chunk. The
    task can be at most two chunks further (the generator's backpressure) of 100, so it is lost mid-way, and its
    retry starts from a saved chunk."""
    killed = {}

    def kill(shard: str, t: int, pid: int) -> None:
        if shard == "columnar[0:24]" and not killed:
            os.kill(pid, signal.SIGKILL)
            killed[shard] = t

    out = tmp_path / "killed_worker"
    with pytest.warns(distributed.TaskRetried, match=r"columnar\[0:24\]: task lost"):
        report = distributed.run(on_ray(CONFIG, runs_per_task=32), out, progress=False, flops=False, on_chunk=kill)
    assert killed == {"columnar[0:24]": 5}
    assert report.complete and report.retries == {"columnar[0:24]": 1}
    first, again = report.starts["columnar[0:24]"]
    assert first == 0 and 5 <= again < CONFIG["steps"], report.starts  # from a checkpoint, not from the start
    assert report.starts["small[0:6]"] == [0]
    same_results(local, out, ["columnar", "small"])


def test_a_killed_driver_is_resumed_by_the_next_one(cluster, local, tmp_path):
    """A driver in its own process (the CLI, connected to the cluster) is killed once a task has saved its
    first chunk; the next driver resumes every task from its last checkpoint, and the results are the local
    run's."""
    config_path = tmp_path / "ray_tiny.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "killed_driver"
    env = dict(os.environ, ONLINE_RNN_CACHE="0",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    driver = subprocess.Popen([sys.executable, "-m", "online_rnn.cli", "run", str(config_path), "--out", str(out),
                               "--quiet", "--ray", cluster, "executor.runs_per_task=16"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = out / "learners" / "columnar" / "shards"
    deadline = time.monotonic() + 120
    while not list(shards.glob("*/checkpoint.npz")) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    driver.send_signal(signal.SIGKILL)
    _, stderr = driver.communicate(timeout=60)
    saved = {}
    for path in sorted(out.glob("learners/*/shards/*/checkpoint.npz")):
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
        saved[meta["label"]] = meta["t"]
    assert saved, stderr
    assert any(0 < t < CONFIG["steps"] for t in saved.values()), f"the first driver was not stopped mid-way: {saved}"

    report = distributed.run(on_ray(CONFIG, runs_per_task=16), out, progress=False, flops=False)
    names = ["columnar[0:16]", "columnar[16:24]", "small[0:6]"]
    assert report.complete and report.starts == {name: [saved.get(name, 0)] for name in names}
    same_results(local, out, ["columnar", "small"])


def test_a_task_that_fails_stops_the_run_with_its_one_line_error(cluster, tmp_path, monkeypatch, capsys):
    """A plugin that the driver's machine has and the workers do not: every task fails on import."""
    plugin_dir = tmp_path / "driver_only"
    plugin_dir.mkdir()
    (plugin_dir / "driver_only_plugin.py").write_text('"""A plugin installed where the driver runs only."""\n')
    monkeypatch.syspath_prepend(str(plugin_dir))
    config_path = tmp_path / "plugin.yaml"
    config_path.write_text(yaml.safe_dump({**CONFIG, "plugins": ["driver_only_plugin"],
                                           "learners": [CONFIG["learners"][1]]}))
    assert cli.main(["run", str(config_path), "--out", str(tmp_path / "out"), "--quiet", "--no-cache", "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("online-rnn: error: small[0:6] failed on a Ray worker: plugins: cannot import "
                          "'driver_only_plugin': ModuleNotFoundError"), err
    assert "\n" not in err and "Traceback" not in err


def test_a_stopped_sweep_resumes_where_it_started(cluster, local, tmp_path):
    """Stopped after one chunk, a Ray run leaves its tasks' checkpoints: a local run refuses them in one line, a
    Ray run with another task size keeps the tasks and finishes from them; a local run's checkpoint is refused
    by a Ray run the same way."""
    out = tmp_path / "ray_first"
    report = distributed.run(on_ray(CONFIG, runs_per_task=16), out, progress=False, flops=False, max_chunks=1)
    assert not report.complete
    with pytest.raises(ConfigError, match=r"^columnar was started on a Ray cluster .*; resume it with --ray"):
        experiment.run(experiment.resolve(CONFIG), out, progress=False, flops=False)
    report = distributed.run(on_ray(CONFIG, runs_per_task=32), out, progress=False, flops=False)
    assert report.complete and sorted(report.starts) == ["columnar[0:16]", "columnar[16:24]", "small[0:6]"]
    assert sorted(starts[0] for starts in report.starts.values()) == [0, 0, CONFIG["chunk"]]
    same_results(local, out, ["columnar", "small"])

    out = tmp_path / "local_first"
    experiment.run(experiment.resolve(CONFIG), out, progress=False, flops=False, max_chunks=1)
    with pytest.raises(ConfigError, match=r"^columnar was started by a local run .*; finish it without --ray"):
        distributed.run(on_ray(CONFIG), out, progress=False, flops=False)


@pytest.mark.parametrize("executor, message", [
    ({"name": "slurm"}, "executor.name: unknown name 'slurm'; allowed: local, ray"),
    ({"name": "ray", "runs_per_task": 20}, "executor.runs_per_task: expected a multiple of 16"),
    ({"name": "ray", "runs_per_tsak": 16}, "executor.runs_per_tsak: unknown key; did you mean 'runs_per_task'?"),
    ({"name": "ray", "cpus_per_task": 0}, "executor.cpus_per_task: expected an int >= 1, got 0"),
    ({"name": "ray", "gpus_per_task": -1}, "executor.gpus_per_task: expected a number >= 0, got -1"),
    ({"name": "ray", "address": 6379}, "executor.address: expected a cluster address"),
    ({"name": "local", "runs_per_task": 16}, "executor.runs_per_task: unknown key"),
    ("ray", "executor: expected a mapping"),
])
def test_executor_errors_are_one_line(executor, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        experiment.resolve({**CONFIG, "executor": executor}, check_shapes=False)
    assert "\n" not in str(info.value)


def test_the_executor_is_not_part_of_the_config_hash():
    local = experiment.resolve(CONFIG, check_shapes=False)
    remote = experiment.resolve({**CONFIG, "executor": {"name": "ray", "runs_per_task": 32}}, check_shapes=False)
    assert remote.hash == local.hash and remote.executor["runs_per_task"] == 32 and local.executor == {"name": "local"}


def test_without_ray_local_runs_work_and_ray_runs_say_how_to_install_it(tmp_path):
    """A fresh process in which ``import ray`` fails: a local run completes; ``--ray`` is refused in one line."""
    config_path = tmp_path / "small.yaml"
    config_path.write_text(yaml.safe_dump({**CONFIG, "steps": 100, "metric": {"window": 50, "bins": 2},
                                           "learners": [CONFIG["learners"][1]]}))
    script = ("import sys; sys.modules['ray'] = None\n"
              "from online_rnn import cli\n"
              "base = ['run', sys.argv[1], '--quiet', '--no-cache', '--out']\n"
              "assert cli.main(base + [sys.argv[2]]) == 0\n"
              "assert 'ray' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
              "sys.exit(cli.main(base + [sys.argv[3], '--ray']))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    proc = subprocess.run([sys.executable, "-c", script, str(config_path), str(tmp_path / "a"), str(tmp_path / "b")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert (tmp_path / "a" / "learners" / "small" / "results.npz").exists()
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("online-rnn: error: executor.name: ray is not installed: pip "
                                                    "install 'online_rnn[ray]' (or run without --ray)")
    assert not (tmp_path / "b").exists()
