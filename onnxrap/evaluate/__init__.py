"""Faithfulness evaluation by region perturbation (docs/rules.md, section "Evaluation"; paper section V.B).

For every correctly classified input and every method, the relevance is summed
over channels to one value per pixel; the most relevant pixels of each sign are
perturbed step by step and the perturbed inputs scored by a plain ONNX Runtime
session.  The modules, in the order the work flows:

- ``data``: the inputs and their labels (a folder of images or an ``.npz``);
- ``scoring``: class scores from ONNX Runtime;
- ``perturbation``: the grid of steps, the ranking of pixels, the perturbations;
- ``metrics``: accuracy, logit, probability, AOPC and concentration;
- ``evaluation``: one method through all of the above;
- ``report``, ``plots``: the files written;
- ``command``: ``Settings`` and ``run``, what ``onnxrap evaluate`` calls.
"""
from .command import DEFAULT_METHODS, Settings, run
from .data import Dataset, list_images, load_dataset
from .evaluation import Evaluation
from .metrics import aopc, concentration, concentration_grid
from .perturbation import (CONTROLS, DEFAULT_FRACTIONS, PAPER_STEPS, PERTURBATIONS, REMOVALS, Grid, channels_first,
                           default_grid, perturb, rank_pixels, shuffle_rng)
from .scoring import Scorer

__all__ = ["CONTROLS", "DEFAULT_FRACTIONS", "DEFAULT_METHODS", "PAPER_STEPS", "PERTURBATIONS", "REMOVALS", "Dataset",
           "Evaluation", "Grid", "Scorer", "Settings", "aopc", "channels_first", "concentration",
           "concentration_grid", "default_grid", "list_images", "load_dataset", "perturb", "rank_pixels", "run",
           "shuffle_rng"]
