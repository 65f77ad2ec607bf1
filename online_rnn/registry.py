"""One small registry for every kind of plugin: cells, learners, objectives, optimizers and streams.

Each kind keeps a :class:`Registry` and exposes its methods at module level (``cells.register``,
``learners.make``, ``envs.names``, ...). A user's module registers its own factory the same way, and configs then
use it by name like a built-in one::

    from online_rnn import learners
    learners.register("my_rule", my_rule)          # my_rule(cell, input_size, output_size, objective, optimizer, ...)

(``online-rnn run CONFIG --plugin my_module``, or ``plugins: [my_module]`` in the config, imports the module
first.)
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterator, Optional


class Registry:
    """Named factories of one kind (``kind`` names it in error messages)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str, factory: Optional[Callable[..., Any]] = None, replace: bool = False) -> Any:
        """Register ``factory`` under ``name`` (usable as a decorator: ``@registry.register("name")``). A name
        that is taken is an error unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: a registered name must be a non-empty string, got {name!r}")

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not callable(fn):
                raise ValueError(f"{self.kind} {name!r}: the factory must be callable, got {type(fn).__name__}")
            if name in self._factories and self._factories[name] is not fn and not replace:
                raise ValueError(f"{self.kind}: name {name!r} is already registered (pass replace=True to replace)")
            self._factories[name] = fn
            return fn

        return add if factory is None else add(factory)

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., Any]:
        """The factory registered under ``name``; a one-line error with the nearest name otherwise."""
        if name not in self._factories:
            near = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ValueError(f"{self.kind}: unknown name {name!r}; {hint}allowed: {', '.join(self.names())}")
        return self._factories[name]

    def parameters(self, name: str) -> list[str]:
        """The keyword arguments of a factory."""
        return list(inspect.signature(self.factory(name)).parameters)

    def make(self, name: str, **kwargs: Any) -> Any:
        """Build by name; unknown keyword arguments are a one-line error naming the allowed ones."""
        fn = self.factory(name)
        params = inspect.signature(fn).parameters
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            for key in kwargs:
                if key not in params:
                    raise ValueError(f"{self.kind} {name!r}: unknown argument {key!r}; allowed: {', '.join(params)}")
        return fn(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
