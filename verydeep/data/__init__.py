"""ImageNet data pipeline: layouts, decoding, the paper's transforms, loaders, demo data.

The names below are loaded on first use (PEP 562), so ``verydeep.data.config`` and the
layouts load without torch: commands that need no tensors answer at once."""

from __future__ import annotations

from verydeep.lazy_exports import lazy_exports

# module -> the names this package exports from it
EXPORTS = {
    "verydeep.data.config": ("DataConfig",),
    "verydeep.data.decode": ("load_image",),
    "verydeep.data.demo": ("make_demo_dataset",),
    "verydeep.data.demo_classes": ("ALT_CLASSES", "CLASS_SETS", "DEMO_CLASSES"),
    "verydeep.data.errors": ("BadImageError", "DataError"),
    "verydeep.data.layouts": ("Splits", "discover"),
    "verydeep.data.loaders": ("build_eval_loader", "build_train_loader", "epoch_permutation", "sample_rng"),
    "verydeep.data.transforms": ("eval_transform", "normalization"),
}
__all__ = sorted(name for names in EXPORTS.values() for name in names)

__getattr__, __dir__ = lazy_exports(__name__, EXPORTS, globals())
