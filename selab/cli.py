"""The ``selab`` command: ``selab train``, ``selab evaluate`` (thin wrappers of :mod:`selab.train`), ``selab sweep`` (:mod:`selab.sweep`).

Exit status: 0 done; 2 bad input (a parameter, a data file, a run folder or a checkpoint; one line on
stderr naming it, no traceback); 3 training diverged (non-finite loss, gradient or weights; the last
good checkpoint is kept); 1 an operating-system error (e.g. a failing write); 130 interrupted (Ctrl-C,
after saving a checkpoint).

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

In N processes (PyTorch DistributedDataParallel, :mod:`selab.distributed`; ``--batch-size`` is the global
batch)::

    torchrun --standalone --nproc_per_node 2 -m selab train --variant cnn --batch-size 8 --out runs/ddp
"""

from __future__ import annotations

import argparse
import json
import sys

from selab.backbones import BACKBONES
from selab.model import ORDERS, VARIANTS
from selab.train import DATASETS, OPTIMIZERS, SCHEDULES, TrainConfig, TrainingDiverged


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
    commands.add_parser("sweep", help="run a grid of papermill training runs (selab sweep -h)", add_help=False)

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
    train.add_argument("--overwrite", action="store_true",
                       help="replace the previous run in --out (only once the new run has written its first checkpoint)")
    train.add_argument("--ignore-index", type=int, default=None,
                       help="mask value left out of the loss and the metrics (e.g. 255 for PASCAL VOC masks)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")

    evaluate = commands.add_parser("evaluate", help="evaluate a run folder or checkpoint on a split")
    evaluate.add_argument("checkpoint", help="run folder (uses best.pt, else last.pt) or a .pt file")
    evaluate.add_argument("--dataset", choices=DATASETS, default=None, help="default: the run's own dataset")
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--split", default="val")
    evaluate.add_argument("--image-size", type=int, default=None, help="default: the training size")
    evaluate.add_argument("--limit", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=8)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--cache-dir", default=None)
    evaluate.add_argument("--out", default=None, help="metrics JSON file")
    evaluate.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                          help="test the model another way, e.g. 'evolution={\"eval_mode\": \"mh\"}' or 'eval_samples=4'")
    evaluate.add_argument("--per-image", default=None, metavar="NPZ",
                          help="also save every image's confusion matrix (for selab.compare)")
    evaluate.add_argument("--quiet", action="store_true")

    predict = commands.add_parser("predict", help="parse photos with a shipped model or a run folder")
    predict.add_argument("images", nargs="+", help="image files or folders of images")
    predict.add_argument("--model", required=True, help="a shipped model name (selab.pretrained.available()) "
                         "or a run folder / checkpoint file")
    predict.add_argument("--out", required=True, help="folder for <stem>_labels.png and <stem>_overlay.png")
    predict.add_argument("--hierarchy", action="store_true",
                         help="also each level's partition (<stem>_level<k>.png) and <stem>_hierarchy.json")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--quiet", action="store_true")

    export = commands.add_parser("export-model", help="write a run's weights (without the backbone) as a shipped model")
    export.add_argument("run", help="run folder (its last.pt, the final model)")
    export.add_argument("name", help="model name (file selab/weights/NAME.pt)")
    export.add_argument("--reproduce", default="", metavar="COMMAND", help="the command that reproduces the run (recorded)")
    export.add_argument("--folder", default=None, help="write here instead of selab/weights/")

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


def _predict(args) -> dict:
    from pathlib import Path

    from selab import pretrained
    from selab.predict import predict_files
    from selab.train import load_model

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive int, got {args.batch_size}")
    if Path(args.model).exists():
        model, checkpoint = load_model(args.model, args.device)
        image_size = checkpoint["train_config"]["image_size"]
    else:
        model, record = pretrained.load(args.model, args.device)
        image_size = record["train_config"]["image_size"]
    written = predict_files(model, args.images, args.out, image_size, batch_size=args.batch_size,
                            hierarchy=args.hierarchy, device=args.device, progress=not args.quiet)
    return {"images": len(written), "out": args.out, "files": written}


def _export(args) -> dict:
    from pathlib import Path

    from selab import pretrained
    from selab.train import load_checkpoint

    run = Path(args.run)
    metrics = json.loads((run / "metrics.json").read_text()).get("final") if (run / "metrics.json").is_file() else None
    if not metrics:
        raise ValueError(f"export-model: {run} has no final validation metrics (metrics.json); finish the run first")
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    cell = run / "sweep_cell.json"
    commit = json.loads(cell.read_text()).get("commit") if cell.is_file() else None
    path = pretrained.export(checkpoint, args.name, metrics, commit, args.reproduce, args.folder)
    return {"written": str(path), "mean_iou": metrics["mean_iou"], "commit": commit}


def _key_json_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--model-option: expected KEY=JSON, got {item!r}")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError as error:
            if value.strip()[:1] in ("{", "[", '"') or value.strip() in ("true", "false", "null"):
                raise ValueError(f"--model-option {key.strip()}: invalid JSON {value!r} ({error})") from None
            options[key.strip()] = value  # a bare word, e.g. order=snake
    return options


def _model_options(args) -> dict:
    options = {}
    for key in ("hidden_channels", "num_layers", "order", "merge_loss_weight"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    options.update(_key_json_options(args.model_option))
    return options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # its own parser (selab.sweep), so that `selab sweep -h` shows its options
        from selab import sweep

        return sweep.main(argv[1:])
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
                resume=args.resume, overwrite=args.overwrite, ignore_index=args.ignore_index, device=args.device,
                num_workers=args.num_workers, progress=not args.quiet,
            )
            result = run(config)
            from selab import distributed

            if distributed.is_main():  # under torchrun, one report (rank 0's)
                print(json.dumps({"final": result["final"], "paths": result["paths"]}, indent=2))
        elif args.command == "predict":
            print(json.dumps(_predict(args), indent=2))
        elif args.command == "export-model":
            print(json.dumps(_export(args), indent=2))
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
                              batch_size=args.batch_size, progress=not args.quiet, cache_dir=args.cache_dir,
                              per_image_out=args.per_image, model_options=_key_json_options(args.model_option))
            print(json.dumps(result, indent=2))
    except TrainingDiverged as error:
        print(f"selab {args.command}: error: {error}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        print(f"selab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"selab {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
