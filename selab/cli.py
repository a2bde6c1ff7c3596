"""The ``selab`` command: ``train`` and ``evaluate`` (:mod:`selab.training.loop`), ``predict`` (:mod:`selab.workbench.predict`),
``export-model`` (:mod:`selab.workbench.pretrained`), ``check-data`` (:mod:`selab.data.datasets`), ``sweep`` (:mod:`selab.experiments.sweep`) and
``compare`` (:mod:`selab.experiments.compare`: the ladder and paired intervals of finished runs, as Markdown) and
``hierarchy`` (:mod:`selab.experiments.hierarchy`: a model's levels against hand-crafted hierarchies, as Markdown).

``selab train`` has one flag per :class:`~selab.training.config.TrainConfig` field, derived from the dataclass
(type, default) and its docstring (help), so the command line cannot drift from the config.

Exit status, of every command: 0 done; 2 bad input (a parameter, a data file, also ``check-data``
finding a problem, a run folder or a checkpoint; one line on stderr naming it, no traceback); 3 training
diverged (non-finite loss, gradient or weights; the last good checkpoint is kept); 1 an operating-system
error (e.g. a failing write); 130 interrupted (Ctrl-C, after saving a checkpoint). docs/reliability.md
lists what each command guarantees.

Examples
--------
::

    selab train --variant graph_lstm --dataset synthetic --epochs 5 --image-size 96 --out runs/quick
    selab evaluate runs/quick --dataset synthetic --split val --out runs/quick/eval.json
    selab check-data "$SELAB_PASCAL_ROOT"
    selab compare runs/ladder --pairs se_lstm_mh:se_lstm_none,graph_lstm:cnn
    selab hierarchy se_lstm_deep --data-root "$SELAB_PASCAL_ROOT" --split val --out runs/hierarchy.json
    selab train --variant cnn --dataset pascal_person_part --data-root "$SELAB_PASCAL_ROOT" \\
        --backbone efficientnet_lite0 --image-size 320 --epochs 15 --out runs/cnn320

``selab check-data`` checks a dataset folder (:func:`selab.data.datasets.check_dataset`); ``SELAB_PASCAL_ROOT``
stands for your copy of PASCAL-Person-Part (docs/data.md says how to get one).

In N processes (PyTorch DistributedDataParallel, :mod:`selab.training.distributed`; ``--batch-size`` is the global
batch)::

    torchrun --standalone --nproc_per_node 2 -m selab train --variant cnn --batch-size 8 --out runs/ddp
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path

from selab.experiments import compare, hierarchy, sweep

from selab.training import distributed

from selab.workbench import pretrained
from selab.model.backbones import BACKBONES
from selab.classes import NUM_CLASSES
from selab.data.datasets import DATASETS, check_dataset
from selab.method.orders import ORDERS
from selab.model.config import ModelConfig, VARIANTS
from selab.workbench.predict import predict_files
from selab.training.checkpoints import CheckpointError, load_checkpoint, load_model
from selab.training.config import CHOICES, TrainConfig, check_device
from selab.training.divergence import TrainingDiverged
from selab.training.evaluation import evaluate, evaluate_trained
from selab.training.loop import run
from selab.training.evaluation import TTA_MODES, TTA_SCALES

# ``selab train`` has one flag per TrainConfig field: its type and default from the dataclass, its help from
# the docstring's Parameters section, so that the command line cannot drift from the config. What the
# dataclass cannot say is here: the allowed values, and the flags that keep their historical names.
TRAIN_CHOICES = {"variant": VARIANTS, "backbone": BACKBONES, **CHOICES}
TRAIN_FLAGS = {"out_dir": ("--out", "--out-dir"), "progress": ("--quiet", "--no-progress")}
# ModelConfig fields with a flag of their own (TrainConfig.model); any other one via --model-option KEY=JSON.
MODEL_FLAGS = ("hidden_channels", "num_layers", "order", "merge_loss_weight", "finetune_after_stride")
MODEL_CHOICES = {"order": ORDERS}


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def parameter_docs(cls) -> dict[str, str]:
    """Each parameter's description in ``cls``'s numpydoc Parameters section, as plain one-line text.

    An entry naming several parameters (``a, b : text``) gives each of them its text.
    """
    doc = inspect.getdoc(cls) or ""
    section = re.search(r"^Parameters\n-+\n(.*?)(?:^\S[^\n]*\n-+\n|\Z)", doc, flags=re.M | re.S)
    docs, names = {}, []
    for line in (section.group(1) if section else "").splitlines():
        if line and not line.startswith(" "):  # "name : type" or "a, b : description"
            head, _, rest = line.partition(" : ")
            names = [name.strip() for name in head.split(",")]
            inline = rest if len(names) > 1 else ""
            for name in names:
                docs[name] = inline
        elif line.strip():
            for name in names:
                docs[name] = f"{docs[name]} {line.strip()}".strip()
    return {name: _plain(text) for name, text in docs.items()}


def _plain(text: str) -> str:
    """RST markup out (``x`` and :role:`~a.b.c`), ``%`` escaped for argparse."""
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1] if "~" in m.group(0) else m.group(1),
                  text)
    return text.replace("``", "").replace("%", "%%")


def _field_type(hint) -> tuple[type, bool]:
    """(the value type, whether ``None`` is allowed) of a dataclass field's annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def _optional(kind: type):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_dataclass_arguments(parser, cls, names, choices: dict, flags: dict, use_defaults: bool = True) -> None:
    """One flag per field of ``cls`` in ``names``: ``--field-name``, typed and documented from the dataclass.

    A bool field that defaults to False is a switch (``--resume``), one that defaults to True is turned
    off by ``--no-field`` (``--no-augment``), an optional bool takes ``true``/``false``; an optional
    value takes ``none``. ``use_defaults=False`` leaves a flag that is not given out of the parsed
    arguments (the dataclass default applies, and the help says it).
    """
    hints, docs = typing.get_type_hints(cls), parameter_docs(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        kind, optional = _field_type(hints[name])
        default = fields[name].default if use_defaults else argparse.SUPPRESS
        flag = f"--{name.replace('_', '-')}"
        options = {"dest": name, "help": docs.get(name) or None}
        if not use_defaults:
            options["help"] = f"{options['help'] or ''} ({cls.__name__} default: {fields[name].default})".lstrip()
        if kind is bool and not optional and use_defaults:
            switch = flags.get(name, (flag,) if not default else (f"--no-{flag[2:]}",))
            if default and options["help"]:
                options["help"] = f"turn off: {options['help']}"
            parser.add_argument(*switch, action="store_false" if default else "store_true", default=default,
                                **options)
            continue
        parse = _bool if kind is bool else kind
        parser.add_argument(*flags.get(name, (flag,)), type=_optional(parse) if optional else parse,
                            choices=choices.get(name), default=default,
                            metavar="{true,false}" if kind is bool else None, **options)


def _scales(text: str) -> tuple[float, ...]:
    """``--tta-scales 0.75,1,1.25`` -> (0.75, 1.0, 1.25)."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.75,1,1.25, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selab", description="Train and evaluate Graph LSTM / SE-LSTM parsers.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sweep", help="run a grid of papermill training runs (selab sweep -h)", add_help=False)

    train = commands.add_parser("train", help="train a model into a run folder",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]
    add_dataclass_arguments(train, TrainConfig, fields, TRAIN_CHOICES, TRAIN_FLAGS)
    out = train._option_string_actions["--out"]
    out.required, out.default = True, argparse.SUPPRESS  # no default run folder on the command line
    model = train.add_argument_group("model options (TrainConfig.model, ModelConfig fields)")
    add_dataclass_arguments(model, ModelConfig, MODEL_FLAGS, MODEL_CHOICES, {}, use_defaults=False)
    model.add_argument("--model-option", action="append", default=[], metavar="KEY=JSON",
                       help="any other ModelConfig field, e.g. --model-option 'evolution={\"mode\": \"greedy\"}'")

    evaluate = commands.add_parser("evaluate", help="evaluate a run folder, checkpoint or named model on a split")
    evaluate.add_argument("checkpoint", nargs="?", default=None,
                          help="run folder (uses best.pt, else last.pt) or a .pt file")
    evaluate.add_argument("--model", default=None, metavar="NAME",
                          help="a named model instead (selab.workbench.pretrained.available(), e.g. se_lstm); "
                               "needs --data-root for real data")
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
                          help="also save every image's confusion matrix (for selab.experiments.compare)")
    evaluate.add_argument("--tta", choices=TTA_MODES, default=None,
                          help="test-time augmentation, logits averaged (reported apart): 'flip' also the mirror "
                               "image, 'scale' also every --tta-scales size, 'flip,scale' both")
    evaluate.add_argument("--tta-scales", type=_scales, default=TTA_SCALES, metavar="S,S,...",
                          help="scales of --tta scale, including 1 (default: %(default)s)")
    evaluate.add_argument("--quiet", action="store_true")

    predict = commands.add_parser("predict", help="parse photos with a shipped model or a run folder")
    predict.add_argument("images", nargs="+", help="image files or folders of images")
    predict.add_argument("--model", required=True, help="a model name (selab.workbench.pretrained.available()), or "
                         "the path of a run folder or a .pt file (written as a path: runs/x, ./x, x.pt)")
    predict.add_argument("--out", required=True, help="folder for <stem>_labels.png and <stem>_overlay.png")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace earlier outputs in --out (an input photo is never replaced)")
    predict.add_argument("--hierarchy", action="store_true",
                         help="also each level's partition (<stem>_level<k>.png) and <stem>_hierarchy.json")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--quiet", action="store_true")

    export = commands.add_parser("export-model", help="write a run's weights (without the backbone) as a named model")
    export.add_argument("run", help="run folder (its last.pt, the final model)")
    export.add_argument("name", help="model name (file NAME.pt in the user's model folder; not a shipped model's name)")
    export.add_argument("--reproduce", default="", metavar="COMMAND", help="the command that reproduces the run (recorded)")
    export.add_argument("--folder", default=None,
                        help="write here instead of the user's model folder ($SELAB_HOME/models, else "
                             "$XDG_DATA_HOME/selab/models, else ~/.local/share/selab/models)")
    export.add_argument("--flip-metrics", default=None, metavar="JSON",
                        help="also record the scores with flip test-time augmentation: the --out file of "
                             "`selab evaluate RUN --tta flip` on the same run")
    export.add_argument("--overwrite", action="store_true", help="replace an existing NAME.pt in the folder")

    table = commands.add_parser("compare", help="the ladder (mean ± sd), hierarchy and paired intervals of finished runs",
                                description="Markdown tables of finished runs (run folders or sweep folders): one row "
                                            "per label with mean ± sd over its runs, the test-time hierarchy, and a "
                                            "paired per-image bootstrap interval for each --pairs A:B.")
    table.add_argument("paths", nargs="+", help="run folders or sweep folders")
    table.add_argument("--pairs", default="", metavar="A:B,...",
                       help="rows to compare image by image, e.g. se_lstm_mh:se_lstm_none,graph_lstm:cnn")
    table.add_argument("--bootstrap", type=int, default=2000, help="resamples of the validation images")
    table.add_argument("--level", type=float, default=0.95, help="coverage of the intervals")
    table.add_argument("--no-per-class", action="store_true", help="leave the per-class IoU columns out")

    levels = commands.add_parser("hierarchy", help="a model's test-time hierarchy against hand-crafted ones, as Markdown",
                                 description="Run a model over a split with its deterministic test-time structure and "
                                             "score every level and the baselines built from the same superpixels "
                                             "(mean colour, backbone features, predicted classes, ground-truth "
                                             "oracle) at the same node counts and at --counts: nodes per image, "
                                             "achievable mIoU, ASA, boundary recall, undersegmentation error.")
    levels.add_argument("model", help="run folder, checkpoint file or shipped model name (e.g. se_lstm)")
    levels.add_argument("--dataset", choices=DATASETS, default=None, help="default: the model's own dataset")
    levels.add_argument("--data-root", default=None)
    levels.add_argument("--split", default="val")
    levels.add_argument("--limit", type=int, default=None, help="the first N images of the split")
    levels.add_argument("--counts", type=_counts, default=hierarchy.DEFAULT_COUNTS, metavar="C,C,...",
                        help="fixed node counts per image of the baselines (default: 200,100,50,25,12)")
    levels.add_argument("--image-size", type=int, default=None, help="default: the training size")
    levels.add_argument("--tolerance", type=int, default=2, help="of the boundary recall, in pixels")
    levels.add_argument("--batch-size", type=int, default=4)
    levels.add_argument("--device", default="cpu")
    levels.add_argument("--cache-dir", default=None, help="superpixel cache (default: a temporary folder)")
    levels.add_argument("--out", default=None, metavar="FILE.json", help="also write the result as JSON")
    levels.add_argument("--quiet", action="store_true", help="no progress bar")

    check = commands.add_parser("check-data", help="check a dataset folder and print its class histogram",
                                description="Read every listed image and mask once and report missing files, "
                                            "images that do not decode, masks of the wrong size and labels "
                                            "out of range; exit status 2 when anything is wrong (0 when "
                                            "nothing is).")
    check.add_argument("root", help="dataset folder")
    check.add_argument("--dataset", choices=("pascal_person_part", "folder"), default="pascal_person_part")
    check.add_argument("--split", action="append", default=None, dest="splits",
                       help="split to check (repeatable); default: every <split>_id.txt in the folder")
    check.add_argument("--num-classes", type=int, default=None,
                       help="labels must lie in 0..N-1 (default 7, PASCAL-Person-Part's)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _counts(text: str) -> tuple[int, ...]:
    try:
        return hierarchy.parse_counts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _hierarchy(args) -> str:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive int, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit: expected a positive int, got {args.limit}")
    check_device(args.device, "--device")
    model, train_config, _ = resolve_model(args.model, args.device, what="hierarchy MODEL")
    result = hierarchy.measure_hierarchy(model, train_config, dataset=args.dataset, data_root=args.data_root,
                                         split=args.split, limit=args.limit, counts=args.counts,
                                         image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                                         cache_dir=args.cache_dir, tolerance=args.tolerance,
                                         progress=not args.quiet, out=args.out, source=args.model)
    return hierarchy.hierarchy_markdown(result)


def _evaluate(args) -> dict:
    if (args.checkpoint is None) == (args.model is None):
        raise ValueError("evaluate: give a run folder or checkpoint, or --model NAME (one of them)")
    options = dict(dataset=args.dataset, data_root=args.data_root, split=args.split, image_size=args.image_size,
                   limit=args.limit, out=args.out, device=args.device, batch_size=args.batch_size,
                   progress=not args.quiet, cache_dir=args.cache_dir, per_image_out=args.per_image, tta=args.tta,
                   tta_scales=args.tta_scales)
    model_options = _key_json_options(args.model_option)
    if args.checkpoint is not None:
        return evaluate(args.checkpoint, model_options=model_options, **options)
    check_device(args.device, "--device")
    model, train_config, source = resolve_model(args.model, "cpu", model_options)
    return evaluate_trained(model, train_config, source=source, **options)


def predict_model(text: str, device="cpu"):
    """``(model, image_size)`` of ``selab predict --model`` (see :func:`resolve_model`)."""
    model, train_config, _ = resolve_model(text, device)
    return model, train_config["image_size"]


def resolve_model(text: str, device="cpu", model_options: dict | None = None, what: str = "--model") -> tuple:
    """``(model, train_config, source)`` of a ``--model`` argument: a name (:mod:`selab.workbench.pretrained`),
    or a path written as one (a run folder, a checkpoint or an exported ``.pt`` file), checked as such.
    ``source`` says which (``{"model": name}`` or ``{"checkpoint": path, "checkpoint_file": file}``); errors
    name the argument as ``what``."""
    if not pretrained.looks_like_path(text):
        if text not in pretrained.available() and Path(text).exists():
            raise ValueError(f"{what}: no model named {text!r} (available: {pretrained.available()}); "
                             f"for the folder or file {text} write "
                             f"{what + ' ' if what.startswith('--') else ''}./{text}")
        if model_options:
            raise ValueError("--model-option: applies to run folders and checkpoints, not to a named model")
        model, record = pretrained.load(text, device)
        return model, record["train_config"], {"model": text}
    path = Path(text).expanduser()
    if path.is_dir():
        model, checkpoint = load_model(path, device, model_options=model_options)
    elif path.is_file():
        if path.suffix != ".pt":
            raise ValueError(f"{what}: {path} is neither a run folder nor a .pt file")
        try:
            model, checkpoint = load_model(path, device, model_options=model_options)
        except CheckpointError as error:
            if "is not a selab checkpoint" not in str(error):
                raise
            model, checkpoint = pretrained.load_file(path, device)  # an exported model file
            return model, checkpoint["train_config"], {"model_file": str(path)}
    else:
        raise ValueError(f"{what}: {path} does not exist (expected a run folder or a .pt file)")
    return model, checkpoint["train_config"], {"checkpoint": str(path), "checkpoint_file": checkpoint["path"]}


def _predict(args) -> dict:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected a positive int, got {args.batch_size}")
    check_device(args.device, "--device")
    model, image_size = predict_model(args.model, args.device)
    written = predict_files(model, args.images, args.out, image_size, batch_size=args.batch_size,
                            hierarchy=args.hierarchy, device=args.device, progress=not args.quiet,
                            overwrite=args.overwrite)
    return {"images": len(written), "out": args.out, "files": written}


def _export(args) -> dict:
    folder = Path(args.run)
    pretrained.check_name(args.name, "export-model")
    if args.folder is not None and Path(args.folder).exists() and not Path(args.folder).is_dir():
        raise ValueError(f"export-model: --folder {args.folder} is a file; expected a folder")
    recorded = _read_json(folder / "metrics.json", "export-model") if (folder / "metrics.json").is_file() else {}
    metrics = recorded.get("final")
    if not metrics:
        raise ValueError(f"export-model: {folder} has no final validation metrics (metrics.json); finish the run first")
    epochs = recorded.get("epochs") or []
    metrics = dict(metrics, training_minutes=sum(e.get("seconds", 0.0) for e in epochs) / 60)
    if args.flip_metrics:
        flipped = _read_json(Path(args.flip_metrics), "export-model: --flip-metrics")
        if flipped.get("test_time_augmentation") != "flip" or "mean_iou" not in flipped:
            raise ValueError(f"export-model: --flip-metrics {args.flip_metrics} is not a `selab evaluate --tta flip "
                             f"--out FILE` result")
        if Path(flipped.get("checkpoint_file", "")).resolve().parent.parent != folder.resolve():
            raise ValueError(f"export-model: --flip-metrics {args.flip_metrics} scores another run "
                             f"({flipped.get('checkpoint_file')}), not {folder}")
        metrics.update(flip_mean_iou=flipped["mean_iou"], flip_pixel_accuracy=flipped["pixel_accuracy"])
    checkpoint = load_checkpoint(folder / "checkpoints" / "last.pt")
    cell = folder / "sweep_cell.json"
    commit = _read_json(cell, "export-model").get("commit") if cell.is_file() else None
    path = pretrained.export(checkpoint, args.name, metrics, commit, args.reproduce, args.folder,
                             overwrite=args.overwrite)
    return {"written": str(path), "mean_iou": metrics["mean_iou"], "commit": commit}


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what}: {path} is not valid JSON (truncated?): {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} does not hold a JSON object")
    return data


def _compare(args) -> str:
    if args.bootstrap < 1:
        raise ValueError(f"--bootstrap: expected a positive number of resamples, got {args.bootstrap}")
    if not 0 < args.level < 1:
        raise ValueError(f"--level: expected a coverage between 0 and 1 (e.g. 0.95), got {args.level}")
    return compare.report(args.paths, compare.parse_pairs(args.pairs), per_class=not args.no_per_class,
                          num_samples=args.bootstrap, level=args.level)


def _check_data(args) -> int:
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes: expected a positive number of classes, got {args.num_classes}")
    report = check_dataset(args.root, dataset=args.dataset, splits=args.splits,
                           num_classes=NUM_CLASSES if args.num_classes is None else args.num_classes,
                           progress=not args.quiet)
    print(report.format())
    return 0 if report.ok else 2


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
    """TrainConfig.model from the model flags (those given) and every --model-option."""
    options = {key: getattr(args, key) for key in MODEL_FLAGS if getattr(args, key, None) is not None}
    return {**options, **_key_json_options(args.model_option)}


def train_config(args) -> TrainConfig:
    """The TrainConfig of parsed ``selab train`` arguments."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name != "model"}
    return TrainConfig(**values, model=_model_options(args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # its own parser (selab.experiments.sweep), so that `selab sweep -h` shows its options
        return sweep.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            result = run(train_config(args))
            if distributed.is_main():  # under torchrun, one report (rank 0's)
                print(json.dumps({"final": result["final"], "paths": result["paths"]}, indent=2))
        elif args.command == "predict":
            print(json.dumps(_predict(args), indent=2))
        elif args.command == "export-model":
            print(json.dumps(_export(args), indent=2))
        elif args.command == "compare":
            print(_compare(args), end="")
        elif args.command == "hierarchy":
            print(_hierarchy(args), end="")
        elif args.command == "check-data":
            return _check_data(args)
        else:
            print(json.dumps(_evaluate(args), indent=2))
    except (TrainingDiverged, ValueError, OSError) as error:  # exit status: see the module docstring
        print(f"selab {args.command}: error: {error}", file=sys.stderr)
        return 3 if isinstance(error, TrainingDiverged) else 2 if isinstance(error, (ValueError, FileNotFoundError,
                                                                                       NotADirectoryError)) else 1
    except KeyboardInterrupt:
        if args.command != "train":  # training says where it saved its checkpoint itself
            print(f"selab {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
