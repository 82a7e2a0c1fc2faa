"""Relevance rules: small objects ``rule(op, ctx, R) -> [R_in per data input]``.

A rule reads the op's captured inputs and output from ``ctx`` (a mapping
from tensor name to backend array, with ``ctx.bk``, the backend) and
returns one relevance array per data input of the op, shaped like it.
Rules know nothing of methods; ``methods.py`` composes them.
"""


class Rule:
    def __call__(self, op, ctx, R):
        raise NotImplementedError

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"
