"""Faults a researcher meets: a second run into a folder in use, damaged files, the umask, bad labels, duplicate
YAML keys, shadowed overrides, out-of-range settings, typos in ``--only``, every run diverged, a bad key."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import yaml

from online_rnn import cells, cli, experiment, learners, objectives, optimizers
from online_rnn.experiment import storage
from online_rnn.experiment.schema import ConfigError, ConfigWarning

CONFIG = {
    "name": "faults",
    "env": {"name": "trace_conditioning"},
    "objective": {"lam": 0.9},
    "steps": 400,
    "chunk": 200,  # two chunks: a checkpoint exists between them
    "metric": {"window": 200, "bins": 4},
    "sweep": {"seeds": 2, "learning_rate": [0.01]},
    "learners": [{"name": "columnar", "n_columns": 2, "optimizer": {"name": "sgd"}}],
}
LABEL = "columnar"


def write(tmp: Path, config: dict, name: str = "faults.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(config))
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("online-rnn: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def results(folder: Path) -> dict:
    return storage.read_npz(storage.group_dir(folder, LABEL) / storage.RESULTS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[experiment.Experiment, Path]:
    """One complete run of CONFIG (the others are compared with it)."""
    exp = experiment.resolve(CONFIG)
    out = tmp_path_factory.mktemp("faults") / "reference"
    assert experiment.run(exp, out, progress=False).complete
    return exp, out


def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(reference, tmp_path, capsys):
    exp, _ = reference
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from online_rnn.experiment.storage import FolderLock
            with FolderLock(Path({str(out)!r})):
                print("locked", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {holder.pid} on .* since "):
            experiment.run(exp, out, progress=False)
        assert not (out / storage.CONFIG_FILE).exists()
        assert cli.main(["run", str(write(tmp_path, CONFIG)), "--out", str(out), "--quiet", "--no-cache"]) == 2
        assert f"pid {holder.pid}" in one_line_error(capsys)
    finally:
        holder.kill()
        holder.wait()
    # the holder died: the system released its lock, and the folder can be used
    assert experiment.run(exp, out, progress=False, max_chunks=1).complete is False


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_set_aside_and_the_learner_recomputed(reference, tmp_path, damage):
    exp, ref = reference
    out = tmp_path / "out"
    assert not experiment.run(exp, out, progress=False, max_chunks=1).complete
    path = storage.group_dir(out, LABEL) / storage.CHECKPOINT
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a zip file"}[damage])
    with pytest.warns(storage.RecoveredFile, match=rf"{re.escape(str(path))} is damaged .*moved it to "
                                                    rf"checkpoint\.npz\.damaged"):
        assert experiment.run(exp, out, progress=False).complete
    for key, value in results(ref).items():
        np.testing.assert_array_equal(results(out)[key], value, err_msg=key)


@pytest.mark.parametrize("name", [storage.RESULTS, storage.SUMMARY])
def test_damaged_results_are_recomputed_and_compare_names_the_file(reference, tmp_path, capsys, name):
    exp, ref = reference
    out = tmp_path / "out"
    assert experiment.run(exp, out, progress=False).complete
    path = storage.group_dir(out, LABEL) / name
    path.write_bytes(path.read_bytes()[:40])
    # compare and plot name the file in one line
    assert cli.main(["compare", str(out)]) == 2
    line = one_line_error(capsys)
    assert str(path) in line and "damaged" in line
    assert cli.main(["plot", str(out)]) == 2
    assert str(path) in one_line_error(capsys)
    # run recomputes it, bit-identical
    with pytest.warns(storage.RecoveredFile, match=re.escape(str(path))):
        assert experiment.run(exp, out, progress=False).complete
    for key, value in results(ref).items():
        np.testing.assert_array_equal(results(out)[key], value, err_msg=key)
    assert "columnar" in experiment.compare([out])


def test_a_damaged_config_file_is_one_line_naming_it(reference, tmp_path, capsys):
    exp, _ = reference
    out = tmp_path / "out"
    out.mkdir()
    (out / storage.CONFIG_FILE).write_text('{"hash": "abc", "conf')
    assert cli.main(["run", str(write(tmp_path, CONFIG)), "--out", str(out), "--quiet"]) == 2
    line = one_line_error(capsys)
    assert str(out / storage.CONFIG_FILE) in line and "damaged" in line and "another --out" in line


def test_result_files_honour_the_umask(reference, tmp_path):
    _, ref = reference
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in ref.rglob("*") if p.is_file() and p.name != storage.LOCK_FILE]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        path = tmp_path / f"umask_{mask:o}.json"
        code = (f"import os; os.umask({mask}); from pathlib import Path; from online_rnn.experiment import storage; "
                f"storage.write_json(Path({str(path)!r}), {{'a': 1}})")
        subprocess.run([sys.executable, "-c", code], check=True)
        assert path.stat().st_mode & 0o777 == mode, (oct(mask), oct(path.stat().st_mode))


@pytest.mark.parametrize("label", ["..", ".hidden", "a/b", "-x", "a..b"])
def test_labels_must_be_folder_names(label):
    config = json.loads(json.dumps(CONFIG))
    config["learners"][0]["label"] = label
    with pytest.raises(ConfigError, match=r"^learners\.0\.label: use letters, digits.*it names a folder"):
        experiment.resolve(config, check_shapes=False)


def test_duplicate_yaml_keys_are_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(CONFIG) + "steps: 800\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: duplicate key 'steps' at line \d+ \(first at line \d+\)"):
        experiment.load(path)


def test_an_override_that_learners_shadow_is_a_warning_naming_both(tmp_path, capsys):
    config = json.loads(json.dumps(CONFIG))
    config["learners"][0]["steps"] = 400
    path = write(tmp_path, config)
    with pytest.warns(ConfigWarning, match=r"override steps=200 does not reach .*learners\.columnar\.steps=400"):
        exp = experiment.load(path, ["steps=200"])
    assert exp.learners[0].steps == 400
    # the CLI prints it as one line and goes on (here into an error that stops before running)
    assert cli.main(["run", str(path), "steps=200", "stepz=1", "--out", str(tmp_path / "o")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("online-rnn: warning: override steps=200 does not reach") and "steps=400" in lines[0]
    assert lines[1].startswith("online-rnn: error: stepz: unknown key")


def test_stage_lengths_that_never_let_the_network_grow_are_an_error():
    config = json.loads(json.dumps(CONFIG))
    config["learners"] = [{"name": "constructive", "n_units": 3, "steps_per_stage": 400, "optimizer": {"name": "sgd"}}]
    with pytest.raises(ConfigError, match=r"^learners\.0 \(constructive\)\.steps_per_stage: .*400.*steps"):
        experiment.resolve(config, check_shapes=False)


@pytest.mark.parametrize("change,pattern", [
    (lambda c: c["objective"].update(lam=-1), r"^objective\.lam must be in \[0, 1\], got -1"),
    (lambda c: c["env"].update(gamma=1.0), r"^env: gamma must be a float in \[0, 1\), got 1\.0"),
    (lambda c: c["sweep"].update(lam=[0.9, -0.5]), r"^sweep\.lam must be in \[0, 1\], got -0\.5"),
    (lambda c: c["learners"][0]["optimizer"].update(momentum=1.5), r"^learners\.0 \(columnar\)\.optimizer\.momentum "
     r"must be in \[0, 1\), got 1\.5"),
    (lambda c: c["learners"][0].update(optimizer={"name": "adam", "b1": 1.0}), r"optimizer\.b1 must be in \[0, 1\)"),
    (lambda c: c["sweep"].update(learning_rate=[0.1, -0.1]), r"^sweep\.learning_rate must be in \(0, inf\), got -0\.1"),
])
def test_settings_out_of_range_in_yaml(change, pattern):
    config = json.loads(json.dumps(CONFIG))
    change(config)
    with pytest.raises(ConfigError, match=pattern):
        experiment.resolve(config, check_shapes=False)


def test_settings_out_of_range_in_python():
    for bad, pattern in [
        (lambda: objectives.td_lambda(gamma=1.5, lam=0.9), r"gamma.*\[0, 1\)"),
        (lambda: objectives.td_lambda(gamma=0.9, lam=-1), r"lam.*\[0, 1\]"),
        (lambda: optimizers.sgd(0.1, momentum=1.5), r"momentum.*\[0, 1\)"),
        (lambda: optimizers.adam(-0.1), r"learning_rate must be in \(0, inf\)"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            bad()


def test_overrides_may_follow_options_and_only_is_checked_before_writing(tmp_path, capsys):
    path = write(tmp_path, CONFIG)
    out = tmp_path / "o"
    assert cli.main(["run", str(path), "--out", str(out), "--only", "columnr", "steps=200"]) == 2
    assert "--only: no learner labelled 'columnr'; did you mean 'columnar'?" in one_line_error(capsys)
    assert not out.exists()
    assert cli.main(["run", str(path), "--out", str(out), "--quiet", "--no-cache", "steps=200", "--max-chunks",
                     "1"]) == 0
    assert json.loads((out / storage.CONFIG_FILE).read_text())["config"]["steps"] == 200


def test_plot_with_every_run_diverged_says_so_in_one_line(tmp_path, capsys):
    config = json.loads(json.dumps(CONFIG))
    config["sweep"]["learning_rate"] = [1e30]
    config["steps"], config["chunk"] = 200, 200
    out = tmp_path / "diverged"
    assert experiment.run(experiment.resolve(config), out, progress=False).complete
    assert cli.main(["plot", str(out)]) == 2
    assert re.search(r"every run .*diverged", one_line_error(capsys))


@pytest.mark.parametrize("key", [0, jnp.zeros((3,), jnp.uint32), "seed"])
def test_learner_init_with_a_bad_key_is_one_line(key):
    learner = learners.make("rtrl", cell=cells.lstm(2), input_size=2, output_size=1,
                            objective=objectives.squared_error(), optimizer=optax.sgd(0.1))
    with pytest.raises((TypeError, ValueError), match=r"^rtrl\.init: key must be a PRNG key"):
        learner.init(key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learner.init(jax.random.PRNGKey(0))
        learner.init(jax.random.key(0))
