"""The paper's test-time protocols (Sec. 3.2, 4): centre crop, dense, multi-crop, multi-scale,
dense + multi-crop, fusion of nets; reports, prediction and export.

Top-k error and per-class accuracy are shared with training's validation: ``verydeep.topk``.
"""

from __future__ import annotations

from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets, load_eval_net
from verydeep.evaluate.crops import crop_positions, grid_offsets, multicrop_grid
from verydeep.evaluate.evaluator import EvalResult, RowResult, RowSpec, evaluate, evaluate_rows
from verydeep.evaluate.fusion import PosteriorAverage, average_posteriors, class_permutation
from verydeep.evaluate.options import EvalOptions
from verydeep.evaluate.posterior_store import PosteriorStore
from verydeep.evaluate.predict import predict
from verydeep.evaluate.protocols import METHODS, PROTOCOLS, center, dense_scores, multicrop
from verydeep.evaluate.scales import resolve_scales

__all__ = [
    "EvalNet", "EvalOptions", "EvalResult", "METHODS", "PROTOCOLS", "PosteriorAverage", "PosteriorStore",
    "RowResult",
    "RowSpec", "as_eval_nets", "average_posteriors", "center", "class_permutation", "crop_positions",
    "dense_scores", "evaluate", "evaluate_rows", "grid_offsets", "load_eval_net", "multicrop",
    "multicrop_grid", "predict", "resolve_scales",
]
