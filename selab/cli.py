"""The ``selab`` command: ``selab train`` and ``selab evaluate``, thin wrappers of :mod:`selab.train`.

Example
-------
::

    selab train --variant graph_lstm --dataset synthetic --epochs 5 --image-size 96 --out runs/quick
    selab evaluate runs/quick --dataset synthetic --split val --out runs/quick/eval.json
    selab check-data "$SELAB_PASCAL_ROOT"
    selab train --variant cnn --dataset pascal_person_part --data-root "$SELAB_PASCAL_ROOT" \\
        --backbone efficientnet_lite0 --image-size 320 --epochs 15 --out runs/cnn320

``selab check-data`` checks a dataset folder (:func:`selab.data.check_dataset`); ``SELAB_PASCAL_ROOT``
stands for your copy of PASCAL-Person-Part (docs/data.md says how to get one).
"""

from __future__ import annotations

import argparse
import json
import sys

from selab.backbones import BACKBONES
from selab.model import ORDERS, VARIANTS
from selab.train import DATASETS, OPTIMIZERS, SCHEDULES, TrainConfig


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selab", description="Train and evaluate Graph LSTM / SE-LSTM parsers.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model into a run folder")
    defaults = TrainConfig()
    train.add_argument("--variant", choices=VARIANTS, default=defaults.variant)
    train.add_argument("--dataset", choices=DATASETS, default=defaults.dataset)
    train.add_argument("--data-root", default=None, help="dataset folder (not needed for synthetic)")
    train.add_argument("--split", default=defaults.split)
    train.add_argument("--val-split", default=defaults.val_split, help="'none' skips validation")
    train.add_argument("--limit", type=int, default=None, help="use the first N images of the split")
    train.add_argument("--val-limit", type=int, default=None)
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--image-size", type=int, default=defaults.image_size)
    train.add_argument("--backbone", choices=BACKBONES, default=defaults.backbone)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    train.add_argument("--two-step-epochs", type=int, default=defaults.two_step_epochs,
                       help="paper's two-step training: epochs of the confidence layer alone first")
    train.add_argument("--freeze-backbone", type=_bool, default=None)
    train.add_argument("--cache-features", type=_bool, default=None)
    train.add_argument("--cache-dir", default=None)
    train.add_argument("--n-segments", type=int, default=None, help="SLIC superpixels per image")
    train.add_argument("--hidden-channels", type=int, default=None)
    train.add_argument("--num-layers", type=int, default=None)
    train.add_argument("--order", choices=ORDERS, default=None)
    train.add_argument("--merge-loss-weight", type=float, default=None)
    train.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                       help="any other ModelConfig field, e.g. --model-option 'evolution={\"mode\": \"greedy\"}'")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument("--device", default=defaults.device)
    train.add_argument("--num-workers", type=int, default=defaults.num_workers)
    train.add_argument("--out", required=True, help="run folder")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("evaluate", help="evaluate a run folder or checkpoint on a split")
    evaluate.add_argument("checkpoint", help="run folder (uses best.pt, else last.pt) or a .pt file")
    evaluate.add_argument("--dataset", choices=DATASETS, default="pascal_person_part")
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--image-size", type=int, default=None, help="default: the training size")
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--cache-dir", default=None)
    evaluate.add_argument("--out", default=None, help="metrics JSON file")
    evaluate.add_argument("--quiet", action="store_true")

    check = commands.add_parser("check-data", help="check a dataset folder and print its class histogram",
                                description="Read every listed image and mask once and report missing files, "
                                            "images that do not decode, masks of the wrong size and labels "
                                            "out of range; exit status 1 when anything is wrong.")
    check.add_argument("root", help="dataset folder")
    check.add_argument("--dataset", choices=("pascal_person_part", "folder"), default="pascal_person_part")
    check.add_argument("--split", action="append", default=None, dest="splits",
                       help="split to check (repeatable); default: every <split>_id.txt in the folder")
    check.add_argument("--num-classes", type=int, default=None,
                       help="labels must lie in 0..N-1 (default 7, PASCAL-Person-Part's)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _model_options(args) -> dict:
    options = {}
    for key in ("hidden_channels", "num_layers", "order", "merge_loss_weight"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-option: expected KEY=JSON, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from selab.train import run

            config = TrainConfig(
                variant=args.variant, backbone=args.backbone, dataset=args.dataset, data_root=args.data_root,
                split=args.split, val_split=None if str(args.val_split).lower() == "none" else args.val_split,
                limit=args.limit, val_limit=args.val_limit, image_size=args.image_size, epochs=args.epochs,
                batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, weight_decay=args.weight_decay,
                schedule=args.schedule, two_step_epochs=args.two_step_epochs, freeze_backbone=args.freeze_backbone,
                cache_features=args.cache_features, cache_dir=args.cache_dir, n_segments=args.n_segments,
                augment=not args.no_augment, model=_model_options(args), seed=args.seed, out_dir=args.out,
                resume=args.resume, device=args.device, num_workers=args.num_workers, progress=not args.quiet,
            )
            result = run(config)
            print(json.dumps({"final": result["final"], "paths": result["paths"]}, indent=2))
        elif args.command == "check-data":
            from selab.classes import NUM_CLASSES
            from selab.data import check_dataset

            report = check_dataset(args.root, dataset=args.dataset, splits=args.splits,
                                   num_classes=args.num_classes or NUM_CLASSES, progress=not args.quiet)
            print(report.format())
            return 0 if report.ok else 1
        else:
            from selab.train import evaluate

            result = evaluate(args.checkpoint, dataset=args.dataset, data_root=args.data_root, split=args.split,
                              image_size=args.image_size, limit=args.limit, out=args.out, device=args.device,
                              batch_size=args.batch_size, progress=not args.quiet, cache_dir=args.cache_dir)
            print(json.dumps(result, indent=2))
    except (ValueError, FileNotFoundError) as error:
        print(f"selab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
