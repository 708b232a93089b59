"""The command line's vocabulary: one flag per concept, with one meaning in every command.

Each ``add_*`` function below is the only place its flag is defined, so every command that
takes the concept spells it and explains it the same way (README.md, "Command-line
vocabulary", is the same table in prose). Training shorthands (``--model``, ``-b``, ``--lr``,
...) are spellings of recipe keys: they become ``--set`` overrides, applied before the
explicit ``--set`` ones.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from verydeep.errors import UsageError
from verydeep.training_config import AMP_MODES  # imports no torch: the parsers build without it

# --- one rule per concept ---------------------------------------------------------------------

DEVICE_HELP = "auto (this process's GPU if torch sees one, else the CPU), cpu, cuda or cuda:N"
AMP_HELP = "autocast precision: auto (bf16 on CUDA, fp32 on CPU), none (fp32), bf16 or fp16"


class _Alias(argparse.Action):
    """Another spelling of a flag, hidden from --help: torchvision's or timm's (taken as they are),
    or an older one of ours (refused in one line naming the flag to use: one flag per concept)."""

    def __init__(self, option_strings, dest, flag: str = "", note: bool = False, **kwargs) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.flag, self.note = flag, note

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if self.note:
            parser.error(f"{option_string} is not a verydeep flag any more; use {self.flag}")
        setattr(namespace, self.dest, values)


def add_alias(p: argparse.ArgumentParser, *spellings: str, flag: str, dest: str, note: bool = False,
              type=None) -> None:
    """``spellings`` of ``flag`` (its ``dest``), hidden from --help; ``note``: an older spelling of
    ours, refused with a line naming ``flag``."""
    p.add_argument(*spellings, dest=dest, action=_Alias, flag=flag, note=note, type=type)


def add_data(p: argparse.ArgumentParser, help: str = "dataset folder (train/ and val/, or ImageNet's layouts)",
             dest: str = "data", **kwargs) -> None:
    p.add_argument("--data", metavar="DIR", dest=dest, help=help, **kwargs)
    add_alias(p, "--data-path", "--data-dir", flag="--data", dest=dest)  # torchvision's, timm's


def add_out(p: argparse.ArgumentParser, what: str, default: str | None = None, default_text: str | None = None,
            required: bool = False) -> None:
    """``--out DIR``: the folder a command writes into (made if missing); ``what`` says what goes there."""
    shown = default_text or default
    p.add_argument("--out", metavar="DIR", default=default, required=required,
                   help=f"folder to write {what} into, made if missing" + (f" (default: {shown})" if shown else ""))
    add_alias(p, "--output-dir", flag="--out", dest="out")  # torchvision's


def add_json(p: argparse.ArgumentParser, what: str = "the results") -> None:
    p.add_argument("--json", nargs="?", const="-", metavar="PATH",
                   help=f"write {what} as JSON to PATH; without PATH (or with -), to stdout instead of the text")


def add_checkpoint(p: argparse.ArgumentParser, *, several: bool = False, required: bool = True) -> None:
    extra = "; repeat to fuse several nets (posteriors averaged)" if several else ""
    p.add_argument("--checkpoint", action="append" if several else "store", required=required,
                   metavar="RUN_OR_FILE",
                   help="a run folder (its best.pt), a checkpoint .pt, an exported .safetensors or a torchvision "
                        f"VGG state dict{extra}")


def add_ema(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ema", action="store_true",
                   help="use the checkpoint's EMA weights (runs trained with train.ema_decay)")


def add_device(p: argparse.ArgumentParser, default: str | None = "auto", key: str = "",
               default_text: str = "the recipe's") -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=(f"{key}: " if key else "") + DEVICE_HELP + f"; default: {default or default_text}")


def add_amp(p: argparse.ArgumentParser, default: str | None = "auto", key: str = "",
            default_text: str = "the recipe's") -> None:
    p.add_argument("--amp", choices=AMP_MODES, default=default,
                   help=(f"{key}: " if key else "") + AMP_HELP + f"; default: {default or default_text}")


def add_batch_size(p: argparse.ArgumentParser, default: int | None = None, what: str = "images per step") -> None:
    shown = f" (default: {default})" if default is not None else ""
    p.add_argument("-b", "--batch-size", type=positive_int, default=default, metavar="N",
                   help=f"{what}, the GLOBAL batch: over ALL processes together (each of W torchrun "
                        f"processes takes N/W){shown}")


def add_workers(p: argparse.ArgumentParser, default: int | None = None, what: str = "data loading",
                default_text: str | None = None) -> None:
    shown = default if default is not None else default_text
    shown = f" (default: {shown})" if shown is not None else ""
    p.add_argument("-j", "--workers", type=non_negative_int, default=default, metavar="N",
                   help=f"{what} worker processes (per process under torchrun; 0: in-process){shown}")


def add_crop_size(p: argparse.ArgumentParser, default: int | None = None,
                  what: str = "the net's input side: the training crop (224 for the paper's nets)") -> None:
    """``--crop-size N``: the side of the square input the net takes (older spellings of ours:
    --image-size, --crop)."""
    p.add_argument("--crop-size", type=positive_int, default=default, metavar="N", help=what)
    add_alias(p, "--image-size", "--crop", flag="--crop-size", dest="crop_size", note=True, type=positive_int)


def add_devices(p: argparse.ArgumentParser, what: str, default: int | None = None) -> None:
    """``--devices N``: how many devices (one process each) a command runs or plans for."""
    p.add_argument("--devices", type=positive_int, default=default, metavar="N", help=what)
    add_alias(p, "--world", flag="--devices", dest="devices", note=True, type=positive_int)


def add_model(p: argparse.ArgumentParser, help: str = "net: registry name or paper letter "
                                                        "(vgg11 ... vgg19, *_bn, A ... E)") -> None:
    p.add_argument("--model", metavar="NAME", help=help)


# --- training: shorthands for recipe keys ---------------------------------------------------------

# flag dest -> the recipe key it sets (``--set KEY=VALUE``)
TRAINING_SHORTHANDS = {
    "data": "data.root",
    "model": "model.name",
    "batch_size": "train.batch_size",
    "lr": "optim.lr",
    "epochs": "train.epochs",
    "workers": "data.workers",
    "device": "train.device",
    "amp": "train.amp",
    "pretrained": "model.pretrained",
}


def add_training(p: argparse.ArgumentParser, *, config_default: str | None = None) -> None:
    """Recipe, ``--set`` and the shorthands every training command takes (train, demo)."""
    p.add_argument("--config", default=config_default, metavar="RECIPE",
                   help="recipe: a packaged name (`verydeep recipes` lists them, e.g. paper_A_S256) or a YAML file"
                        + (f" (default: {config_default})" if config_default else
                           "; not needed with --resume: the run's own config.yaml is used"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=0.001 (repeatable; applied after the "
                        "shorthands below)")
    g = p.add_argument_group("shorthands for recipe keys (torchvision/timm spellings)")
    add_model(g, help="model.name: registry name or paper letter (vgg16, vgg16_bn, D, ...)")
    add_batch_size(g, what="train.batch_size: images per optimiser step")
    g.add_argument("--lr", type=positive_float, metavar="LR", help="optim.lr: the base learning rate")
    g.add_argument("--epochs", type=positive_int, metavar="N", help="train.epochs")
    add_workers(g, what="data.workers: training data loading")
    add_device(g, default=None, key="train.device")
    add_amp(g, default=None, key="train.amp")
    g.add_argument("--pretrained", metavar="FILE",
                   help="model.pretrained: fine-tune these weights (a torchvision .pth state dict, a .safetensors "
                        "export, a verydeep checkpoint or run folder) with a new classifier for the data's classes")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue a run from its last.pt: the run folder RUN_DIR (or --out), with the run's own "
                        "config.yaml and the overrides given now (e.g. --epochs)")


def training_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` assignments for the shorthands given, then the explicit ``--set`` ones.

    Values are written as JSON (valid YAML), so a path or a name is never re-read as a number
    or a boolean."""
    out = []
    for dest, key in TRAINING_SHORTHANDS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out.append(f"{key}={json.dumps(value)}")
    return [*out, *args.overrides]


# --- other tools' flags --------------------------------------------------------------------------

# torchvision's reference scripts' and timm's train.py flags that verydeep spells as a recipe key
# or another command: an "unrecognized argument" among them is answered with ours, in one line.
FOREIGN_FLAGS = {
    "--opt": "--set optim.name=sgd|adam|adamw",
    "--momentum": "--set optim.momentum=VALUE",
    "--wd": "--set optim.weight_decay=VALUE",
    "--weight-decay": "--set optim.weight_decay=VALUE",
    "--clip-grad-norm": "--set optim.grad_clip=VALUE",
    "--clip-grad": "--set optim.grad_clip=VALUE",
    "--sched": "--set schedule.name=plateau|step|multistep|cosine|constant",
    "--lr-scheduler": "--set schedule.name=plateau|step|multistep|cosine|constant",
    "--lr-warmup-epochs": "--set schedule.warmup_epochs=N",
    "--warmup-epochs": "--set schedule.warmup_epochs=N",
    "--label-smoothing": "--set train.label_smoothing=VALUE",
    "--smoothing": "--set train.label_smoothing=VALUE",
    "--model-ema": "--set train.ema_decay=VALUE (e.g. 0.9999)",
    "--model-ema-decay": "--set train.ema_decay=VALUE",
    "--sync-bn": "--set parallel.sync_batch_norm=true",
    "--mixup-alpha": "--set data.mixup_alpha=VALUE",
    "--mixup": "--set data.mixup_alpha=VALUE",
    "--cutmix-alpha": "--set data.cutmix_alpha=VALUE",
    "--cutmix": "--set data.cutmix_alpha=VALUE",
    "--auto-augment": "--set data.auto_augment=randaugment|trivialaugment",
    "--aa": "--set data.auto_augment=randaugment|trivialaugment",
    "--random-erase": "--set data.random_erasing=P",
    "--reprob": "--set data.random_erasing=P",
    "--train-crop-size": "--set data.crop_size=N",
    "--val-resize-size": "--set data.eval_scale=N",
    "--val-crop-size": "--set data.eval_crop=N",
    "--input-size": "--crop-size N (models, export, bench) or --set data.crop_size=N (train)",
    "--img-size": "--crop-size N (models, export, bench) or --set data.crop_size=N (train)",
    "--print-freq": "--set train.log_every=N",
    "--log-interval": "--set train.log_every=N",
    "--seed": "--set train.seed=N",
    "--channels-last": "--set train.channels_last=true",
    "--weights": "--pretrained FILE (a .pth state dict, .safetensors or run folder; the net: --model NAME)",
    "--initial-checkpoint": "--pretrained FILE",
    "--num-classes": "the class folders of --data (the classifier is made for them; model.num_classes)",
    "--test-only": "verydeep eval --checkpoint RUN_DIR --data DIR",
    "--world-size": "torchrun --nproc_per_node N (the processes set it)",
    "--dist-url": "torchrun --rdzv_endpoint HOST:PORT",
}
# the recipe key each hint names, where it names one (tests check that each exists)
HINT_KEY = re.compile(r"--set ([a-z_]+\.[a-z_]+)=")


def foreign_flag_hint(message: str) -> str | None:
    """One line naming our spelling, when argparse's ``unrecognized arguments: ...`` holds one of
    :data:`FOREIGN_FLAGS`; None otherwise."""
    if not message.startswith("unrecognized arguments:"):
        return None
    for token in message.split(":", 1)[1].split():
        flag = token.split("=", 1)[0]
        if flag in FOREIGN_FLAGS:
            return f"{flag} is not a verydeep flag; here it is {FOREIGN_FLAGS[flag]}"
    return None


# --- help ---------------------------------------------------------------------------------------

class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help states its default: ``(default: X)`` is added where the text does
    not say it already (options without a default, and switches, are left as written)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or isinstance(action.default, bool) or action.default in ("", [])
        if not action.option_strings or "default" in text or unset or action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """:class:`DefaultsHelpFormatter` for ``parser`` and every sub-command's parser under it."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                show_defaults(sub)


# --- values ---------------------------------------------------------------------------------------

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# --- outputs --------------------------------------------------------------------------------------

def emit_json(obj, dest: str) -> Path | None:
    """``obj`` as JSON to ``dest`` (``-``: stdout). Returns the file written, None for stdout."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    if dest == "-":
        sys.stdout.write(text)
        return None
    path = Path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dataset_folder(args: argparse.Namespace) -> str:
    """``--data``, which the data commands need."""
    if args.data is None:
        raise UsageError("no dataset folder: give --data DIR")
    return args.data
