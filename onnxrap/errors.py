"""Errors a user can act on.  The CLI prints ``str(error)`` as one line and exits 2."""


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


class InputError(OnnxrapError):
    """An image, array, target or option does not fit the model."""


class DeviceError(OnnxrapError):
    """The requested device cannot be used."""


def first_line(exc) -> str:
    """The first line of a library's exception text, for a one-line message."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
