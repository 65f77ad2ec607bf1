"""The ``online-rnn`` command line: run -> compare -> plot, errors, and a run in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from online_rnn import cli

CONFIG = {
    "name": "cli_tiny",
    "env": {"name": "trace_conditioning"},
    "objective": {"lam": 0.9},
    "steps": 600,
    "chunk": 200,
    "metric": {"window": 200, "bins": 4},
    "sweep": {"seeds": 2, "learning_rate": [0.01, 0.001]},
    "learners": [{"name": "columnar", "n_columns": 2, "optimizer": {"name": "sgd"}}],
}
# the fresh-process test: enough runs for every device (a device gets at least runner.RUN_QUANTUM of them)
MANY_RUNS = {**CONFIG, "name": "cli_many", "sweep": {"seeds": 16, "learning_rate": [0.01, 0.001]}}


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "cli_tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.fixture(scope="module")
def in_process(config_path) -> Path:
    out = config_path.parent / "in_process"
    assert cli.main(["run", str(config_path), "--out", str(out), "--quiet", "--no-cache"]) == 0
    return out


def test_run_compare_plot(in_process, capsys):
    out = in_process
    assert (out / "comparison.md").exists()
    assert cli.main(["compare", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| learner |" in text and "| columnar |" in text and ("lr 0.01" in text or "lr 0.001" in text)
    assert cli.main(["plot", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("learning_curves.png", "step_size_sensitivity.png"):
        assert (out / name).stat().st_size > 1000 and name in printed


def _run_subprocess(config_path: Path, out: Path, devices: int, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ONLINE_RNN_CACHE="0")
    # full optimisation (the tests' cheap compile flag is left out), ``devices`` JAX devices
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    exe = Path(sys.executable).parent / "online-rnn"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "online_rnn.cli"]
    proc = subprocess.run([*command, "run", str(config_path), "--out", str(out), "--quiet", *extra],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def _same_results(a: Path, b: Path, labels: list[str]) -> None:
    for label in labels:
        with np.load(a / "learners" / label / "results.npz") as ra, np.load(b / "learners" / label / "results.npz") as rb:
            for key in ra.files:
                np.testing.assert_array_equal(ra[key], rb[key], err_msg=f"{label}.{key}")


def test_fresh_processes_on_one_and_two_devices_give_identical_results(tmp_path):
    """The installed entry point in new processes at full optimisation, one JAX device against two: a sweep of
    32 runs split over both devices, and two small sweeps (4 runs each) run side by side, one per device, with
    the second process stopped after one chunk and resumed. The results are the same bit for bit: a run's
    numbers depend on neither the process, nor the device count, nor an interruption."""
    config = {**MANY_RUNS, "learners": MANY_RUNS["learners"] + [
        {"name": "tbptt", "label": "small_a", "truncation": 2, "cell": {"name": "lstm", "hidden_size": 2},
         "optimizer": {"name": "sgd"}, "sweep": {"seeds": 2}},
        {"name": "columnar", "label": "small_b", "n_columns": 3, "optimizer": {"name": "sgd"},
         "sweep": {"seeds": 2}}]}
    config_path = tmp_path / "cli_many.yaml"
    config_path.write_text(yaml.safe_dump(config))
    one, two = tmp_path / "one_device", tmp_path / "two_devices"
    assert "| columnar |" in _run_subprocess(config_path, one, 1).stdout
    assert "stopped early" in _run_subprocess(config_path, two, 2, "--max-chunks", "2").stdout
    assert "| small_b |" in _run_subprocess(config_path, two, 2).stdout
    devices = {label: json.loads((two / "learners" / label / "progress.json").read_text())["devices"]
               for label in ("columnar", "small_a", "small_b")}
    assert devices == {"columnar": 2, "small_a": 1, "small_b": 1}
    _same_results(one, two, ["columnar", "small_a", "small_b"])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("online-rnn: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def test_errors_are_one_line_with_exit_code_2(config_path, in_process, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**CONFIG, "learners": [{"name": "columnar", "n_colums": 2,
                                                          "optimizer": {"name": "sgd"}}]}))
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'n_columns'" in _one_line_error(capsys)
    assert not (tmp_path / "x").exists()

    assert cli.main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "config not found" in _one_line_error(capsys)

    assert cli.main(["run", str(config_path), "steps=300", "--out", str(in_process), "--no-cache"]) == 2
    assert "belongs to a different config (differs at: steps" in _one_line_error(capsys)

    assert cli.main(["run", str(config_path), "stepz=300", "--out", str(tmp_path / "y")]) == 2
    assert "stepz: unknown key; did you mean 'steps'?" in _one_line_error(capsys)

    assert cli.main(["compare", str(tmp_path / "missing")]) == 2
    assert "results folder not found" in _one_line_error(capsys)

    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in _one_line_error(capsys)


def test_list_names_everything(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("columnar", "tbptt", "lstm", "trace_patterning", "copy_task", "td_lambda", "ccn_rmsprop"):
        assert word in out


def test_find_config_by_name():
    repo_configs = Path(__file__).resolve().parent.parent / "configs"
    if (repo_configs / "demo.yaml").exists():
        assert cli.find_config("demo").name == "demo.yaml"
    with pytest.raises(FileNotFoundError, match="config not found"):
        cli.find_config("no_such_config_anywhere")


def test_the_wheel_ships_the_configs_and_finds_them_in_any_folder(tmp_path):
    """``online-rnn run demo`` from an installed wheel: the configs are package data (online_rnn/configs), found
    by name from a folder that has none."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    source = tmp_path / "source"  # a copy: building in the checkout would leave a build/ folder there
    for name in ("online_rnn", "configs"):
        shutil.copytree(root / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path / "wheel"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("online_rnn-*.whl")
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.name for p in (root / "configs").glob("*.yaml")}
    assert shipped and {f"online_rnn/configs/{n}" for n in shipped} <= names
    assert "online_rnn/py.typed" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import online_rnn; from online_rnn.experiment import loading; "
            "print(online_rnn.__file__); print(loading.find_config('demo'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == str(site / "online_rnn" / "configs" / "demo.yaml")
