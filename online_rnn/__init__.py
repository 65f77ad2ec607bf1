"""online_rnn: online recurrent learning algorithms in JAX."""

from online_rnn import cells

__all__ = ["cells"]
__version__ = "0.1.0"
