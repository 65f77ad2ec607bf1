"""online_rnn: online recurrent learning algorithms in JAX."""

from online_rnn import cells, learners, objectives

__all__ = ["cells", "learners", "objectives"]
__version__ = "0.1.0"
