"""Class scores of (perturbed) inputs from a plain ONNX Runtime session."""
from __future__ import annotations

import numpy as np

from ..capture import batches
from ..errors import InputError, first_line


class Scorer:
    """A plain ONNX Runtime session on the model that returns the class scores the explainer explains.

    Where those are not a model output (a final Softmax is explained through), they are added as one.
    """

    def __init__(self, explainer, batch_size=64):
        graph = explainer.graph
        self.graph = graph
        self.batch_size = max(1, int(batch_size))
        outputs = {o.name for o in graph.model.graph.output}
        self.session = explainer.capture.session_with_outputs([] if graph.logits_name in outputs
                                                              else [graph.logits_name])
        self.dtype = explainer.capture.input_dtype
        self.fixed = graph.fixed_batch

    @property
    def chunk(self):
        """Inputs per ONNX Runtime run: the model's fixed batch, else ``batch_size``."""
        return self.fixed or self.batch_size

    def logits(self, x):
        """(N, classes) float64 for the batch ``x``."""
        out = []
        for part, n in batches(np.asarray(x, dtype=self.dtype), self.batch_size, self.fixed):
            try:
                y = self.session.run([self.graph.logits_name], {self.graph.input_name: np.ascontiguousarray(part)})[0]
            except Exception as exc:
                raise InputError(f"{self.graph.label}: ONNX Runtime rejects an input of shape "
                                 f"{tuple(part.shape)}: {first_line(exc)}") from None
            out.append(np.asarray(y, dtype=np.float64).reshape(len(part), -1)[:n])
        return np.concatenate(out) if out else np.zeros((0, 0))
