"""Command line: python -m engine {train, cv, lr-find, summary, predict, export, compare, inspect, validate, bench} ...

    python -m engine train lenet                 # bundled MNIST subset, best working device
    python -m engine train lenet --optimizer sgd --weight-decay 5e-4 --l1 1e-5 --augment
    python -m engine train resnet8 --schedule onecycle --lr 0.1 --optimizer sgd
    python -m engine train alexnet-small --data folder:/data/imgs --width 0.5 --convs 1,2,5
    python -m engine train my_models.py:FlatNet --epochs 5 --json out.json
    python -m engine cv lenet --folds 5 --plots cv/     # k-fold cross-validation, box plot
    python -m engine lr-find lenet --optimizer sgd      # learning-rate range test, plot
    python -m engine train lenet --save lenet.npz         # a model file: predict, export, --weights
    python -m engine train resnet8 --weights base.pt --no-strict --freeze layer2   # fine-tune
    python -m engine predict lenet.npz digit.png --top 3
    python -m engine export lenet.npz lenet.onnx
    python -m engine summary resnet18
    python -m engine compare sgd.json adam.json --out curves.png   # runs of train --json on one figure
    python -m engine inspect lenet.npz digit.png --out inside/   # filters, feature maps, prediction
    python -m engine inspect lenet digit.png --checkpoint run.ckpt  # the same from a training checkpoint
    python -m engine validate                    # every kernel against the float64 spec
    python -m engine bench --quick               # benchmarks -> benchmarks/results/
    mpiexec -n 2 python -m engine train lenet    # data parallel on 2 processes (engine.distributed)

Training holds out a validation split of the training data (--val-split, stratified):
the curves, early stopping and its weight restore use it; the test split is evaluated
once, at the end, and reported apart.
"""
from __future__ import annotations

import os
import sys
import time

from engine import cli, distributed
from engine.cli import integer, integers, real
from engine.files import check_output_dir, check_output_file, write_json

MODEL_OPTIONS = ("width", "convs", "kernels", "strides", "hidden", "dropout", "batch_norm")


def _common(p: cli.ArgumentParser) -> None:
    """The options every training command shares: model, data, optimizer, schedule, device."""
    p.add_argument("model", help="a built-in model (see `summary`) or FILE.py:NAME")
    p.add_argument("--data", default="bundled", help="bundled (default), idx:PATH, folder:PATH or synthetic")
    p.add_argument("--image-size", type=integer(1), default=None,
                   help="image side for folder/synthetic data (default: the model's own input size)")
    p.add_argument("--epochs", type=integer(1), default=20)
    p.add_argument("--batch-size", type=integer(1), default=32,
                   help="default 32: on the 3,600 bundled training images, twice the steps of 64 and ~0.5%% better")
    p.add_argument("--optimizer", default="adamw", choices=["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"])
    p.add_argument("--lr", type=real(0, low_open=True), default=None,
                   help="learning rate (default: the optimizer's, e.g. sgd 0.01)")
    p.add_argument("--momentum", type=real(0, 1, high_open=True), default=None, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", help="SGD with Nesterov momentum")
    p.add_argument("--weight-decay", type=real(0), default=None, help="L2 weight decay (default: adamw 0.01, else 0)")
    p.add_argument("--decoupled", action="store_true", help="decoupled weight decay (AdamW's rule) for any optimizer")
    p.add_argument("--no-decay-bias", action="store_true",
                   help="no weight decay on biases and batch-norm parameters (the weights only)")
    p.add_argument("--l1", type=real(0), default=0.0, help="L1 penalty on the weights (default 0)")
    p.add_argument("--schedule", default="cosine", choices=["constant", "step", "cosine", "onecycle"])
    p.add_argument("--augment", action="store_true",
                   help="random shifts (and mirroring, except for digits) of the training images")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    p.add_argument("--synthetic-size", type=integer(2), default=2048, help="images for --data synthetic")
    p.add_argument("--on-nonfinite", default="raise", choices=["raise", "stop", "ignore"],
                   help="a NaN/Inf loss or weights: raise (stop, exit 3; default), stop (keep what was "
                        "trained, write the outputs, exit 3) or ignore (exit 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    m = p.add_argument_group("model options (for the models that take them, e.g. alexnet, lenet)")
    _model_arguments(m)


def _model_arguments(group) -> None:
    group.add_argument("--width", type=real(0, low_open=True), help="feature maps per conv, times this")
    group.add_argument("--convs", type=integers(1), help="which convs to keep, e.g. 1,2,5")
    group.add_argument("--kernels", type=integers(1), help="kernel size of each conv, e.g. 11,5,3,3,3")
    group.add_argument("--strides", type=integers(1), help="stride of each conv, e.g. 4,1,1,1,1")
    group.add_argument("--hidden", type=integers(1), help="the classifier's hidden sizes, e.g. 4096,4096")
    group.add_argument("--dropout", type=real(0, 1, high_open=True), help="dropout probability (alexnet*, lenet)")
    group.add_argument("--batch-norm", action="store_true", default=None, help="batch norm after each conv (lenet)")


def _model_options(args) -> dict:
    return {k: getattr(args, k) for k in MODEL_OPTIONS if getattr(args, k, None) is not None}


def _input_shape(args) -> tuple | None:
    """(C, H, W) the model is built for: its own, or --image-size with its channels."""
    from engine.models import find_model
    _, shape = find_model(args.model)
    if args.image_size is not None:
        channels = shape[0] if shape else 3
        return (channels, args.image_size, args.image_size)
    return shape


def _load_data(args):
    """bundled | idx:PATH | folder:PATH | synthetic -> Dataset (train, test, classes, mean, std),
    both splits non-empty."""
    from engine import data
    kind, _, path = args.data.partition(":")
    if kind in ("idx", "folder") and not path:
        raise ValueError(f"--data {kind}: needs a path after the colon, e.g. --data {kind}:/data/mnist")
    if kind in ("idx", "folder") and not os.path.isdir(path):
        raise FileNotFoundError(f"--data {args.data}: no directory {path}")
    if kind == "bundled":
        ds = data.load_bundled_mnist(seed=args.seed)
    elif kind == "idx":
        ds = data.load_mnist_idx(path)
    elif kind in ("folder", "synthetic"):
        shape = _input_shape(args)
        if shape is None:
            raise ValueError(f"--data {kind} needs --image-size: {args.model} does not say its input size")
        if kind == "folder":
            c, h, _ = shape
            ds = data.load_image_folder(path, size=max(h + 1, int(h * 256 / 224)), crop=h, channels=c)
        else:
            train = data.synthetic(args.synthetic_size, shape, 10, seed=args.seed)
            test = data.synthetic(max(args.synthetic_size // 4, 1), shape, 10, seed=args.seed + 1)
            ds = data.Dataset(train, test, tuple(str(i) for i in range(10)), (0.0,) * shape[0], (1.0,) * shape[0])
    else:
        raise ValueError(f"--data must be bundled, idx:PATH, folder:PATH or synthetic, got {args.data!r}")
    for name, split in (("training", ds.train), ("test", ds.test)):
        if len(split.y) == 0:
            raise ValueError(f"--data {args.data}: the {name} split holds no images")
    return ds


def _optimizer(args):
    from engine.optim import DEFAULT_LR, make_optimizer
    kwargs = dict(l1=args.l1, decay_all=not args.no_decay_bias)
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    if args.decoupled:
        kwargs["decoupled"] = True
    if args.optimizer == "sgd":
        kwargs.update(momentum=0.9 if args.momentum is None else args.momentum, nesterov=args.nesterov)
    elif args.momentum is not None or args.nesterov:
        raise ValueError(f"--momentum and --nesterov are SGD's; --optimizer is {args.optimizer}")
    return make_optimizer(args.optimizer, DEFAULT_LR[args.optimizer] if args.lr is None else args.lr, **kwargs)


def _run_config(args, optimizer) -> dict:
    """What defines a training run, stored in its checkpoint: --resume refuses another."""
    settings = {k: v for k, v in vars(optimizer).items() if k not in ("lr", "state_names")}
    data = args.data + (f" ({args.synthetic_size} images)" if args.data == "synthetic" else "")
    return {"model": args.model, "model_options": _model_options(args), "image_size": args.image_size,
            "data": data, "val_split": args.val_split, "augment": args.augment, "seed": args.seed,
            "batch_size": args.batch_size, "schedule": f"{args.schedule} over {args.epochs} epochs",
            "optimizer": {"kind": args.optimizer, **settings}, "lr": optimizer.lr}


def _executor(args, ds, seed: int, comm=None):
    """A fresh model (initialised from seed) and its executor for the data set (a rank of a
    data-parallel run with comm, engine.distributed); a model that does not fit the data's
    images is refused naming both."""
    from engine import nn
    from engine.executor import Executor
    from engine.models import build_model, find_model
    nn.manual_seed(seed)
    shape = ds.train.x.shape[1:]
    model = build_model(args.model, ds.num_classes, shape[0], **_model_options(args))
    try:
        return Executor(model, shape, optimizer=_optimizer(args), device=args.device, seed=seed, comm=comm)
    except ValueError as e:
        _, own = find_model(args.model)
        made_for = f" (it is made for {own[0]}x{own[1]}x{own[2]})" if own else ""
        raise ValueError(f"model {args.model}{made_for} does not fit the data's {'x'.join(map(str, shape))} "
                         f"images: {e}") from e


def _augment(args, ds):
    """Shifts of up to 1/14 of the side, padded with black; mirroring only for natural images."""
    if not args.augment:
        return None
    import numpy as np
    from engine.data import Augment
    fill = [-m / s for m, s in zip(ds.mean, ds.std)]  # a black pixel, normalised
    digits = not args.data.startswith("folder:")
    return Augment(shift=max(1, ds.train.x.shape[2] // 14), flip=not digits, fill=np.array(fill), seed=args.seed)


def _split_validation(args, ds):
    """(train x, y), (validation x, y) or None: the stratified validation share of the training data."""
    from engine.data import stratified_split
    x, y = ds.train
    if args.val_split == 0:
        return (x, y), None
    train_idx, val_idx = stratified_split(y, args.val_split, seed=args.seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ValueError(f"--val-split {args.val_split} of {len(y)} training images leaves "
                         f"{len(train_idx)} to train on and {len(val_idx)} to validate; change it, or 0 for none")
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def _check_outputs(args) -> None:
    """Every output path of the command writable and of the right kind, before any work."""
    for option in ("json", "checkpoint", "out", "save"):
        if getattr(args, option, None) is not None:
            check_output_file(f"--{option}", getattr(args, option))
    if getattr(args, "plots", None) is not None:
        check_output_dir("--plots", args.plots)


def _plots_dir(args) -> str:
    os.makedirs(args.plots, exist_ok=True)
    return args.plots


def _read_weights(args):
    """The arrays of --weights, read (and so checked) before any data loads; None without it."""
    if args.weights is None:
        return None
    from engine.weights import read_weights
    return read_weights(args.weights)


def _weights_and_freezing(args, ex, weights) -> None:
    """--weights into the new model (strict unless --no-strict), then --freeze; says what it did."""
    from engine.graph import Model, freeze
    from engine.weights import load_weights
    if weights is not None:
        print(load_weights(ex, weights, strict=not args.no_strict, name=args.weights))
    if args.freeze is not None:
        if not isinstance(ex.model, Model):
            raise ValueError(f"--freeze: {args.model} is a single layer; there is nothing to freeze up to")
        frozen = freeze(ex.model, args.freeze)
        if ex.num_trainable_params() == 0:
            raise ValueError(f"--freeze {args.freeze}: that freezes every layer with parameters, and nothing "
                             f"would train; freeze up to an earlier layer (`summary {args.model}` lists them)")
        print(f"frozen: {frozen[0]} to {frozen[-1]} ({len(frozen)} layers, "
              f"{ex.num_params() - ex.num_trainable_params():,} parameters)")


def _preprocess(args, ds) -> dict:
    """How predict must turn an image file into an input: as _load_data read the images."""
    h = ds.train.x.shape[2]
    if args.data.startswith("folder:"):
        return {"resize": max(h + 1, int(h * 256 / 224)), "crop": h}  # load_image_folder's size and crop
    return {"resize": h, "crop": h}


def _save_model(args, ex, ds) -> None:
    from engine.modelfile import save_model
    save_model(args.save, ex, class_names=ds.class_names, mean=ds.mean, std=ds.std, preprocess=_preprocess(args, ds))
    print(f"model written to {args.save} (python -m engine predict {args.save} IMAGE ...)")


def cmd_train(args) -> int:
    from engine.data import DataLoader
    from engine.schedules import make_schedule
    from engine.training import EarlyStopping, NonFiniteLoss, evaluate, fit, resume_state

    comm = distributed.world()  # under mpiexec: this rank of a data-parallel run; else None
    # everything that can be checked without the data, before it loads
    if comm is None or comm.rank == 0:
        _check_outputs(args)  # rank 0 writes every output
    args.resume = args.resume or args.resume_anyway
    if args.resume and not args.checkpoint:
        raise ValueError("--resume needs --checkpoint PATH: the checkpoint to continue from")
    if args.patience and args.val_split == 0:
        raise ValueError("--patience needs a validation split (--val-split > 0)")
    distributed.check_batch("--batch-size", args.batch_size, comm)
    config = _run_config(args, _optimizer(args))
    if args.resume:
        distributed.check_resume("--resume", args.checkpoint, 1 if comm is None else comm.size)
        resume_state(args.checkpoint, config, args.resume_anyway, log=lambda line: None)

    weights = _read_weights(args)
    ds = _load_data(args)
    (x_train, y_train), val = _split_validation(args, ds)
    x_test, y_test = ds.test
    ex = _executor(args, ds, args.seed, comm)
    _weights_and_freezing(args, ex, weights)  # every rank reads the same file: the same weights
    augment = _augment(args, ds)
    print(f"{args.model}: {ex.num_params():,} parameters on {ex.device} (backend {ex.bk.name}); "
          f"{len(x_train)} training, {0 if val is None else len(val[0])} validation and {len(x_test)} test images, "
          f"{ds.num_classes} classes; {ex.optimizer}, schedule {args.schedule}, batch {args.batch_size}, "
          f"{args.epochs} epochs{', ' + repr(augment) if augment else ''}")
    if comm is not None:
        how = {None: "MPI", "nccl": "NCCL", "host": "MPI through host memory"}[comm.gpu_reduce]
        print(f"data parallel: {comm.size} processes, {args.batch_size // comm.size} images each per step, "
              f"gradients averaged by {how}")
    loader = DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=args.seed, augment=augment,
                        shard=None if comm is None else (comm.rank, comm.size))
    early = EarlyStopping(patience=args.patience) if args.patience else None
    t0 = time.perf_counter()
    history = fit(ex, loader, args.epochs, val=val, schedule=make_schedule(args.schedule, args.epochs),
                  early_stopping=early, checkpoint=args.checkpoint, resume=args.resume,
                  on_nonfinite=args.on_nonfinite, progress=not args.no_progress, config=config,
                  resume_anyway=args.resume_anyway)
    seconds = time.perf_counter() - t0
    if comm is not None and comm.rank != 0:
        return 0  # the test evaluation, plots, the JSON and the model file are rank 0's
    test = evaluate(ex, x_test, y_test)  # once, at the end
    print(f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}, macro precision {test['precision']:.4f}, "
          f"macro recall {test['recall']:.4f}, macro F1 {test['f1']:.4f}) after {history.epochs} epochs "
          f"in {seconds:.1f}s" + (f"; validation accuracy {history['val_accuracy'][-1]:.4f}"
                                  if val and history['val_accuracy'] else ""))
    if args.plots:
        _training_plots(args, ex, ds, history, test, len(loader))
    if args.json:
        train_seconds = sum(history["seconds"]) or seconds
        summary = {"model": args.model, "model_options": _model_options(args), "data": args.data,
                   "held_out_accuracy": test["accuracy"], "held_out_loss": test["loss"], "test": test,
                   "final_train_loss": history["loss"][-1] if history["loss"] else None,
                   "final_val_loss": history["val_loss"][-1] if history["val_loss"] else None,
                   "final_val_accuracy": history["val_accuracy"][-1] if history["val_accuracy"] else None,
                   "val_split": args.val_split, "augment": repr(augment) if augment else None,
                   "epochs": history.epochs, "seconds": seconds, "device": ex.device, "backend": ex.bk.name,
                   "images_per_second": history.epochs * len(x_train) / train_seconds,
                   "optimizer": args.optimizer, "optimizer_settings": repr(ex.optimizer), "lr": ex.optimizer.lr,
                   "schedule": args.schedule, "batch_size": args.batch_size, "seed": args.seed,
                   "world_size": 1 if comm is None else comm.size,
                   "stopped_nonfinite": history.nonfinite, "history": dict(history),
                   "batches_per_epoch": len(loader), "config": config}  # config: what compare labels runs by
        nonfinite = write_json(args.json, summary)
        print(f"summary written to {args.json}" + (f" (NaN/Inf written as null at {len(nonfinite)} places, "
                                                   f"listed under 'nonfinite')" if nonfinite else ""))
    if args.save and history.nonfinite:
        print("--save: no model file written: training stopped on a NaN/Inf")
    elif args.save:
        _save_model(args, ex, ds)
    if history.nonfinite:
        raise NonFiniteLoss(f"train: stopped at {history.nonfinite} on a NaN/Inf loss or weights "
                            f"(--on-nonfinite stop); lower --lr")
    return 0


def _training_plots(args, ex, ds, history, test, batches_per_epoch: int) -> None:
    """The pictures of a training run in --plots: learning curves per epoch and per batch, the
    test split's confusion matrix, per-class precision and recall and a grid of its images with
    their predictions, and the first conv layer's filters."""
    from engine import nn
    from engine.plots import (choose_samples, plot_batch_loss, plot_confusion_matrix, plot_filters, plot_history,
                              plot_per_class, plot_predictions)
    from engine.training import predict
    out = _plots_dir(args)
    plot_history(history, os.path.join(out, "learning_curves.png"))
    if history["batch_loss"]:
        plot_batch_loss(history["batch_loss"], os.path.join(out, "batch_loss.png"),
                        batches_per_epoch=batches_per_epoch)
    plot_confusion_matrix(test["confusion_matrix"], ds.class_names, os.path.join(out, "confusion_matrix.png"))
    plot_per_class(test["confusion_matrix"], ds.class_names, os.path.join(out, "per_class.png"),
                   title="per-class precision and recall on the test split")
    x, y = ds.test
    if x.ndim == 4 and x.shape[1] in (1, 3):
        predicted = predict(ex, x).argmax(axis=1)
        show = choose_samples(y, predicted, seed=args.seed)
        plot_predictions(x[show], y[show], predicted[show], ds.class_names, os.path.join(out, "predictions.png"),
                         mean=ds.mean, std=ds.std, title=f"{len(show)} of {len(y)} test images")
    convs = [layer for layer in ex.layers if isinstance(layer, nn.Conv2d)]
    if convs:
        plot_filters(convs[0].params["weight"], os.path.join(out, "filters.png"), title="first conv layer")
    print(f"plots written to {out}/")


def cmd_cv(args) -> int:
    from engine.plots import plot_folds
    from engine.schedules import make_schedule
    from engine.training import cross_validate

    _check_outputs(args)
    ds = _load_data(args)
    x, y = ds.train
    if args.folds > len(y):
        raise ValueError(f"--folds {args.folds}: the training split holds only {len(y)} images")
    print(f"{args.model}: {args.folds}-fold cross-validation on {len(x)} training images "
          f"({args.epochs} epochs per fold, {_optimizer(args)})")
    result = cross_validate(lambda fold: _executor(args, ds, args.seed + fold), x, y, args.folds, args.epochs,
                            args.batch_size, args.seed, schedule=make_schedule(args.schedule, args.epochs),
                            augment=_augment(args, ds), progress=not args.no_progress)
    for metric, value in result["summary"].items():
        print(f"{metric}: {value['mean']:.4f} +- {value['std']:.4f} over {args.folds} folds")
    if args.plots:
        plot_folds(result["folds"], os.path.join(_plots_dir(args), "cross_validation.png"))
        print(f"plots written to {args.plots}/")
    if args.json:
        write_json(args.json, {"model": args.model, "folds": args.folds, "epochs": args.epochs, **result})
        print(f"summary written to {args.json}")
    return 0


def cmd_lr_find(args) -> int:
    from engine.data import DataLoader
    from engine.plots import plot_lr_find
    from engine.training import lr_find

    _check_outputs(args)
    if args.min_lr >= args.max_lr:
        raise ValueError(f"lr-find: --min-lr ({args.min_lr:g}) must be below --max-lr ({args.max_lr:g})")
    ds = _load_data(args)
    ex = _executor(args, ds, args.seed)
    loader = DataLoader(*ds.train, args.batch_size, shuffle=True, seed=args.seed, augment=_augment(args, ds))
    result = lr_find(ex, loader, args.min_lr, args.max_lr, args.steps)
    suggested = result["suggested_lr"]
    print(f"{args.model} with {args.optimizer}: loss fell fastest at lr {suggested:.3g}; tried {len(result['lr'])} "
          f"rates from {result['lr'][0]:.2g} to {result['lr'][-1]:.2g}" if suggested else
          "lr-find: too few steps before the loss diverged; lower --min-lr")
    if len(result["lr"]) >= 2:
        plot_lr_find(result, args.out)
        print(f"plot written to {args.out}")
    return 0


def cmd_summary(args) -> int:
    from engine.graph import summary
    from engine.models import build_model, find_model
    _, shape = find_model(args.model)
    shape = args.input_shape or shape
    if shape is None:
        raise ValueError(f"summary: {args.model} does not say its input size; give --input-shape C,H,W")
    model = build_model(args.model, args.num_classes or 10, shape[0], **_model_options(args))
    if args.freeze is not None:
        from engine.graph import freeze
        freeze(model, args.freeze)
    print(repr(model) if args.repr else summary(model, shape))
    return 0


def cmd_predict(args) -> int:
    import json
    from engine.modelfile import load_model
    for path in args.images:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"predict: no image file {path}")
    saved = load_model(args.model, device=args.device)
    results = saved.classify(args.images, top=args.top)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    width = max(len(c) for c in saved.class_names)
    for result in results:
        print(result["image"])
        for guess in result["top"]:
            print(f"  {guess['class']:<{width}}  {guess['probability']:.4f}")
    return 0


def cmd_export(args) -> int:
    from engine.export import export_onnx
    model = export_onnx(args.model, args.out, opset=args.opset)
    print(f"{args.out}: ONNX opset {args.opset}, {len(model.graph.node)} nodes, checked with onnx.checker")
    return 0


def cmd_compare(args) -> int:
    from engine.plots import plot_runs
    from engine.runs import differences, load_run, run_labels

    _check_outputs(args)
    runs = [load_run(path) for path in args.runs]
    labels = run_labels(runs, [os.path.basename(path) for path in args.runs])
    differ = differences(runs)
    title = f"{len(runs)} runs" + (f", differing in {', '.join(differ)}" if differ else ", of one configuration")
    plot_runs([r["history"] for r in runs], labels, args.out, title=title,
              batches_per_epoch=[r.get("batches_per_epoch") for r in runs])
    width = max(len(label) for label in labels)
    print(f"{'run':<{width}}  epochs  val loss  val acc  test acc")
    for label, run in zip(labels, runs):
        h = run["history"]
        last = [(h.get("val_loss") or [None])[-1], (h.get("val_accuracy") or [None])[-1], run.get("held_out_accuracy")]
        cells = [f"{'-' if v is None else format(v, '.4f'):>{n}}" for v, n in zip(last, (8, 7, 8))]
        print(f"{label:<{width}}  {len(h['loss']):>6}  " + "  ".join(cells))
    print(f"plot written to {args.out}")
    return 0


def _inspected_model(args):
    """The trained model inspect looks into, and what reading an image for it takes: an object
    with .executor, .class_names, .mean, .std (per channel, of pixels in [0, 1]) and
    .preprocess ({"resize", "crop"}), as engine.load_model's SavedModel has them. A model file
    (train --save) is read by engine.load_model; a training checkpoint (--checkpoint) with the
    model's name by _from_checkpoint."""
    if args.checkpoint is not None:
        return _from_checkpoint(args)
    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"inspect: no model file {args.model}; give a model file (train --save), or "
                                f"the model's name and its training checkpoint: --checkpoint CKPT")
    from engine.modelfile import load_model
    return load_model(args.model, device=args.device)


def _from_checkpoint(args):
    """A training checkpoint of the model named: the run config it keeps says which options and
    data it was trained with; the data set is loaded again for the class names and the
    normalisation training used, and images are read as _load_data read them."""
    import re
    from types import SimpleNamespace
    from engine.checkpoint import load_checkpoint
    from engine.executor import Executor
    from engine.models import build_model
    state = load_checkpoint(args.checkpoint)
    config = state.get("config") if "executor" in state else None
    if not isinstance(config, dict):
        raise ValueError(f"inspect: {args.checkpoint} is not a checkpoint of train --checkpoint (it does not say "
                         f"which model and data it was trained with)")
    if config["model"] != args.model:
        raise ValueError(f"inspect: {args.checkpoint} is a checkpoint of {config['model']}, not of {args.model}")
    synthetic = re.fullmatch(r"synthetic \((\d+) images\)", config["data"])
    run = SimpleNamespace(model=config["model"], data="synthetic" if synthetic else config["data"],
                          synthetic_size=int(synthetic.group(1)) if synthetic else 2048,
                          image_size=config["image_size"], seed=config["seed"])
    ds = _load_data(run)
    shape = ds.train.x.shape[1:]
    model = build_model(config["model"], ds.num_classes, shape[0], **config["model_options"])
    ex = Executor(model, shape, device=args.device)
    ex.load_state_dict(state["executor"])
    return SimpleNamespace(executor=ex, class_names=list(ds.class_names), mean=ds.mean, std=ds.std,
                           preprocess=_preprocess(run, ds))


def cmd_inspect(args) -> int:
    import numpy as np
    from engine import checks, nn
    from engine.data import _decode
    from engine.plots import _pixels, plot_feature_maps, plot_filters, plot_prediction

    check_output_dir("--out", args.out)
    if not os.path.isfile(args.image):
        raise FileNotFoundError(f"inspect: no image file {args.image}")
    loaded = _inspected_model(args)
    ex = loaded.executor
    if len(ex.input_shape) != 3 or loaded.preprocess is None:
        raise ValueError(f"inspect: the model takes inputs of shape {ex.input_shape}, not images")
    plan = ex.plan(1, "predict", fuse=False)  # the plan activations() runs: every layer's own output
    names = ex.output_names(plan)
    layer_of = {name: b.layer for b, (name, _) in zip(plan.bound, names)}
    convs = [name for name, _ in names if isinstance(layer_of[name], nn.Conv2d)]
    shown = checks.layer_names("inspect", "--layers", args.layers.split(",") if args.layers else convs,
                               [name for name, _ in names])
    c = ex.input_shape[0]
    pixels = _decode("inspect", args.image, loaded.preprocess["resize"], loaded.preprocess["crop"], c)
    mean, std = (np.asarray(v, np.float32).reshape(c, 1, 1) for v in (loaded.mean, loaded.std))
    x = ((pixels / np.float32(255.0) - mean) / std)[None].astype(np.float32)
    outputs = ex.activations(x, shown + [names[-1][0]])  # and the logits, for the prediction
    logits = outputs[names[-1][0]][0].astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    image = _pixels("inspect", x, loaded.mean, loaded.std)[0]

    os.makedirs(args.out, exist_ok=True)
    written = [plot_prediction(image, probabilities, loaded.class_names, os.path.join(args.out, "prediction.png"))]
    for name in convs:
        layer = layer_of[name]
        written.append(plot_filters(layer.params["weight"], os.path.join(args.out, f"filters_{_file_safe(name)}.png"),
                                    title=f"{name} ({type(layer).__name__})"))
    for name in shown:
        written.append(plot_feature_maps(outputs[name][0], os.path.join(args.out, f"maps_{_file_safe(name)}.png"),
                                         title=f"{name} ({type(layer_of[name]).__name__}) output",
                                         image=image if outputs[name].ndim == 4 else None))
    best = np.argsort(-probabilities, kind="stable")[:args.top]
    print(f"{args.image}: predicted {loaded.class_names[best[0]]} (probability {probabilities[best[0]]:.4f}); "
          + ", ".join(f"{loaded.class_names[i]} {probabilities[i]:.4f}" for i in best[1:]))
    print(f"{len(written)} pictures written to {args.out}/: " + ", ".join(os.path.basename(w) for w in written))
    return 0


def _file_safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0],
                           epilog="--debug (anywhere): show the traceback of an error. Exit codes: 0 done, "
                                  "1 validate found a failing kernel, 2 a mistake in what was asked, "
                                  "3 training diverged (NaN/Inf), 70 a bug of the engine.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and report its test accuracy")
    _common(t)
    t.add_argument("--checkpoint", default=None, help="write a checkpoint here after every epoch")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    t.add_argument("--resume-anyway", action="store_true",
                   help="--resume, allowing another optimizer or lr than the checkpoint's (says what is reset)")
    t.add_argument("--val-split", type=real(0, 1, high_open=True), default=0.1,
                   help="share of the training data held out for validation, stratified (default 0.1; 0: none)")
    t.add_argument("--patience", type=integer(0), default=0, help="early stopping patience in epochs (0: off)")
    t.add_argument("--json", default=None, help="write a summary of the run as JSON here")
    t.add_argument("--plots", default=None, help="directory for learning-curve and confusion-matrix PNGs")
    t.add_argument("--save", default=None,
                   help="write the trained model here (.npz: architecture, weights, classes, normalisation)")
    t.add_argument("--weights", default=None,
                   help="start from these weights: a PyTorch state dict (.pt/.pth), .safetensors or .npz")
    t.add_argument("--no-strict", action="store_true",
                   help="with --weights: load what fits (a new head stays initialised) and list what was skipped")
    t.add_argument("--freeze", default=None, metavar="LAYER",
                   help="freeze every layer up to and including LAYER, a path as `summary` lists them "
                        "(e.g. features, layer3, 5)")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cv", help="k-fold cross-validation: mean and spread of accuracy and precision")
    _common(c)
    c.add_argument("--folds", type=integer(2), default=5)
    c.add_argument("--json", default=None, help="write the per-fold scores as JSON here")
    c.add_argument("--plots", default=None, help="directory for the box plot PNG")
    c.set_defaults(func=cmd_cv)

    lr = sub.add_parser("lr-find", help="learning-rate range test: loss against a rising learning rate")
    _common(lr)
    lr.add_argument("--min-lr", type=real(0, low_open=True), default=1e-6)
    lr.add_argument("--max-lr", type=real(0, low_open=True), default=1.0)
    lr.add_argument("--steps", type=integer(3), default=100, help="batches, one learning rate each (default 100)")
    lr.add_argument("--out", default="lr_find.png", help="the plot (default lr_find.png)")
    lr.set_defaults(func=cmd_lr_find)

    s = sub.add_parser("summary", help="print a model's layers, output shapes and parameter counts")
    s.add_argument("model", help="a built-in model or FILE.py:NAME")
    s.add_argument("--num-classes", type=integer(2), default=None)
    s.add_argument("--input-shape", type=integers(1, length=3), default=None, help="C,H,W (default: the model's own)")
    s.add_argument("--repr", action="store_true", help="print the model's repr (its layer tree) instead")
    _model_arguments(s.add_argument_group("model options"))
    s.add_argument("--freeze", default=None, metavar="LAYER", help="show the counts with layers up to LAYER frozen")
    s.set_defaults(func=cmd_summary)

    pr = sub.add_parser("predict", help="classify image files with a model file (train --save)")
    pr.add_argument("model", help="a model file written by train --save")
    pr.add_argument("images", nargs="+", help="image files (decoded, resized and normalised as at training)")
    pr.add_argument("--top", type=integer(1), default=5, help="how many classes to show per image (default 5)")
    pr.add_argument("--json", action="store_true", help="print the results as JSON")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.set_defaults(func=cmd_predict)

    e = sub.add_parser("export", help="write a model file as ONNX (checked with onnx.checker)")
    e.add_argument("model", help="a model file written by train --save")
    e.add_argument("out", help="the .onnx file to write")
    e.add_argument("--opset", type=integer(17), default=17, help="ONNX opset (default 17, the lowest written)")
    e.set_defaults(func=cmd_export)

    co = sub.add_parser("compare", help="the learning curves of several runs (train --json) on one figure")
    co.add_argument("runs", nargs="+", help="run summaries written by train --json")
    co.add_argument("--out", default="compare.png", help="the figure (default compare.png)")
    co.set_defaults(func=cmd_compare)

    i = sub.add_parser("inspect", help="a trained model's filters, the feature maps of an image, its prediction")
    i.add_argument("model", help="a model file (train --save), or a model's name with --checkpoint")
    i.add_argument("image", help="an image file, read as the training images were")
    i.add_argument("--checkpoint", default=None, help="the training checkpoint (train --checkpoint) of the model named")
    i.add_argument("--out", default="inspect", help="directory for the pictures (default inspect/)")
    i.add_argument("--layers", default=None, help="comma-separated layers whose output to draw (default: every "
                                                  "conv layer), e.g. features.0,features.1")
    i.add_argument("--top", type=integer(1), default=5, help="classes printed, most probable first (default 5)")
    i.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("validate", help="check every kernel against the float64 reference", add_help=False)
    v.set_defaults(func=None)
    b = sub.add_parser("bench", help="run the benchmarks and write benchmarks/results/", add_help=False)
    b.set_defaults(func=None)
    return p


def _dispatch(argv: list) -> int:
    if argv and argv[0] == "validate":
        from engine.validate import main as validate_main
        return validate_main(argv[1:])
    if argv and argv[0] == "bench":
        from engine.bench import main as bench_main
        return bench_main(argv[1:])
    try:
        with distributed.rank0_prints():  # under mpiexec, argparse's one line (or --help) once
            args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a mistake argparse found (2, one line already printed)
        return int(e.code or 0)
    if distributed.launched():  # under mpiexec: only rank 0 prints; a failing rank ends every rank
        return distributed.run_command(_run, args)
    return _run(args)


def _run(args) -> int:
    from tqdm.auto import tqdm
    from engine.cpu.compiling import report_compilation
    with report_compilation(log=tqdm.write):  # a first run compiles its kernels: say so (above a progress bar)
        return args.func(args)


def main(argv=None) -> int:
    return cli.run(_dispatch, list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
