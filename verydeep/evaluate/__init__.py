"""The paper's test-time protocols (Sec. 3.2, 4): centre crop, dense, multi-crop, multi-scale,
dense + multi-crop, fusion of nets; reports, prediction and export."""

from __future__ import annotations

from verydeep.evaluate.checkpoints import EvalNet, as_eval_nets, load_eval_net
from verydeep.evaluate.crops import crop_positions, grid_offsets, multicrop_grid
from verydeep.evaluate.evaluator import EvalResult, RowSpec, default_scales, evaluate, evaluate_rows
from verydeep.evaluate.fusion import average_posteriors
from verydeep.topk import per_class_accuracy, topk_error, topk_hits
from verydeep.evaluate.protocols import PROTOCOLS, center, dense_scores, multicrop

__all__ = [
    "EvalNet", "EvalResult", "PROTOCOLS", "RowSpec", "as_eval_nets", "average_posteriors", "center",
    "crop_positions", "default_scales", "dense_scores", "evaluate", "evaluate_rows", "grid_offsets",
    "load_eval_net", "multicrop", "multicrop_grid", "per_class_accuracy", "topk_error", "topk_hits",
]
