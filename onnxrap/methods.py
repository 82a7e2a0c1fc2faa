"""Attribution methods: compositions of rules, registered by name.

A method maps rule keys to rules, as zennit's composites do.  Linear ops are
looked up most specific first: ``conv.head``, ``conv.input``, ``conv.floored``
(an input negative only down to a finite floor, a SiLU's output), ``conv.signed``
(an input that may be negative, see signs.py), ``conv.projection`` (an output that
reaches such an input unrectified, see signs.py), ``conv``, then
``linear`` (``dense.*`` likewise; ``dense.product``, before all of them: a MatMul of two signals); other
ops by position (``product``: a Mul of two signals; ``tail``: between
the last linear ops and the logits), then by kind (``batchnorm``,
``layernorm``, ``maxpool``, ``avgpool``, ``add``, ``concat``, ``gate``, ``softmax``, ``activation``, ``scale``,
``identity``, ``shape``, ``pad``, ``norm``, ``quotient``); ``rule_keys()`` lists them all.  A new method is one
``@register`` factory; its keyword arguments are the method's options
(``epsilon``, ``steps``, ...).  Users build their own the same way::

    from onnxrap import methods
    from onnxrap.rules.linear import AlphaBeta, Epsilon

    mine = methods.Composite({"conv": AlphaBeta(2), "dense": Epsilon(0.25)}, base="lrp-eps", name="my-lrp")
    explainer.explain(x, method=mine)                     # or register it by name:
    methods.register("my-lrp")(lambda: methods.Composite({...}, base="lrp-eps", name="my-lrp"))
    explainer.explain(x, method=methods.SmoothGrad(methods.get("rap"), samples=8))  # wrappers take any method

The equations of every rule and method: docs/rules.md.
"""
from __future__ import annotations

import inspect

import numpy as np

from .engine import one_hot
from .errors import InputError, UnsupportedOpsError
from .rules.basic import Adjoint, BatchNormMask, BatchNormRatio, Crop, Pass
from .rules.joins import AddShare, ConcatSlices, GateOnly, SignalTakesAll
from .rules.linear import AlphaBeta, Epsilon, RapFirst, RapHidden, ZBox
from .rules.normalization import CenteringShare
from .rules.paper import PaperBatchNorm, PaperFirst, PaperFlow
from .rules.pooling import MaxWinner, WindowShare
from .rules.products import BilinearShare, FactorShare
from .rules.signed import AbsShare, FlooredShare, NetSignShare


class Method:
    """A named composite of rules.  ``seed`` is ``"one"`` (1 at the target) or ``"logit"``."""

    batched = False  # attribute() runs inner's backward walk on a batch of changed inputs (compile.py)

    def __init__(self, name, rules, seed="one", description="", options=None, default=None, conserves=False):
        self.name = name
        self.conserves = conserves  # promises relevance summing to the target logit
        self.rules = dict(rules)
        self.default = default  # the rule for ops no key names
        self.seed_kind = seed
        self.description = description
        self.options = dict(options or {})

    @property
    def label(self):
        """The name with any options: ``lrp-eps(epsilon=0.1)``."""
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.options.items())})"

    def rule_for(self, op):
        for key in self._keys(op):
            if key in self.rules:
                return self.rules[key]
        if self.default is not None:
            return self.default
        raise UnsupportedOpsError([(op.name, op.op_type, f"method {self.name} has no rule for it")])

    @staticmethod
    def _keys(op):
        if op.family:
            yield from (f"{op.family}.{p}" for p in op.positions)
            yield op.family
        else:
            yield from op.positions
        yield op.kind

    def check(self, graph):
        """Fail before any work if an op of the graph has no rule in this method."""
        missing = [(op.name, op.op_type, f"method {self.name} has no rule for it")
                   for op in graph.ops
                   if self.default is None and not any(k in self.rules for k in self._keys(op))]
        if missing:
            raise UnsupportedOpsError(missing)

    def seed(self, bk, logits, targets):
        """Relevance at the logits.  ``targets``: one class index per sample, or (N, classes) weights
        ``w`` (a contrast's, see ``contrast_seed``): the score explained is then ``w . logits``."""
        weights = np.asarray(targets)
        if weights.ndim == 2:
            hot = bk.to_device(weights.reshape(logits.shape).astype(logits.dtype))
        else:
            hot = one_hot(bk, logits.shape, targets, logits.dtype)
        return hot * logits if self.seed_kind == "logit" else hot

    def attribute(self, backprop, x, targets):
        """Relevance for the batch ``x``; ``backprop(method, x, targets)`` runs one backward walk."""
        return backprop(self, x, targets)


def contrast_seed(targets, classes, contrast):
    """A contrast's seed weights over the classes, per sample: ``e_t - w`` (docs/rules.md, contrast).

    The score explained is ``(e_t - w) . z``, the target's logit minus the dual's: ``contrast``
    is a class index c (``w = e_c``: "the target rather than c") or ``"others"`` (``w`` is
    every class but the target, equally weighted: "rather than the others on average").
    """
    n = len(targets)
    targets = np.asarray(targets)
    if isinstance(contrast, str):
        if contrast != "others":
            raise InputError(f"contrast is none, others or a class index, not {contrast!r}")
        dual = np.ones((n, classes)) / (classes - 1)
    else:
        c = int(contrast)
        if not 0 <= c < classes:
            raise InputError(f"contrast class {c} is out of range: the model has {classes} classes (0..{classes - 1})")
        same = np.flatnonzero(targets == c)
        if same.size:
            raise InputError(f"contrast class {c} is the target of input {int(same[0])}: explain it against another class")
        dual = np.zeros((n, classes))
        dual[:, c] = 1
    weights = -dual
    weights[np.arange(n), targets] = 1
    return weights


SEEDS = ("one", "logit")


class Composite(Method):
    """A method built from rules, zennit-style, without reaching into private names.

    ``rules`` maps rule keys (``rule_keys()``) to rules.  ``base`` (a method or a registered
    name) fills in every key ``rules`` leaves out, its default rule and its seed.  ``seed``:
    ``"one"`` or ``"logit"`` (default: the base's, else ``"one"``).  ``default``: the rule for
    ops that no key names.  A composite promises no conservation unless ``conserves=True``.
    """

    def __init__(self, rules, base=None, seed=None, default=None, name="composite", description="",
                 options=None, conserves=False):
        if isinstance(base, str):
            base = get(base)
        if base is not None and type(base) not in (Method, Composite):
            raise InputError(f"a composite's base must be a composite of rules; {base.name} is not")
        unknown = sorted(set(rules) - rule_keys())
        if unknown:
            raise InputError(f"no op has the rule key {unknown[0]!r} (keys: {', '.join(sorted(rule_keys()))})")
        if (seed or "one") not in SEEDS:
            raise InputError(f"a composite's seed is {' or '.join(SEEDS)}, not {seed!r}")
        super().__init__(name, {**(base.rules if base else {}), **rules},
                         seed=seed or (base.seed_kind if base else "one"),
                         default=default if default is not None else (base.default if base else None),
                         description=description, options=options, conserves=conserves)


def rule_keys() -> set[str]:
    """Every key a rule map can use: op kinds, linear families, and families at a position."""
    from .ops import Op

    classes, todo = set(), [Op]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in classes:
                classes.add(sub)
                todo.append(sub)
    families = {c.family for c in classes if c.family}
    return ({c.kind for c in classes if c.kind != "op"} | families | {"tail"}
            | {f"{f}.{p}" for f in families for p in ("head", "input", "floored", "signed", "projection", "product")}
            | {"product"})


class Wrapper(Method):
    """A method that runs another (``inner``) on changed inputs and combines its relevance.

    The engine walks the graph with ``inner``'s rules and seed; the wrapper only chooses the
    inputs and combines the results.
    """

    def __init__(self, name, inner, options=None, description=""):
        super().__init__(name, rules={}, options=options, description=description)
        self.inner = inner

    def check(self, graph):
        self.inner.check(graph)


class TimesInput(Wrapper):
    """``inner``'s relevance times the input (gradient x input)."""

    def __init__(self, inner, name=None, description="", options=None):
        super().__init__(name or f"{inner.name}-x-input", inner, options, description)

    def attribute(self, backprop, x, targets):
        return self.inner.attribute(backprop, x, targets) * x


class IntegratedGradients(Wrapper):
    """``(x - baseline)`` times the mean of ``inner``'s relevance along the straight path from
    ``baseline`` to x, as zennit's attributor does with a composite (``inner`` the gradient: IG).

    The midpoint rule over ``steps`` points; every scaled input of a sample goes through the
    model in one batch.
    """

    batched = True

    def __init__(self, inner, steps=32, baseline=0.0, name="integrated-gradients", description="", options=None):
        if steps < 1:
            raise InputError(f"integrated-gradients needs steps >= 1, got {steps}")
        super().__init__(name, inner, {"steps": int(steps), "baseline": baseline, **(options or {})}, description)
        self.steps, self.baseline = int(steps), baseline

    def attribute(self, backprop, x, targets):
        steps = self.steps
        base = np.full_like(x, self.baseline)
        alphas = (np.arange(steps) + 0.5) / steps
        shape = (len(x) * steps,) + x.shape[1:]
        path = (base[:, None] + alphas.reshape((1, steps) + (1,) * (x.ndim - 1)) * (x - base)[:, None])
        along = self.inner.attribute(backprop, path.reshape(shape).astype(x.dtype), np.repeat(targets, steps, axis=0))
        return along.reshape((len(x), steps) + x.shape[1:]).mean(axis=1) * (x - base)


class SmoothGrad(Wrapper):
    """The mean of ``inner``'s relevance over ``samples`` noisy copies of x; noise std =
    ``noise`` x (max - min) of each sample, seeded."""

    batched = True

    def __init__(self, inner, samples=16, noise=0.15, seed=0, name="smoothgrad", description="", options=None):
        if samples < 1:
            raise InputError(f"smoothgrad needs samples >= 1, got {samples}")
        if not noise >= 0:  # a negative std would be read as its absolute value; NaN is refused by the CLI
            raise InputError(f"smoothgrad needs noise >= 0, got {noise}")
        super().__init__(name, inner, {"samples": int(samples), "noise": noise, "seed": seed, **(options or {})},
                         description)
        self.samples, self.noise, self.seed_value = int(samples), noise, seed

    def attribute(self, backprop, x, targets):
        samples = self.samples
        rng = np.random.default_rng(self.seed_value)
        flat = x.reshape(len(x), -1)
        spread = (flat.max(axis=1) - flat.min(axis=1)) * self.noise
        jitter = rng.standard_normal((len(x), samples) + x.shape[1:]) * spread.reshape((-1, 1) + (1,) * (x.ndim - 1))
        noisy = (x[:, None] + jitter).reshape((len(x) * samples,) + x.shape[1:]).astype(x.dtype)
        found = self.inner.attribute(backprop, noisy, np.repeat(targets, samples, axis=0))
        return found.reshape((len(x), samples) + x.shape[1:]).mean(axis=1)


class PaperRap(Method):
    """rap-paper: the normal and the inversion flow, two backward walks that never mix, and their sum."""

    def __init__(self, flows, **kw):
        super().__init__(**kw)
        self.flows = flows  # {"normal": Method, "inversion": Method}

    def check(self, graph):
        for m in self.flows.values():
            m.check(graph)

    def attribute(self, backprop, x, targets):
        flow = self.options["flow"]
        if flow != "sum":
            return backprop(self.flows[flow], x, targets)
        return sum(backprop(m, x, targets) for m in self.flows.values())


FACTORIES: dict = {}


def register(name):
    """Register ``factory(**options) -> Method`` under ``name``."""

    def wrap(factory):
        FACTORIES[name] = factory
        return factory

    return wrap


def options_of(name) -> set[str]:
    return set(inspect.signature(FACTORIES[name]).parameters)


def get(name, **options) -> Method:
    """The registered method ``name`` built with ``options``; a Method passes through as it is."""
    if isinstance(name, Method):
        if options:
            raise InputError(f"options of {name.name} go to its constructor, not to explain ({', '.join(options)})")
        return name
    if name not in FACTORIES:
        raise InputError(f"unknown method {name!r} (known: {', '.join(FACTORIES)})")
    unknown = set(options) - options_of(name)
    if unknown:
        raise InputError(f"method {name} takes no option {', '.join(sorted(unknown))}")
    return FACTORIES[name](**options)


def split_options(names, options, flag=str):
    """Give each named method the options it takes; an option none of them takes is an error.

    ``flag(key)`` is how the caller spells an option in messages (the CLI: ``--key``).
    """
    per_method = {}
    for name in names:
        get(name)  # unknown names fail before any option does
        per_method[name] = {k: v for k, v in options.items() if k in options_of(name)}
        get(name, **per_method[name])  # bad values fail here, before any work
    unused = sorted(set(options) - {k for taken in per_method.values() for k in taken})
    if unused:
        raise InputError(f"{flag(unused[0])} is not an option of {', '.join(names)}")
    return per_method


# Rules every relevance method shares for ops that carry relevance without choices.  A product of two
# signals (docs/rules.md, products): half to each factor, a MatMul's by the method's own linear rule
# (``_products``).  A norm only ever computes a scale; a quotient by a positive divisor is one.
_MOVES = {"activation": Pass(), "scale": Pass(), "identity": Pass(), "shape": Adjoint(), "pad": Adjoint(),
          "concat": ConcatSlices(), "maxpool": MaxWinner(), "gate": SignalTakesAll(), "softmax": GateOnly(),
          "product": FactorShare(), "norm": GateOnly(), "quotient": SignalTakesAll()}


def _products(rule):
    """A MatMul of two signals: half of R to each factor, shared by ``rule`` with the other as its weight."""
    return {"dense.product": BilinearShare(rule)}

_RAP = {**_MOVES, "dense.head": RapFirst(), "conv.head": RapFirst(), "conv.input": ZBox(),
        "linear": RapHidden(per_sign=False), "batchnorm": Pass(), "layernorm": CenteringShare(absolute=True),
        "avgpool": WindowShare(absolute=True), "add": AddShare(absolute=True), **_products(AbsShare())}

# rap's fix for heads behind pools (a 1x1-convolution classifier, then a global pool):
# the seed 1 reaches the head as the gradient of the logit, so rap.head's sum_j R_j z_j is
# the logit; sharing it by |z| instead gives sum z^2 / sum |z|, which is not.
_RAP_TAIL = {"tail": Adjoint()}

# rap's rule for linear ops whose input may be negative (residual streams, linear bottlenecks):
# A2 grows the relevance mass about 2.5x at each of them (issue 14, EVALUATION.md), AbsShare never
# does.  A dense op reading the model input keeps A2 (the spec's choice, which the mlp golden
# holds): one layer cannot compound.  Its position "input" comes before "signed", so its key wins.
_RAP_SIGNED = {"conv.signed": AbsShare(), "dense.signed": AbsShare(),
               "dense.input": RapHidden(per_sign=False, conserve=True)}
# ... and at the projections writing into such an input (signs.py), where a unit may end negative:
# by the contributions that push it the way it goes (EVALUATION.md, issue 14's second round).
_RAP_PROJECTION = {"conv.projection": NetSignShare(), "dense.projection": NetSignShare()}


# rap keeps its promise where a rule's own denominator is exactly zero (docs: conservation edge cases).
_RAP_CONSERVING = {"dense.head": RapFirst(conserve=True), "conv.head": RapFirst(conserve=True),
                   "conv.input": ZBox(conserve=True), "linear": RapHidden(per_sign=False, conserve=True),
                   "maxpool": MaxWinner(conserve=True), "avgpool": WindowShare(absolute=True, conserve=True),
                   "add": AddShare(absolute=True, conserve=True), "concat": ConcatSlices(conserve=True),
                   "pad": Crop(), "layernorm": CenteringShare(absolute=True, conserve=True)}


# ... and at inputs with a floor (signs.py: a SiLU's or hard-swish's output, negative down to -0.28 or
# -0.375), read as rectified, as rap reads a Relu's output; the size rule there gave every share the unit's
# sign, so an EfficientNet-B0's map had no negative pixel (docs/rules.md, signed.floored; EVALUATION.md, D).
_RAP_FLOORED = {"conv.floored": FlooredShare(), "dense.floored": FlooredShare()}


@register("rap")
def _rap():
    return Method("rap", {**_RAP, **_RAP_TAIL, **_RAP_SIGNED, **_RAP_PROJECTION, **_RAP_CONSERVING, **_RAP_FLOORED},
                  conserves=True, description=(
        "Relative Attributing Propagation with the measured fixes (docs/rules.md, rap), bounded relevance "
        "on signed inputs and at the projections into them, inputs with a floor (SiLU, hard-swish) read as "
        "rectified (docs/rules.md, signed); conserves the logit on every graph (docs/rules.md, conservation)"))


@register("rap-floors-signed")
def _rap_floors_signed():
    return Method("rap-floors-signed", {**_RAP, **_RAP_TAIL, **_RAP_SIGNED, **_RAP_PROJECTION, **_RAP_CONSERVING},
                  conserves=True, description=(
        "rap before inputs with a floor had a rule: a SiLU's or hard-swish's output read as signed (the size "
        "rule), so maps of SiLU networks take the logit's sign at every pixel (docs/rules.md, signed.floored)"))


@register("rap-a2-projections")
def _rap_a2_projections():
    return Method("rap-a2-projections", {**_RAP, **_RAP_TAIL, **_RAP_SIGNED, **_RAP_CONSERVING}, conserves=True,
                  description=("rap between issue 14's two rounds: A2 (rap.hidden) at the projections into a "
                               "signed input (docs/rules.md, signed)"))


@register("rap-unbounded")
def _rap_unbounded():
    return Method("rap-unbounded", {**_RAP, **_RAP_TAIL}, conserves=True, description=(
        "rap before issue 14: A2 on signed inputs too, where the relevance mass can grow without bound "
        "(docs/rules.md, signed)"))


@register("rap-reference")
def _rap_reference():
    return Method("rap-reference", {
        **_RAP, "linear": RapHidden(per_sign=True), "batchnorm": BatchNormMask(),
        "avgpool": WindowShare(absolute=False), "add": AddShare(absolute=False),
        **_products(RapHidden(per_sign=True))},
        description="RAP as its authors released it (docs/rules.md, reference)")


@register("rap-paper")
def _rap_paper(flow: str = "sum"):
    if flow not in ("sum", "normal", "inversion"):
        raise InputError(f"rap-paper's flow is sum, normal or inversion, not {flow!r}")
    flows = {k_name: Method(f"rap-paper-{k_name}", {
        **_RAP, "dense.head": PaperFirst(), "conv.head": PaperFirst(), "conv.input": PaperFlow(k),
        "linear": PaperFlow(k), "batchnorm": PaperBatchNorm(k), **_products(PaperFlow(k))}, seed="logit")
        for k_name, k in (("normal", 1), ("inversion", -1))}
    return PaperRap(flows, name="rap-paper", rules={}, seed="logit", options={"flow": flow},
                    description="RAP as the journal's equations (5)-(11) read (docs/rules.md, paper); experimental")


def _lrp(name, rules, description, options=None):
    """LRP composites (docs/rules.md, lrp): z-rules at joins and pools, z^B at the input convolution."""
    return Method(name, {**_MOVES, "conv.input": ZBox(stabilizer=1e-9), "batchnorm": BatchNormRatio(),
                         "layernorm": CenteringShare(absolute=False),
                         "avgpool": WindowShare(absolute=False), "add": AddShare(absolute=False),
                         **_products(rules.get("dense", rules.get("linear"))), **rules},
                  seed="logit", description=description, options=options)


def _epsilon(name, epsilon):
    """A negative epsilon pulls z towards zero instead of away from it: the divisions it guards blow up."""
    if not epsilon >= 0:  # NaN too
        raise InputError(f"{name} needs epsilon >= 0, got {epsilon}")
    return Epsilon(epsilon)


@register("lrp-eps")
def _lrp_eps(epsilon: float = 1e-6):
    return _lrp("lrp-eps", {"linear": _epsilon("lrp-eps", epsilon)}, "LRP-epsilon on every linear op",
                {"epsilon": epsilon})


@register("lrp-ab")
def _lrp_ab(alpha: float = 2.0):
    if alpha < 1:
        raise InputError(f"lrp-ab needs alpha >= 1 (beta = alpha - 1), got {alpha}")
    return _lrp("lrp-ab", {"linear": AlphaBeta(alpha)}, "LRP alpha-beta, beta = alpha - 1", {"alpha": alpha})


def _alpha_beta_preset(alpha):
    name = f"lrp-a{alpha}b{alpha - 1}"
    register(name)(lambda: _lrp(name, {"linear": AlphaBeta(alpha)}, f"LRP alpha={alpha} beta={alpha - 1}"))


_alpha_beta_preset(1)
_alpha_beta_preset(2)


@register("lrp-preset-a")
def _preset_a(epsilon: float = 0.1):
    return _lrp("lrp-preset-a", {"dense": _epsilon("lrp-preset-a", epsilon), "conv": AlphaBeta(1)},
                "iNNvestigate's preset A: epsilon on dense layers, alpha1-beta0 on convolutions", {"epsilon": epsilon})


@register("lrp-preset-b")
def _preset_b(epsilon: float = 0.1):
    return _lrp("lrp-preset-b", {"dense": _epsilon("lrp-preset-b", epsilon), "conv": AlphaBeta(2)},
                "iNNvestigate's preset B: epsilon on dense layers, alpha2-beta1 on convolutions", {"epsilon": epsilon})


@register("gradient")
def _gradient():
    return Method("gradient", {}, default=Adjoint(), description="the gradient of the target logit")


@register("gradient-x-input")
def _gradient_x_input():
    return TimesInput(_gradient(), description="gradient times input")


def _inner(of):
    """The method a wrapper runs; named only in its options where it is not the gradient."""
    return get(of), ({} if of == "gradient" else {"of": of})


@register("integrated-gradients")
def _integrated_gradients(steps: int = 32, baseline: float = 0.0, of: str = "gradient"):
    inner, named = _inner(of)
    return IntegratedGradients(inner, steps, baseline, options=named,
                               description=f"integrated {'gradients' if of == 'gradient' else of} "
                                           "from a constant baseline")


@register("smoothgrad")
def _smoothgrad(samples: int = 16, noise: float = 0.15, seed: int = 0, of: str = "gradient"):
    inner, named = _inner(of)
    return SmoothGrad(inner, samples, noise, seed, options=named,
                      description=f"{'gradients' if of == 'gradient' else of} averaged over noisy copies of the input")
