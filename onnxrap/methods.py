"""Attribution methods: compositions of rules, registered by name.

A method maps op kinds to rules.  Linear ops are looked up most specific
first: ``conv.head``, ``conv.input``, ``conv``, then ``linear``; other ops
by kind (``batchnorm``, ``maxpool``, ``avgpool``, ``add``, ``concat``,
``activation``, ``scale``, ``identity``, ``shape``).  A new method is one
``register(Method(...))`` entry.
"""
from __future__ import annotations

from .engine import one_hot
from .errors import InputError, UnsupportedOpsError
from .rules.basic import Adjoint, BatchNormMask, BatchNormRatio, Pass
from .rules.joins import AddShare, ConcatSlices
from .rules.linear import AlphaBeta, RapFirst, RapHidden, ZBox
from .rules.pooling import MaxWinner, WindowShare


class Method:
    """A named composite of rules.  ``seed`` is ``"one"`` (1 at the target) or ``"logit"``."""

    def __init__(self, name, rules, seed="one", description=""):
        self.name = name
        self.rules = dict(rules)
        self.seed_kind = seed
        self.description = description

    def rule_for(self, op):
        for key in self._keys(op):
            if key in self.rules:
                return self.rules[key]
        raise UnsupportedOpsError([(op.name, op.op_type, f"method {self.name} has no rule for it")])

    @staticmethod
    def _keys(op):
        if op.family:
            yield from (f"{op.family}.{p}" for p in op.positions)
            yield op.family
        yield op.kind

    def check(self, graph):
        """Fail before any work if an op of the graph has no rule in this method."""
        missing = [(op.name, op.op_type, f"method {self.name} has no rule for it")
                   for op in graph.ops if not any(k in self.rules for k in self._keys(op))]
        if missing:
            raise UnsupportedOpsError(missing)

    def seed(self, bk, logits, targets):
        hot = one_hot(bk, logits.shape, targets, logits.dtype)
        return hot * logits if self.seed_kind == "logit" else hot


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


# Rules every method shares for ops that carry relevance without choices.
_MOVES = {"activation": Pass(), "scale": Pass(), "identity": Pass(), "shape": Adjoint(),
          "concat": ConcatSlices(), "maxpool": MaxWinner()}

_RAP = {**_MOVES, "dense.head": RapFirst(), "conv.head": RapFirst(), "conv.input": ZBox(),
        "linear": RapHidden(per_sign=False), "batchnorm": Pass(),
        "avgpool": WindowShare(absolute=True), "add": AddShare(absolute=True)}

register(Method("rap", _RAP, description=(
    "Relative Attributing Propagation with the measured fixes (spec section A): conserves the logit")))

register(Method("rap-reference", {
    **_RAP, "linear": RapHidden(per_sign=True), "batchnorm": BatchNormMask(),
    "avgpool": WindowShare(absolute=False), "add": AddShare(absolute=False)},
    description="RAP as its authors released it (spec section A with the [ref] items)"))


def _lrp(rules):
    """LRP composites: z-rules at joins and pools, z^B at the input convolution (spec B)."""
    return {**_MOVES, "conv.input": ZBox(stabilizer=1e-9), "batchnorm": BatchNormRatio(),
            "avgpool": WindowShare(absolute=False), "add": AddShare(absolute=False), **rules}


for _alpha in (1, 2):
    register(Method(f"lrp-a{_alpha}b{_alpha - 1}", _lrp({"linear": AlphaBeta(alpha=_alpha)}), seed="logit",
                    description=f"LRP alpha={_alpha} beta={_alpha - 1}"))
