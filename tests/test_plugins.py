"""Out-of-tree plugins: a learner and a stream defined outside the package, registered by a user's module and
run from YAML like built-in ones (``--plugin`` on the command line, ``plugins:`` in a config)."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import yaml

from online_rnn import cli, envs, experiment, learners
from online_rnn.experiment import storage
from online_rnn.experiment.schema import ConfigError

PLUGIN = textwrap.dedent('''
    """A user's module: an echo stream (the target is the observation of ``delay`` steps ago) and a learner that
    trains only its readout (the cell keeps its random initial weights, as in an echo-state network)."""
    import jax
    import jax.numpy as jnp
    from flax import struct

    from online_rnn import envs, learners
    from online_rnn.learners.base import Credit, build


    @struct.dataclass
    class EchoParams:
        scale: float = 1.0


    class Echo(envs.Environment):
        def __init__(self, delay: int = 1):
            self.name, self.observation_size, self.signal_size = "echo", 1, 1
            self.kind, self.default_objective, self.delay = "supervised", "squared_error", int(delay)

        @property
        def default_params(self):
            return EchoParams()

        def reset(self, key, params):
            return jnp.zeros((1,)), jnp.zeros((self.delay + 1,))

        def step(self, key, state, params):
            x = params.scale * jax.random.normal(key, (1,))
            state = jnp.concatenate([state[1:], x])
            return x, state, state[:1], {"echo": state[0]}


    def readout_only(cell, input_size, output_size, objective, optimizer, *, options=None):
        def init(cell_params, carry, readout_params):
            return ()

        def forward(cell_params, carry, trace, x, key, t):
            carry, h = cell.apply(cell_params, carry, x)
            return carry, h, cell_params

        def backward(cell_params, dh):
            return jax.tree_util.tree_map(jnp.zeros_like, cell_params), ()

        credit = Credit(init, forward, backward, path="readout only")
        return build("readout_only", cell, credit, input_size, output_size, objective, optimizer, options)


    envs.register("echo", Echo)
    learners.register("readout_only", readout_only)
''')

CONFIG = {
    "name": "plugins",
    "env": {"name": "echo", "delay": 1},
    "steps": 400,
    "chunk": 200,
    "metric": {"window": 200, "bins": 4},
    "sweep": {"seeds": 2, "learning_rate": [0.01]},
    "learners": [
        {"name": "readout_only", "cell": {"name": "elman", "hidden_size": 3}, "optimizer": {"name": "sgd"}},
        {"name": "rtrl", "cell": {"name": "elman", "hidden_size": 3}, "optimizer": {"name": "sgd"}},
    ],
}


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "my_online_plugin.py").write_text(PLUGIN)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_unknown_until_the_plugin_is_imported(plugin_dir):
    # (tests of a module run in file order in one process: nothing has imported the plugin yet)
    with pytest.raises(ConfigError, match=r"^env\.name: unknown name 'echo'"):
        experiment.resolve(CONFIG)


def test_a_config_that_names_the_plugin_runs_its_learner_and_stream(plugin_dir, tmp_path):
    config = {**CONFIG, "plugins": ["my_online_plugin"]}
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(config))
    exp = experiment.load(path)
    assert "readout_only" in learners.names() and "echo" in envs.names()
    out = tmp_path / "out"
    assert experiment.run(exp, out, progress=False).complete
    summary = storage.read_json(storage.group_dir(out, "readout_only") / storage.SUMMARY)
    assert summary["path"] == "readout only"
    for label in ("readout_only", "rtrl"):
        final = storage.read_npz(storage.group_dir(out, label) / storage.RESULTS)["final"]
        assert final.shape == (2,) and np.all(np.isfinite(final)) and np.all(final > 0)
    table = experiment.compare([out])
    assert "readout_only" in table and "echo" in table


def test_the_command_line_imports_a_plugin_file(plugin_dir, tmp_path, capsys):
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    plugin = str(plugin_dir / "my_online_plugin.py")
    assert cli.main(["list", "--plugin", plugin]) == 0
    listing = capsys.readouterr().out
    assert "readout_only:" in listing and "echo: supervised, 1 inputs, squared_error" in listing
    out = tmp_path / "cli"
    assert cli.main(["run", str(path), "--plugin", plugin, "--out", str(out), "--quiet", "--no-cache"]) == 0
    assert (storage.group_dir(out, "readout_only") / storage.RESULTS).exists()
    assert cli.main(["run", str(path), "--plugin", str(plugin_dir / "nope.py")]) == 2
    assert "--plugin: cannot import" in capsys.readouterr().err
