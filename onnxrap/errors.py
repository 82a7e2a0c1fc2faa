"""Errors a user can act on.  The CLI prints ``str(error)`` as one line and exits 2."""
import re


class OnnxrapError(Exception):
    """Base class: the message names the file, node or op at fault."""


class ModelError(OnnxrapError):
    """The model cannot be read, checked or explained."""


class UnsupportedOpsError(ModelError):
    """One or more nodes have no relevance rule; all are listed at once."""

    def __init__(self, nodes):
        self.nodes = list(nodes)  # (node name, op type, reason)
        listed = "; ".join(f"{name} ({op}{': ' + why if why else ''})" for name, op, why in self.nodes)
        super().__init__(f"unsupported ops in the data path: {listed}")


class SampleError(ModelError):
    """What the model does with some samples of a batch: ``samples`` are their places in it (the CLI names
    their files), ``reason`` says what happened without the batch."""

    def __init__(self, label, reason, samples, batch):
        self.label, self.reason, self.samples = label, reason, [int(s) for s in samples]
        where = "this input" if batch == 1 else f"input {', '.join(map(str, self.samples))} of the batch"
        super().__init__(f"{label}: {reason} for {where}")


class InputError(OnnxrapError):
    """An image, array, target or option does not fit the model."""


class DeviceError(OnnxrapError):
    """The requested device cannot be used."""


def first_line(exc) -> str:
    """The first line of a library's exception text, for a one-line message, without
    ONNX Runtime's status prefix and C++ source location."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", line)
    return re.sub(r"^\S+\.(cc|h|cpp):\d+ .*?\) ", "", line)
