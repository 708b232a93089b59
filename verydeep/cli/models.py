"""``verydeep models``: list the configurations, or summarise one."""

from __future__ import annotations

import argparse

from verydeep.cli.vocabulary import add_crop_size, add_model


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the VGG configurations or summarise one")
    p.add_argument("name", nargs="?", help="registry name or paper letter (e.g. vgg16, D, vgg19_bn)")
    add_model(p, help="the same as NAME (the flag every command takes)")
    p.add_argument("--width", type=float, default=1.0, help="channel width multiplier")
    p.add_argument("--num-classes", type=int, default=1000)
    add_crop_size(p, default=224, what="the net's input side for the summary (its output shape and GMACs)")
    p.add_argument("--layers", action="store_true", help="print every layer")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from verydeep.models import list_models, resolve

    name = args.model or args.name
    names = [name] if name else list_models()
    resolved = [resolve(n) for n in names]  # an unknown name fails here, before the header and torch

    import torch

    from verydeep.models import count_parameters, create_model
    from verydeep.models.complexity import forward_macs

    print(f"{'name':<14}{'config':<8}{'bn':<5}{'params':>14}{'GMACs':>9}  output")
    for name, (config, bn) in zip(names, resolved):
        # Shapes are all a summary needs: build on the meta device (no memory, no init cost).
        with torch.device("meta"):
            model = create_model(name, num_classes=args.num_classes, width=args.width,
                                 head_size=max(1, args.crop_size // 32)).eval()
            with torch.no_grad():
                out = model(torch.empty(1, 3, args.crop_size, args.crop_size))
        macs = forward_macs(model, args.crop_size)
        print(f"{name:<14}{config:<8}{str(bn):<5}{count_parameters(model):>14,}{macs / 1e9:>9.2f}  {tuple(out.shape)}")
        if args.layers:
            print(model)
    return 0
