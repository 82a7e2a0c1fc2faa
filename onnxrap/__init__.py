"""onnxrap: Relative Attributing Propagation for any ONNX image classifier."""
from .api import Explainer, Explanation
from .errors import DeviceError, InputError, ModelError, OnnxrapError, UnsupportedOpsError
from .methods import FACTORIES as METHODS

__version__ = "0.1.0"
__all__ = ["Explainer", "Explanation", "METHODS", "OnnxrapError", "ModelError", "InputError",
           "DeviceError", "UnsupportedOpsError"]
