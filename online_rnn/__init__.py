"""online_rnn: online recurrent learning algorithms in JAX."""

from online_rnn import cells, envs, learners, objectives, streaming

__all__ = ["cells", "envs", "learners", "objectives", "streaming"]
__version__ = "0.1.0"
