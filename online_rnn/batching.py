"""Run-batched execution with the run axis last: ``batch_last(f)`` is ``jax.vmap(f, in_axes=-1, out_axes=-1)``
with the layout a CPU wants.

A sweep runs many independent copies of one small step (seeds x step sizes). ``jax.vmap`` puts the run axis
first, and XLA's CPU backend then compiles each fused kernel to a loop over runs whose inner loops run over a
few gates or parameters: too short to vectorise, and restarted for every run. Here every per-run array carries
the run axis *last* (contiguous), so every fused loop runs over ``(state entries x runs)`` with the runs in the
innermost, vectorisable stride; values that do not depend on the runs (constants, iotas, basis vectors) keep
their unbatched shape and cost nothing per run.

How. The unbatched function is traced once to a jaxpr, and the jaxpr is evaluated again with each value either
unbatched (its own shape) or batched (its shape plus a trailing run axis). Elementwise primitives broadcast;
structural primitives (reshape, slice, transpose, reductions, gathers and scatters with shared indices, ...)
get the run axis appended to their parameters; small contractions between two batched operands become a
multiply and a sum (a batched tiny matmul is slow on XLA's CPU backend); large ones a ``dot_general`` with the
runs as a batch dimension. Calls (``jit``, ``custom_jvp``/``custom_vjp``) are inlined, ``scan`` and ``cond`` are
evaluated with the same rules inside. Anything else falls back to JAX's own batching rule for the primitive and
moves the run axis to the end, so every jaxpr is handled; the fast rules are for what learners and streams use.

The result equals ``jax.vmap`` of the unbatched function (tested to float64 round-off for every learner and
stream); the runner selects it on the CPU, where it is faster, and plain ``vmap`` elsewhere.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

# A contraction between two batched operands is written as a multiply and a sum when the product it
# materialises per run (output entries x contracted entries) is at most this many elements.
SMALL_CONTRACTION = 4096
# ... and that sum is a tree of halving adds when it runs over at least this many entries: measured at S=64 on
# one core, UORO 20's recurrent contraction (80 entries) ran 2x faster; sums over fewer entries (a gate's 12
# inputs) stayed faster as XLA reductions (columnar 7, SnAp-1 20).
TREE_SUM = 64

_ELEMENTWISE = {
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh", "bitcast_convert_type",
    "cbrt", "ceil", "clamp", "clz", "complex", "conj", "convert_element_type", "copy", "copy_p", "cos", "cosh",
    "digamma", "div", "eq", "erf", "erf_inv", "erfc", "exp", "exp2", "expm1", "floor", "ge", "gt", "imag",
    "integer_pow", "is_finite", "le", "lgamma", "log", "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg",
    "nextafter", "not", "or", "population_count", "pow", "real", "reduce_precision", "rem", "round", "rsqrt",
    "select_n", "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt",
    "square", "stop_gradient", "sub", "tan", "tanh", "xor", "optimization_barrier_p",
}
_REDUCTIONS = {"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "reduce_xor",
               "argmax", "argmin"}
_CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"}
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "custom_lin"}


class _Val:
    """A value during evaluation: ``x`` has shape ``aval.shape`` (+ ``(n,)`` when ``batched``)."""

    __slots__ = ("x", "batched")

    def __init__(self, x: Any, batched: bool):
        self.x, self.batched = x, batched


def _full(v: _Val, shape: tuple, n: int) -> jax.Array:
    """``v`` as a batched array of unbatched shape ``shape``: broadcast over the missing (leading) axes and the
    run axis. ``v`` may be unbatched of any shape broadcastable to ``shape``, or batched."""
    x = v.x
    if v.batched:
        inner = x.shape[:-1]
        if inner == tuple(shape):
            return x
        dims = tuple(range(len(shape) - len(inner), len(shape))) + (len(shape),)
        return lax.broadcast_in_dim(x, tuple(shape) + (n,), dims)
    x = jnp.asarray(x)
    dims = tuple(range(len(shape) - x.ndim, len(shape)))
    return lax.broadcast_in_dim(x, tuple(shape) + (n,), dims)


def _tree_sum(x: jax.Array, axes: Sequence[int]) -> jax.Array:
    """Sum of ``x`` over ``axes`` (never the last, run, axis) as a tree of elementwise adds of halves.

    XLA's CPU backend can fuse a reduction over leading axes into a consumer's loop, where it becomes a scalar
    loop per output element; halving adds are elementwise, so the whole sum fuses into one loop vectorised over
    the runs. The order of the additions is pairwise instead of sequential."""
    axes = sorted(a % x.ndim for a in axes)
    if not axes:
        return x
    rest = [d for d in range(x.ndim) if d not in axes]
    x = lax.transpose(x, tuple(axes) + tuple(rest))
    kept = x.shape[len(axes):]
    x = x.reshape((-1,) + kept)
    while x.shape[0] > 1:
        half = x.shape[0] // 2
        folded = x[:half] + x[half:2 * half]
        x = jnp.concatenate([folded, x[2 * half:]]) if x.shape[0] % 2 else folded
    return x[0]


def _inner_jaxpr(p: Any) -> tuple[Any, list]:
    """(jaxpr, consts) of a ClosedJaxpr or open Jaxpr parameter."""
    if isinstance(p, core.ClosedJaxpr):
        return p.jaxpr, list(p.consts)
    return p, []


class _Evaluator:
    def __init__(self, n: int):
        self.n = n

    # ------------------------------------------------------------------------------------------ driver
    def eval(self, jaxpr: Any, consts: Sequence[Any], args: Sequence[_Val]) -> list[_Val]:
        env: dict = {}

        def read(v: Any) -> _Val:
            if isinstance(v, core.Literal):
                return _Val(v.val, False)
            return env[v]

        for var, c in zip(jaxpr.constvars, consts):
            env[var] = _Val(c, False)
        for var, a in zip(jaxpr.invars, args):
            env[var] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            if not any(a.batched for a in ins):
                outs = eqn.primitive.bind(*[a.x for a in ins], **eqn.params)
                outs = outs if eqn.primitive.multiple_results else [outs]
                outs = [_Val(o, False) for o in outs]
            else:
                outs = self.apply(eqn, ins)
            for var, o in zip(eqn.outvars, outs):
                if not isinstance(var, core.DropVar):
                    env[var] = o
        return [read(v) for v in jaxpr.outvars]

    def apply(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        name = eqn.primitive.name
        if name in _ELEMENTWISE:
            return self.elementwise(eqn, ins)
        if name in _CALLS:
            return self.call(eqn, ins)
        rule = getattr(self, "rule_" + name, None)
        if rule is not None:
            out = rule(eqn, ins)
            if out is not None:
                return out
        return self.fallback(eqn, ins)

    # ------------------------------------------------------------------------------------------ rules
    def elementwise(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        shape = tuple(eqn.outvars[0].aval.shape)
        args = [_full(a, tuple(v.aval.shape) if tuple(v.aval.shape) == shape else shape, self.n)
                for a, v in zip(ins, eqn.invars)]
        return [_Val(eqn.primitive.bind(*args, **eqn.params), True)]

    def call(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        p = eqn.params
        inner = p.get("jaxpr", p.get("call_jaxpr", p.get("fun_jaxpr")))
        jaxpr, consts = _inner_jaxpr(inner)
        return self.eval(jaxpr, consts, ins)

    def fallback(self, eqn: Any, ins: list[_Val]) -> list[_Val]:
        """JAX's own batching rule for the primitive (through ``jax.vmap``), run axis moved last."""
        prim, params = eqn.primitive, eqn.params

        def bind(*xs: Any) -> Any:
            return prim.bind(*xs, **params)

        axes = tuple(-1 if a.batched else None for a in ins)
        out = jax.vmap(bind, in_axes=axes, out_axes=-1, axis_size=self.n)(*[a.x for a in ins])
        return [_Val(o, True) for o in (out if prim.multiple_results else [out])]

    def rule_broadcast_in_dim(self, eqn: Any, ins: list[_Val]):
        (a, *dyn) = ins
        if dyn:
            return None
        p = eqn.params
        shape = tuple(p["shape"])
        out = lax.broadcast_in_dim(a.x, shape + (self.n,), tuple(p["broadcast_dimensions"]) + (len(shape),))
        return [_Val(out, True)]

    def rule_reshape(self, eqn: Any, ins: list[_Val]):
        (a, *dyn) = ins
        if dyn or eqn.params.get("dimensions") is not None:
            return None
        return [_Val(jnp.reshape(a.x, tuple(eqn.params["new_sizes"]) + (self.n,)), True)]

    def rule_squeeze(self, eqn: Any, ins: list[_Val]):
        return [_Val(lax.squeeze(ins[0].x, eqn.params["dimensions"]), True)]

    def rule_expand_dims(self, eqn: Any, ins: list[_Val]):
        return [_Val(lax.expand_dims(ins[0].x, eqn.params["dimensions"]), True)]

    def rule_transpose(self, eqn: Any, ins: list[_Val]):
        perm = tuple(eqn.params["permutation"])
        return [_Val(lax.transpose(ins[0].x, perm + (len(perm),)), True)]

    def _reduce(self, eqn: Any, ins: list[_Val]):
        return [_Val(eqn.primitive.bind(ins[0].x, **eqn.params), True)]

    rule_reduce_sum = rule_reduce_max = rule_reduce_min = rule_reduce_prod = _reduce
    rule_reduce_and = rule_reduce_or = rule_reduce_xor = rule_argmax = rule_argmin = _reduce

    def _cumulative(self, eqn: Any, ins: list[_Val]):
        return [_Val(eqn.primitive.bind(ins[0].x, **eqn.params), True)]

    rule_cumsum = rule_cumprod = rule_cummax = rule_cummin = rule_cumlogsumexp = _cumulative

    def rule_slice(self, eqn: Any, ins: list[_Val]):
        p = eqn.params
        strides = p["strides"]
        out = lax.slice(ins[0].x, tuple(p["start_indices"]) + (0,), tuple(p["limit_indices"]) + (self.n,),
                        None if strides is None else tuple(strides) + (1,))
        return [_Val(out, True)]

    def rule_dynamic_slice(self, eqn: Any, ins: list[_Val]):
        a, *idx = ins
        if any(i.batched for i in idx):
            return None
        zero = jnp.zeros((), jnp.asarray(idx[0].x).dtype) if idx else 0
        out = lax.dynamic_slice(a.x, [i.x for i in idx] + [zero], tuple(eqn.params["slice_sizes"]) + (self.n,))
        return [_Val(out, True)]

    def rule_dynamic_update_slice(self, eqn: Any, ins: list[_Val]):
        a, u, *idx = ins
        if any(i.batched for i in idx):
            return None
        op = _full(a, tuple(eqn.invars[0].aval.shape), self.n)
        up = _full(u, tuple(eqn.invars[1].aval.shape), self.n)
        zero = jnp.zeros((), jnp.asarray(idx[0].x).dtype) if idx else 0
        return [_Val(lax.dynamic_update_slice(op, up, [i.x for i in idx] + [zero]), True)]

    def rule_concatenate(self, eqn: Any, ins: list[_Val]):
        args = [_full(a, tuple(v.aval.shape), self.n) for a, v in zip(ins, eqn.invars)]
        return [_Val(lax.concatenate(args, eqn.params["dimension"]), True)]

    def rule_stack(self, eqn: Any, ins: list[_Val]):
        args = [_full(a, tuple(v.aval.shape), self.n) for a, v in zip(ins, eqn.invars)]
        return [_Val(eqn.primitive.bind(*args, **eqn.params), True)]

    def rule_split(self, eqn: Any, ins: list[_Val]):
        outs = eqn.primitive.bind(ins[0].x, **eqn.params)
        return [_Val(o, True) for o in outs]

    def rule_unstack(self, eqn: Any, ins: list[_Val]):
        outs = eqn.primitive.bind(ins[0].x, **eqn.params)
        return [_Val(o, True) for o in outs]

    def rule_pad(self, eqn: Any, ins: list[_Val]):
        a, value = ins
        if value.batched:
            return None
        config = tuple(eqn.params["padding_config"]) + ((0, 0, 0),)
        return [_Val(lax.pad(a.x, value.x, config), True)]

    def rule_iota(self, eqn: Any, ins: list[_Val]):
        return None

    def rule_gather(self, eqn: Any, ins: list[_Val]):
        operand, indices = ins
        if indices.batched:
            return None
        p = dict(eqn.params)
        dn = p["dimension_numbers"]
        out_rank = len(eqn.outvars[0].aval.shape)
        p["dimension_numbers"] = dn._replace(offset_dims=tuple(dn.offset_dims) + (out_rank,))
        p["slice_sizes"] = tuple(p["slice_sizes"]) + (self.n,)
        return [_Val(eqn.primitive.bind(operand.x, indices.x, **p), True)]

    def _scatter(self, eqn: Any, ins: list[_Val]):
        operand, indices, updates = ins[:3]
        if indices.batched or len(ins) != 3:
            return None
        p = dict(eqn.params)
        dn = p["dimension_numbers"]
        op = _full(operand, tuple(eqn.invars[0].aval.shape), self.n)
        up = _full(updates, tuple(eqn.invars[2].aval.shape), self.n)
        upd_rank = len(eqn.invars[2].aval.shape)
        p["dimension_numbers"] = dn._replace(update_window_dims=tuple(dn.update_window_dims) + (upd_rank,))
        return [_Val(eqn.primitive.bind(op, indices.x, up, **p), True)]

    rule_scatter = rule_scatter_add = rule_scatter_mul = rule_scatter_min = rule_scatter_max = _scatter

    def rule_dot_general(self, eqn: Any, ins: list[_Val]):
        lhs, rhs = ins
        p = eqn.params
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lshape, rshape = tuple(eqn.invars[0].aval.shape), tuple(eqn.invars[1].aval.shape)
        out_aval = eqn.outvars[0].aval
        out_dtype = out_aval.dtype
        n = self.n
        lf = [d for d in range(len(lshape)) if d not in lc and d not in lb]
        rf = [d for d in range(len(rshape)) if d not in rc and d not in rb]
        contracted = math.prod(lshape[d] for d in lc)
        if lhs.batched and rhs.batched and contracted * math.prod(out_aval.shape) <= SMALL_CONTRACTION:
            # multiply and sum over a common index space (batch, lhs free, rhs free, contracted, runs)
            nb, nlf, nrf, nc = len(lb), len(lf), len(rf), len(lc)
            shape = ([lshape[d] for d in lb] + [lshape[d] for d in lf] + [rshape[d] for d in rf]
                     + [lshape[d] for d in lc] + [n])
            lpos = {d: i for i, d in enumerate(lb)}
            lpos.update({d: nb + i for i, d in enumerate(lf)})
            lpos.update({d: nb + nlf + nrf + i for i, d in enumerate(lc)})
            rpos = {d: i for i, d in enumerate(rb)}
            rpos.update({d: nb + nlf + i for i, d in enumerate(rf)})
            rpos.update({d: nb + nlf + nrf + i for i, d in enumerate(rc)})
            last = len(shape) - 1

            def spread(x: jax.Array, pos: dict) -> jax.Array:
                """x (operand dims..., runs) placed into the common index space (dims in increasing order)."""
                order = sorted(pos, key=pos.get)
                x = lax.transpose(x.astype(out_dtype), tuple(order) + (x.ndim - 1,))
                return lax.broadcast_in_dim(x, tuple(shape), tuple(pos[d] for d in order) + (last,))

            prod = spread(lhs.x, lpos) * spread(rhs.x, rpos)
            axes = tuple(range(nb + nlf + nrf, nb + nlf + nrf + nc))
            out = _tree_sum(prod, axes) if contracted >= TREE_SUM else jnp.sum(prod, axis=axes)
            return [_Val(out.astype(out_dtype), True)]
        if lhs.batched and rhs.batched:
            dn = ((lc, rc), (tuple(lb) + (len(lshape),), tuple(rb) + (len(rshape),)))
            out = lax.dot_general(lhs.x, rhs.x, dn, precision=p.get("precision"),
                                  preferred_element_type=p.get("preferred_element_type"))
            # the runs are the last batch dimension, right after the original ones
            return [_Val(jnp.moveaxis(out, len(lb), -1), True)]
        if lhs.batched:  # runs are lhs's last free dimension
            out = lax.dot_general(lhs.x, rhs.x, ((lc, rc), (lb, rb)), precision=p.get("precision"),
                                  preferred_element_type=p.get("preferred_element_type"))
            return [_Val(jnp.moveaxis(out, len(lb) + len(lf), -1), True)]
        out = lax.dot_general(lhs.x, rhs.x, ((lc, rc), (lb, rb)), precision=p.get("precision"),
                              preferred_element_type=p.get("preferred_element_type"))
        return [_Val(out, True)]  # runs are rhs's last free dimension: already last

    def rule_scan(self, eqn: Any, ins: list[_Val]):
        p = eqn.params
        n_consts, n_carry = p["num_consts"], p["num_carry"]
        jaxpr, consts = _inner_jaxpr(p["jaxpr"])
        const_in, carry_in, xs_in = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
        carry_b = [c.batched for c in carry_in]
        while True:  # carries batched in or by the body are batched throughout
            outs = self._body_flags(jaxpr, const_in, carry_b, [x.batched for x in xs_in], n_carry)
            new_b = [a or b for a, b in zip(carry_b, outs[:n_carry])]
            if new_b == carry_b:
                break
            carry_b = new_b
        carry0 = [_full(c, tuple(v.aval.shape), self.n) if b else c.x
                  for c, v, b in zip(carry_in, eqn.invars[n_consts:n_consts + n_carry], carry_b)]
        ys_flags = outs[n_carry:]

        def body(carry, xs):
            args = ([*const_in] + [_Val(c, b) for c, b in zip(carry, carry_b)]
                    + [_Val(x, v.batched) for x, v in zip(xs, xs_in)])
            res = self.eval(jaxpr, consts, args)
            new_carry = [_full(r, tuple(v.aval.shape), self.n) if b and not r.batched else r.x
                         for r, v, b in zip(res[:n_carry], jaxpr.outvars[:n_carry], carry_b)]
            ys = [r.x for r in res[n_carry:]]
            return new_carry, ys

        carry_out, ys = lax.scan(body, carry0, [x.x for x in xs_in], length=p["length"], reverse=p["reverse"],
                                 unroll=p["unroll"])
        out = [_Val(c, b) for c, b in zip(carry_out, carry_b)]
        # a batched y of unbatched shape s comes out as (length, *s, n): runs still last
        out += [_Val(y, f) for y, f in zip(ys, ys_flags)]
        return out

    def _body_flags(self, jaxpr: Any, const_in: list[_Val], carry_b: list[bool], xs_b: list[bool],
                    n_carry: int) -> list[bool]:
        """Which outputs of a scan body are batched, given which inputs are (abstract evaluation)."""
        flags: dict = {}
        for v, c in zip(jaxpr.invars, [c.batched for c in const_in] + carry_b + xs_b):
            flags[v] = c

        def f(v):
            return False if isinstance(v, core.Literal) else flags.get(v, False)

        for e in jaxpr.eqns:
            b = any(f(v) for v in e.invars)  # as in eval: any batched input batches every output
            for o in e.outvars:
                flags[o] = b
        return [f(v) for v in jaxpr.outvars]

    def rule_cond(self, eqn: Any, ins: list[_Val]):
        index, *ops = ins
        branches = eqn.params["branches"]
        if not index.batched:
            def make(br):
                jaxpr, consts = _inner_jaxpr(br)
                flags = [o.batched for o in ops]

                def fn(*xs):
                    res = self.eval(jaxpr, consts, [_Val(x, b) for x, b in zip(xs, flags)])
                    return [_full(r, tuple(v.aval.shape), self.n) for r, v in zip(res, jaxpr.outvars)]

                return fn

            outs = lax.switch(index.x, [make(b) for b in branches], *[o.x for o in ops])
            return [_Val(o, True) for o in outs]
        results = []
        for br in branches:
            jaxpr, consts = _inner_jaxpr(br)
            res = self.eval(jaxpr, consts, ops)
            results.append([_full(r, tuple(v.aval.shape), self.n) for r, v in zip(res, jaxpr.outvars)])
        idx = index.x
        outs = []
        for k, v in enumerate(eqn.outvars):
            shape = tuple(v.aval.shape)
            sel = lax.broadcast_in_dim(idx, shape + (self.n,), (len(shape),))
            outs.append(_Val(lax.select_n(sel, *[r[k] for r in results]), True))
        return outs


def batch_last(fun: Callable, in_axes: Any = -1) -> Callable:
    """``jax.vmap(fun, in_axes, out_axes=-1)`` for ``in_axes`` entries ``-1`` (batched, run axis last) or
    ``None`` (shared), evaluated with the run axis last throughout (see the module docstring). Every output is
    batched."""

    def wrapped(*args: Any) -> Any:
        axes = in_axes if isinstance(in_axes, (list, tuple)) else (in_axes,) * len(args)
        if len(axes) != len(args):
            raise ValueError(f"batch_last: in_axes has {len(axes)} entries for {len(args)} arguments")
        flat, flags = [], []
        for a, ax in zip(args, axes):
            leaves = jax.tree.leaves(a)
            axs = jax.tree.leaves(ax, is_leaf=lambda x: x is None) if not (ax is None or isinstance(ax, int)) \
                else [ax] * len(leaves)
            if len(axs) != len(leaves):
                raise ValueError("batch_last: in_axes must be -1, None, or a tree prefix-matching the argument")
            for leaf, a_ in zip(leaves, axs):
                if a_ not in (None, -1):
                    raise ValueError(f"batch_last: in_axes entries must be -1 or None, got {a_!r}")
                flat.append(leaf)
                flags.append(a_ == -1)
        sizes = {jnp.shape(x)[-1] for x, b in zip(flat, flags) if b}
        if len(sizes) != 1:
            raise ValueError(f"batch_last: batched arguments must share one trailing run axis, got sizes {sizes}")
        n = sizes.pop()
        treedef = jax.tree.structure(args)
        avals = [jax.ShapeDtypeStruct(jnp.shape(x)[:-1] if b else jnp.shape(x), jnp.result_type(x))
                 for x, b in zip(flat, flags)]
        closed, out_shape = jax.make_jaxpr(lambda *xs: fun(*jax.tree.unflatten(treedef, xs)),
                                           return_shape=True)(*avals)
        outs = _Evaluator(n).eval(closed.jaxpr, closed.consts, [_Val(x, b) for x, b in zip(flat, flags)])
        out_leaves = [_full(o, tuple(v.aval.shape), n) for o, v in zip(outs, closed.jaxpr.outvars)]
        return jax.tree.unflatten(jax.tree.structure(out_shape), out_leaves)

    return wrapped
