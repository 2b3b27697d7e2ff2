"""The ``fvae`` command line: parse, call the library, print. Errors: one line, exit code 2."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import signal
import stat
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import DataError, FvaeError, InputError, OutputExistsError

app = typer.Typer(
    help="Encode images as Fisher Vectors or VAE latent codes, and compare them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help: rich's option tables cut long option names short ("--gaussian-var…") in
    # 80 columns, and click's lists show every name whole and wrap only the descriptions
    rich_markup_mode=None,
)
fit_app = typer.Typer(help="Fit an encoder on a split of a dataset and save it.\n\nThe train split by default; "
                           "another with --split.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(fit_app, name="fit")


class Method(str, Enum):
    fisher = "fisher"
    vae = "vae"


class Arch(str, Enum):
    conv = "conv"
    mlp = "mlp"


class Likelihood(str, Enum):
    bernoulli = "bernoulli"
    gaussian = "gaussian"


class Binarization(str, Enum):
    dynamic = "dynamic"
    threshold = "threshold"
    none = "none"


class SplitName(str, Enum):
    train = "train"
    test = "test"
    all = "all"


class PatchNorm(str, Enum):
    none = "none"
    center = "center"
    standardize = "standardize"
    l2 = "l2"


def _choice(*names: str, **kwargs):
    """An option whose value is one of an Enum's, matched in any case (``--split TEST``)."""
    return typer.Option(*names, case_sensitive=False, **kwargs)


DataOpt = Annotated[str, typer.Option("--data", "-d", help="mnist, mnist-5k, fashion-mnist, digits, or a path.")]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="Extra folder searched for named datasets.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or spinner.")]
SeedOpt = Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed: same seed, same output.")]
FitSplitOpt = Annotated[SplitName, _choice(
    "--split", help="Split to fit on: test or all for a source without a train split, such as a .npy.")]


def _bad_option(option: str, message: str) -> typer.BadParameter:
    """A usage error about ``option`` that names it in quotes, as click names an option whose own
    check refused a value: "Invalid value for '--hidden': ...". (A ``param_hint`` is shown as is.)"""
    return typer.BadParameter(message, param_hint=f"'{option}'")


def _check_output_suffix(output: Path, suffix: str, what: str) -> None:
    """Refuse an --output that does not end in ``suffix`` (in any case), or that is the suffix alone
    (``-o .npz``: a hidden file with no name)."""
    if output.name.lower() == suffix:
        raise _bad_option("--output", f"{output}: the {what} needs a name before {suffix}")
    if output.suffix.lower() != suffix:
        raise _bad_option("--output", f"{output}: the {what} is written as {suffix}")


def _image_size(text: str | None) -> tuple[int, int] | None:
    """An option callback reading --image-size as (height, width): "28x28" (or "28X28", "28×28"),
    or "28" for a square; its bounds are load_dataset's (:func:`~fvae.data.check_image_size`)."""
    from .data import IMAGE_SIZE_MAX, check_image_size

    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    try:
        return check_image_size((int(match[1]), int(match[2] or match[1])) if match else None)
    except InputError:
        raise typer.BadParameter(f"{text!r}: expected HEIGHTxWIDTH in pixels, such as 28x28, or one side for a "
                                 f"square, each from 1 to {IMAGE_SIZE_MAX}") from None


# the callback turns the text into (height, width): the commands get a tuple or None
ImageSizeOpt = Annotated[Optional[str], typer.Option(
    callback=_image_size, metavar="HxW",
    help="Resize an image folder's files to HxW pixels (28x28, or 28 for a square): then they may be of any sizes.")]


def _folder_name(value: str | None) -> str | None:
    """An option callback refusing a run name that is not one folder name: empty, ``.``, ``..``,
    or a path, which would put the run outside --runs-dir (``/tmp/x`` replaces it altogether)."""
    if value is None:
        return None
    if value in ("", ".", "..") or "/" in value or os.sep in value:
        raise typer.BadParameter(f"{value!r}: a run name is one folder name; --runs-dir chooses where it goes")
    if value.strip() != value:  # " " or "run ": a folder no one means to make
        raise typer.BadParameter(f"{value!r}: a run name neither starts nor ends with a space")
    return value


def _number_in(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = True):
    """An option callback refusing NaN and numbers outside the interval from ``low`` to ``high``,
    each end included unless ``low_open`` or ``high_open`` (by default: [low, inf)). Checked here,
    so that the error names the option, not the library parameter it becomes."""
    if high == math.inf:
        wanted = "positive" if low == 0 and low_open else f"{'>' if low_open else '>='} {low:g}"
    else:
        wanted = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def check(value):
        if value is None:
            return value
        above = low < value if low_open else low <= value  # both False for NaN
        below = value < high if high_open else value <= high
        if not (above and below):
            raise typer.BadParameter(f"must be {wanted}, got {value}")
        return value

    return check


_positive = _number_in(0, low_open=True)


def _version(value: bool):
    if value:
        typer.echo(f"fvae {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
):
    """fvae: Fisher Vectors and VAE codes for images, side by side."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fvae: %(levelname)s: %(message)s"))
    logger = logging.getLogger("fvae")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is a Ctrl-C, or an error a Ctrl-C turned into.

    Python raises KeyboardInterrupt in whatever Python code runs when Ctrl-C arrives. Inside code a
    C extension called, the extension reports its own error, chained to the interrupt: NumPy's
    ``__array__`` under TensorFlow gives "SystemError: ... returned a result with an exception set",
    a Cython module being imported gives "ValueError: ... is not a valid PEP 3118 buffer format".
    """
    seen = set()
    while exc is not None and id(exc) not in seen:  # the chain a traceback would show
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ if exc.__cause__ is not None or exc.__suppress_context__ else exc.__context__
    return False


def _user_errors(command):
    """Turn the errors a user can cause into one line on stderr and exit code 2 (130 for Ctrl-C)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except BaseException as exc:
            if _is_interrupt(exc):
                # Here, not in run(): typer turns an interrupt that leaves a command into a silent exit 130.
                typer.echo("fvae: interrupted; no half-written output was left", err=True)
                raise typer.Exit(130) from None
            if isinstance(exc, FvaeError):
                typer.echo(f"fvae: error: {exc}", err=True)
                raise typer.Exit(2) from None
            if _is_closed_stdout(exc):
                _stop_writing_to_stdout()
                raise typer.Exit(CLOSED_PIPE_EXIT_CODE) from None
            if isinstance(exc, OSError):
                where = f"{exc.filename}: " if exc.filename else ""
                typer.echo(f"fvae: error: {where}{exc.strerror or exc}", err=True)
                raise typer.Exit(2) from None
            failed_allocation = _failed_allocation(exc)
            if failed_allocation:
                typer.echo(f"fvae: error: out of memory: {failed_allocation}; the model or the batch is too large "
                           "for this machine", err=True)
                raise typer.Exit(2) from None
            raise

    return wrapper


def _output_locked(command):
    """Hold the lock of the command's ``output`` (:func:`fvae.persist.output_lock`) from before its
    first check to after its last write, so that a second command writing it is refused at once."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .persist import output_lock

        with output_lock(kwargs["output"]):
            return command(*args, **kwargs)

    return wrapper


# Exit code when stdout's reader went away: what click gives for `fvae --help | head -0`, and what
# Python's documentation of SIGPIPE advises
CLOSED_PIPE_EXIT_CODE = 1


def _is_closed_stdout(exc: BaseException) -> bool:
    """Whether ``exc`` is a write to stdout after its reader went away (``fvae datasets | head -1``):
    the reader has what it wanted, so this is no error to report. Stdout must be a pipe or socket:
    on a terminal or a file, a broken pipe is another connection's, and an error."""
    if not isinstance(exc, BrokenPipeError) or exc.filename is not None:
        return False
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):  # no stdout at all
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _stop_writing_to_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not hit the closed pipe again
    and print "Exception ignored ... BrokenPipeError"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _failed_allocation(exc: BaseException) -> str | None:
    """What could not be allocated, in one line, when ``exc`` is NumPy's or TensorFlow's
    out-of-memory error (a --latent-dim or --hidden in the billions); None for any other error."""
    if isinstance(exc, MemoryError):
        return str(exc) or "an allocation failed"
    tf = sys.modules.get("tensorflow")  # imported only by the commands that run a VAE
    if tf is None or not isinstance(exc, tf.errors.ResourceExhaustedError):
        return None
    # TensorFlow's message is many lines: the graph's call stack, then "OOM when allocating ...".
    oom = re.search(r"OOM when allocating tensor with shape\[([\d,]*)\] and type (\w+)", exc.message)
    if oom is None:
        return exc.message.strip().splitlines()[-1]
    return f"Unable to allocate a tensor of shape ({oom[1].replace(',', ', ')}) and type {oom[2]}"


def _draws_progress(quiet: bool) -> bool:
    """Bars and spinners are drawn on a terminal only, and not with --quiet."""
    return not quiet and sys.stderr.isatty()


def _progress_bar(total: int, label: str, quiet: bool):
    """A rich progress bar on a terminal; nothing when quiet or piped. Returns (context, advance)."""
    if not _draws_progress(quiet):
        return contextlib.nullcontext(), None
    from .report import progress_bar

    progress, task = progress_bar(label, total)

    def advance(n):
        progress.advance(task, n)
        speed = progress.tasks[0].speed
        progress.update(task, info=f"{speed:,.0f} img/s" if speed else "")

    return progress, advance


def _training_verbosity(quiet: bool) -> int:
    """VAEEncoder's ``verbose`` for a command: a bar and epoch lines on a terminal, the lines in a
    pipe or log, nothing with --quiet."""
    return 1 if _draws_progress(quiet) else (0 if quiet else 2)


def _status(message: str, quiet: bool):
    """A rich spinner with ``message`` on a terminal while work runs; nothing when quiet or piped."""
    if not _draws_progress(quiet):
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


@app.command()
@_user_errors
def datasets(data_dir: DataDirOpt = None):
    """List the named datasets: available or not, where, their sizes."""
    from .data import describe_sources

    for row in describe_sources(data_dir):
        if row["available"]:
            size = "x".join(str(side) for side in row["image_shape"])
            typer.echo(f"{row['name']:<14} yes  train {row['train']:>6,}  test {row['test']:>6,}  {size:<5}  "
                       f"{row['location']}")
        else:
            typer.echo(f"{row['name']:<14} no   {row['note']}")


# FisherVectorEncoder's parameters that a fit checks against the data, by the option that sets each
FISHER_OPTIONS = {"n_components": "--components", "pca_components": "--pca", "patch_size": "--patch-size",
                  "stride": "--stride", "spatial_pyramid": "--pyramid", "n_descriptor_samples": "--samples",
                  "patch_normalization": "--patch-norm"}


@contextlib.contextmanager
def _named_as_options(options: dict[str, str], *, set_in: str | None = None):
    """Re-raise an :class:`InputError` with the library parameters it names written as ``options``
    names them: the user typed ``--pca``, not ``pca_components``.

    ``set_in``, for a command without those options (encode and evaluate fit a default Fisher
    model), says where they are set; it is added to an error that names one, and any other error
    is left as it was.
    """
    try:
        yield
    except InputError as exc:
        names = re.compile(r"\b(" + "|".join(options) + r")\b")
        message = names.sub(lambda match: options[match.group(1)], str(exc))
        if set_in is None:
            raise InputError(message) from None
        if message == str(exc):  # names no parameter
            raise
        raise InputError(f"{message} ({set_in})") from None


def _default_fisher_fit_errors(data: str, model_option: str, *, fits: bool):
    """For a command that fits a default Fisher model (``fits``): its errors with the parameters
    named as ``fvae fit fisher``'s options, where they are set, whose model the command then
    takes as ``model_option``. Nothing to rename where no Fisher model is fitted."""
    if not fits:
        return contextlib.nullcontext()
    return _named_as_options(FISHER_OPTIONS, set_in=f"in 'fvae fit fisher --data {data} -o MODEL', then pass "
                                                    f"{model_option} MODEL")


def _fisher_encoder(**params):
    from .fisher import FisherVectorEncoder

    return FisherVectorEncoder(**params)


@fit_app.command("fisher")
@_user_errors
@_output_locked
def fit_fisher(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.npz).")],
    components: Annotated[int, typer.Option(min=1, help="GMM components K.")] = 64,
    pca: Annotated[Optional[int], typer.Option(
        min=1,
        help="PCA dimension of the patch descriptors (default: 32, or 12 on images under 14 pixels a side, "
             "at most the patch's pixels).")] = None,
    patch_size: Annotated[Optional[int], typer.Option(
        min=1,
        help="Patch side in pixels (default: 7; 4 on images under 14 pixels a side).")] = None,
    stride: Annotated[Optional[int], typer.Option(
        min=1,
        help="Step between patches in pixels (default: 2; 1 on images under 14 pixels a side).")] = None,
    patch_norm: Annotated[PatchNorm, _choice(help="Per-patch normalization.")] = PatchNorm.none,
    whiten: Annotated[bool, typer.Option(help="Whiten the PCA output.")] = False,
    xy: Annotated[bool, typer.Option(help="Append patch positions to descriptors.")] = True,
    pyramid: Annotated[bool, typer.Option(help="Spatial pyramid 1x1 + 2x2.")] = True,
    improved: Annotated[bool, typer.Option(help="Power + L2 normalization.")] = True,
    alpha: Annotated[Optional[float], typer.Option(
        callback=_number_in(0, 1, low_open=True, high_open=False), help="Power normalization exponent (default: 0.5).")] = None,
    weight_gradients: Annotated[bool, typer.Option(help="Add mixture-weight gradients.")] = False,
    intra_norm: Annotated[bool, typer.Option(help="Intra-normalize per component.")] = False,
    samples: Annotated[int, typer.Option(min=1, help="Descriptors sampled to fit PCA and GMM.")] = 50_000,
    em_iter: Annotated[int, typer.Option(min=1, help="EM iterations of the GMM, at most.")] = 200,
    split: FitSplitOpt = SplitName.train,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
):
    """Fit a Fisher Vector encoder (PCA + GMM) and save it.

    It is fitted on the train split of --data, or the split --split names.
    """
    import time

    from .data import load_dataset
    from .persist import refuse_replacing_inputs, refuse_unwritable

    if alpha is not None and not improved:
        raise _bad_option("--alpha", "applies to the improved Fisher Vector only, not with --no-improved")
    given = {} if alpha is None else {"alpha": alpha}  # otherwise FisherVectorEncoder's default
    _check_output_suffix(output, ".npz", "model file")
    refuse_replacing_inputs([output], {"--data": data})
    refuse_unwritable(output, force=force)  # before the fit, which may take minutes
    dataset = load_dataset(data, data_dir, image_size=image_size)
    train = _fitting_split(dataset, split)
    encoder = _fisher_encoder(
        patch_size=patch_size, stride=stride, pca_components=pca, n_components=components,
        patch_normalization=patch_norm.value, whiten=whiten, xy=xy, spatial_pyramid=pyramid,
        improved=improved, weight_gradients=weight_gradients, intra_normalization=intra_norm,
        n_descriptor_samples=samples, max_iter=em_iter, random_state=seed, **given,
    )
    started = time.perf_counter()
    with _status(f"fitting fisher on {len(train):,} images: PCA, then a GMM of {components} components", quiet), \
            _named_as_options(FISHER_OPTIONS):
        encoder.fit(train.images)
    checksum = encoder.save(output, force=force)
    size = encoder.patch_size_
    typer.echo(
        f"fitted fisher on {_counted(len(train), f'{dataset.name} {split.value} image')} in {time.perf_counter() - started:.1f} s: "
        f"{size}x{size} patches at stride {encoder.stride_}, PCA-{encoder.pca_components_}, K={components}; "
        f"{encoder.n_features_out_:,} dims; wrote {output} (checksum {checksum[:12]})"
    )


#: The largest latent, hidden layer or batch: TensorFlow holds tensor shapes as int32 (VAEEncoder checks it too).
TENSOR_SIZE_MAX = 2**31 - 1


def _hidden_sizes(text: str) -> tuple:
    """--hidden's layer sizes: "512,256", or "512-256" as the literature writes them."""
    try:
        sizes = tuple(int(part) for part in re.split(r"[,-]", text))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or max(sizes) > TENSOR_SIZE_MAX:
        raise _bad_option("--hidden", f"{text!r}: expected positive sizes separated by commas, e.g. 512,256 (or "
                                      f"512-256), each at most {TENSOR_SIZE_MAX}")
    return sizes


@fit_app.command("vae")
@_user_errors
@_output_locked
def fit_vae(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Model file to write (.npz).")],
    arch: Annotated[Arch, _choice(help="Encoder/decoder architecture.")] = Arch.conv,
    latent_dim: Annotated[int, typer.Option(min=1, max=TENSOR_SIZE_MAX, help="Latent dimensions.")] = 32,
    hidden: Annotated[Optional[str], typer.Option(help="MLP hidden sizes, e.g. 1024,512 or 1024-512 (default: 512,256).")] = None,
    likelihood: Annotated[Likelihood, _choice(help="Decoder likelihood.")] = Likelihood.bernoulli,
    binarization: Annotated[Optional[Binarization], _choice(
        help="Bernoulli targets: threshold 0.5, dynamic, or grey (default: threshold).")] = None,
    gaussian_variance: Annotated[Optional[float], typer.Option(
        callback=_positive, help="Fixed Gaussian variance (default: learned).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="At most this many epochs (early stopping ends sooner).")] = 200,
    batch_size: Annotated[int, typer.Option(min=1, max=TENSOR_SIZE_MAX, help="Images per training step.")] = 128,
    learning_rate: Annotated[float, typer.Option(callback=_positive, help="Adam learning rate.")] = 1e-3,
    beta: Annotated[float, typer.Option(callback=_number_in(0), help="KL weight in the loss.")] = 1.0,
    warmup: Annotated[int, typer.Option(min=0, help="KL warm-up epochs.")] = 0,
    dropout: Annotated[float, typer.Option(callback=_number_in(0, 1, high_open=True), help="Dropout after each hidden layer (training only).")] = 0.0,
    conditional: Annotated[bool, typer.Option(help="Condition on the labels (conditional VAE).")] = False,
    patience: Annotated[Optional[int], typer.Option(
        min=1, help="Early-stopping patience in epochs (default: 10).")] = None,
    validation_fraction: Annotated[float, typer.Option(
        callback=_number_in(0, 1, high_open=True),
        help="Share of the training images held out to judge epochs for early stopping (0: none held out, "
             "all epochs run and the last is kept).")] = 0.1,
    max_seconds: Annotated[Optional[float], typer.Option(
        callback=_positive,
        help="Stop training after this many seconds (within one step; the cut epoch is validated).")] = None,
    iwae_k: Annotated[int, typer.Option(
        "--iwae-k", min=0, max=TENSOR_SIZE_MAX,
        help="Importance samples per test image for the IWAE bound on log p(x) (0: none; papers report "
             "k=5000).")] = 16,
    figures: Annotated[Optional[Path], typer.Option(help="Folder for samples, reconstructions, latent plots, GIF.")] = None,
    split: FitSplitOpt = SplitName.train,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
):
    """Train a VAE, save it with its history, and report test numbers.

    It trains on the train split of --data, or the split --split names.

    The test numbers are left out when the test images were trained on (--split test or all), or
    are of another size than the train images. Ctrl-C after the first epoch stops the training
    there and keeps the best epoch so far: it is saved, evaluated and drawn as usual, and the
    command exits with code 130 (143 for SIGTERM, which is taken as Ctrl-C is).
    """
    from .data import load_dataset
    from .persist import history_paths, refuse_replacing_inputs
    from .report import refuse_vae_outputs

    # Options of another architecture or likelihood, or without a validation split, would be ignored: refuse them.
    if hidden is not None and arch != Arch.mlp:
        raise _bad_option("--hidden", "applies to --arch mlp only")
    if binarization is not None and likelihood != Likelihood.bernoulli:
        raise _bad_option("--binarization", "applies to --likelihood bernoulli only")
    if gaussian_variance is not None and likelihood != Likelihood.gaussian:
        raise _bad_option("--gaussian-variance", "applies to --likelihood gaussian only")
    if patience is not None and not validation_fraction:
        raise _bad_option("--patience", "applies only with a validation split (--validation-fraction above 0)")
    _check_output_suffix(output, ".npz", "model file")
    given = {}  # the rest are VAEEncoder's defaults
    if patience is not None:
        given["patience"] = patience
    if hidden is not None:
        given["hidden"] = _hidden_sizes(hidden)
    if binarization is not None:
        given["binarization"] = binarization.value
    # before the data and TensorFlow load: a file in the way is refused at once
    refuse_replacing_inputs([output, *history_paths(output).values()], {"--data": data})
    refuse_vae_outputs(output, figures, latent_dim=latent_dim, force=force)
    dataset = load_dataset(data, data_dir, image_size=image_size)
    train = _fitting_split(dataset, split)
    if conditional and train.labels is None:
        raise DataError(f"{dataset.name} has no labels, and a conditional VAE (--conditional) needs them")
    held_out = dataset.test if split == SplitName.train else None
    from .vae.encoder import VAEEncoder, fit_and_save

    encoder = VAEEncoder(
        latent_dim=latent_dim, arch=arch.value, likelihood=likelihood.value, gaussian_variance=gaussian_variance,
        beta=beta, warmup_epochs=warmup, dropout=dropout, conditional=conditional, epochs=epochs,
        batch_size=batch_size, learning_rate=learning_rate, validation_fraction=validation_fraction,
        max_seconds=max_seconds, random_state=seed, verbose=_training_verbosity(quiet), **given,
    )
    class_names = dict(enumerate(dataset.class_names))
    result = fit_and_save(encoder, train, held_out, output, figures_dir=figures, force=force, iwae_k=iwae_k,
                          class_names=class_names)
    typer.echo(_training_summary(encoder.history_, _counted(len(train), f"{dataset.name} {split.value} image")))
    if held_out is None and dataset.test is not None:
        typer.echo(f"test: no numbers, the test images were trained on (--split {split.value})")
    elif result["not_scored"]:
        typer.echo(f"test: no numbers, {result['not_scored']}")
    if result["n_test_of_untrained_classes"]:
        from .data import class_names_of

        classes = ", ".join(class_names_of(result["untrained_classes"], class_names))
        typer.echo(f"test: {_counted(result['n_test_of_untrained_classes'], 'image')} of classes the VAE was not "
                   f"trained on ({classes}) left out: a conditional VAE encodes only its own classes")
    if result["test"]:
        t = result["test"]
        iwae = f"IWAE bound (k={t['iwae_k']}) {t['iwae_bound']:.2f}, " if "iwae_bound" in t else ""
        typer.echo(
            f"test: ELBO {t['elbo']:.2f} nats (reconstruction {t['reconstruction']:.2f}, KL {t['kl']:.2f}), "
            f"{iwae}active units {t['active_units']}/{t['latent_dim']}"
        )
    typer.echo(f"wrote {output} (checksum {result['checksum'][:12]}), {result['history']['json']}, {result['history']['csv']}")
    if result["figures"]:
        typer.echo(f"figures: {', '.join(str(p) for p in result['figures'])}")
    if result["interrupted"]:  # everything above is complete, but the command did not run to its end
        raise typer.Exit(130)


def _fitting_split(dataset, split: SplitName):
    """The images a ``fit`` command fits on; a source without a train split says which --split has images."""
    if split == SplitName.train and dataset.train is None:
        raise DataError(f"{dataset.name} has no train split, only test images: fit on them with --split test")
    return dataset.split(split.value)


def _training_summary(history: dict, images: str) -> str:
    """'trained vae on IMAGES, N of them held out for validation, in S s: E epochs (REASON), best
    epoch B, validation ELBO V nats', from a VAE's training history; the seconds are the
    training's own, what --max-seconds limits (not the test scores' or figures')."""
    n_held_out = history["validation_images"]
    held_out = f", {n_held_out:,} of them held out for validation," if n_held_out else ""
    best = history["best_epoch"]
    if "val_elbo" in history:
        kept = f"best epoch {best + 1}, validation ELBO {history['val_elbo'][best]:.2f} nats"
    else:
        kept = f"kept epoch {best + 1} (no validation split)"
    epochs = _counted(history["epochs_run"], "epoch")
    return (f"trained vae on {images}{held_out} in {history['seconds'][-1]:.1f} s: {epochs} ({history['stopped_by']}), "
            f"{kept}")


def _counted(n: int, noun: str) -> str:
    """'1 image', '2 images', '1,000 images' (imported when used: the report module loads NumPy)."""
    from .report import counted

    return counted(n, noun)


#: fvae sample's outputs by suffix, each named as its errors name it.
SAMPLE_OUTPUTS = {".png": "sample grid", ".npy": "sample array", ".npz": "sample dataset"}
#: The most samples a grid shows: 100 x 100 images. Arrays hold more: a dataset's worth (at
#: 28x28, one million float32 images take 3.1 GB).
MAX_GRID_SAMPLES, MAX_SAMPLES = 10_000, 1_000_000


@app.command()
@_user_errors
@_output_locked
def sample(
    model: Annotated[Path, typer.Option(help="A saved VAE model.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Image grid to write (.png), the images as an array (.npy), or a conditional "
                               "VAE's images and classes as a labelled dataset (.npz).")],
    n: Annotated[int, typer.Option("-n", min=1, max=MAX_SAMPLES, help=(
        f"How many samples (at most {MAX_GRID_SAMPLES:,} in a .png grid)."))] = 64,
    label: Annotated[Optional[str], typer.Option(
        help="Class to generate, by label or name, in any case (conditional VAE; without it, one row per class).")] = None,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
):
    """Draw images from a VAE's prior: a grid, array or dataset.

    A conditional VAE draws the class --label names, or without it every class, one row per
    class (-n rounded up to whole rows). A .npy output holds the decoded pixels (float32 in
    [0, 1], an image source for --data), and for a conditional VAE NAME.labels.npy their classes.
    A .npz output holds both, a labelled source: "fvae evaluate --data NAME.npz --test-data
    REAL" trains on the samples and tests on real images.
    """
    from .extract import output_paths
    from .persist import read_header, refuse_overwrite, refuse_replacing_inputs, refuse_unwritable, saved_method

    kind = next((suffix for suffix in SAMPLE_OUTPUTS if output.name.lower().endswith(suffix)), None)
    if kind is None:
        raise _bad_option("--output", f"{output}: samples are written as .png (a grid), .npy (an array) "
                                      "or .npz (a labelled dataset)")
    _check_output_suffix(output, kind, SAMPLE_OUTPUTS[kind])
    if kind == ".png" and n > MAX_GRID_SAMPLES:
        raise _bad_option("-n", f"{n:,} samples are more than a .png grid shows ({MAX_GRID_SAMPLES:,}): "
                                "write them as .npy or .npz")
    labels_path = output_paths(output)["labels"] if kind == ".npy" else None  # a conditional VAE's classes
    refuse_replacing_inputs(filter(None, (output, labels_path)), {"--model": model})
    refuse_unwritable(output, force=force)
    saved_method(model, "vae")  # a missing or wrong file is refused before TensorFlow loads
    conditional = kind != ".png" and read_header(model).get("params", {}).get("conditional")
    if kind == ".npz" and not conditional:
        raise _bad_option("--output", f"{output}: a sample dataset labels each image with its class, and {model} "
                                      "is not a conditional VAE: write its samples as .npy")
    written = [output]
    if labels_path is not None and conditional:
        written.append(labels_path)
        refuse_overwrite(labels_path, force=force)
    with _status(f"loading {model} and drawing {n:,} samples", quiet):  # TensorFlow's import takes seconds
        from .report import save_samples
        from .vae.encoder import VAEEncoder, save_sample_arrays, save_sample_dataset

        encoder = VAEEncoder.load(model)
        chosen = _label_of(label, encoder)
        if kind == ".npy":
            drawn = save_sample_arrays(encoder, output, n, label=chosen, random_state=seed, force=force)
        elif kind == ".npz":
            drawn = save_sample_dataset(encoder, output, n, label=chosen, random_state=seed, force=force)
        else:
            drawn = save_samples(encoder, output, n=n, label=chosen, random_state=seed,
                                 class_names=encoder.class_names_, force=force)
    every_class = encoder.conditional and label is None and encoder.n_classes_ > 1
    rows = f" ({drawn // encoder.n_classes_:,} of each of {encoder.n_classes_:,} classes)" if every_class else ""
    typer.echo(f"wrote {_counted(drawn, 'sample')}{rows} to {' and '.join(map(str, written))}")


def _is_integer_text(text: str) -> bool:
    with contextlib.suppress(ValueError):
        int(text)
        return True
    return False


def _label_of(text: str | None, encoder) -> int | str | None:
    """The label ``--label`` names: a class by its name in the model file (a class it does not
    name, or a string label, by the label itself; in any case where only one name matches so,
    "sneaker" for "Sneaker"), else a label number for ``sample`` to check."""
    if text is None:
        return None
    from .data import class_names_of
    from .extract import fitted_on_strings

    classes = encoder.classes_ if encoder.conditional else ()
    by_name = dict(zip(class_names_of(classes, encoder.class_names_), classes))
    if text in by_name:
        return by_name[text]
    matched = [name for name in by_name if name.casefold() == text.casefold()]
    if len(matched) == 1:
        return by_name[matched[0]]
    # where some names are numbers themselves (folders "1", "2", "10"), a number is one of them, not
    # a label: "--label 0" would otherwise draw label 0, the class named "1"
    if not fitted_on_strings(encoder) and not any(_is_integer_text(name) for name in by_name):
        with contextlib.suppress(ValueError):
            label = int(text)
            if not encoder.conditional or label in classes:  # sample() says an unconditional VAE draws no class
                return label
    known = f": this model's classes are {', '.join(by_name)}" if by_name else " (a label number)"
    raise _bad_option("--label", f"{text!r} names no class{known}")


@app.command()
@_user_errors
@_output_locked
def encode(
    data: DataOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Features file to write (.npy, .npz or .zarr).")],
    method: Annotated[Optional[Method], _choice(
        help="Encoding method (default: the saved model's; fisher when fitting one).")] = None,
    model: Annotated[Optional[Path], typer.Option(help="Saved model; without it, fit on the train split first.")] = None,
    split: Annotated[SplitName, _choice(help="Which split to encode.")] = SplitName.test,
    image_size: ImageSizeOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per chunk: the unit of encoding, writing and resuming.")] = 1024,
    jobs: Annotated[int, typer.Option(min=1, help="Fisher: threads encoding in parallel; with --dask, its workers (the VAE uses TensorFlow's threads).")] = 1,
    resume: Annotated[bool, typer.Option(help="Finish an interrupted run: keep its finished chunks.")] = False,
    dask: Annotated[bool, typer.Option("--dask", help="Encode on a local Dask cluster (--jobs workers).")] = False,
    scheduler: Annotated[Optional[str], typer.Option(help="Encode on the Dask cluster at tcp://HOST:PORT.")] = None,
    log_var: Annotated[Optional[bool], typer.Option(
        "--log-var/--no-log-var",
        help="VAE: write the posterior log-variances after the means (default: as the model was saved).")] = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
):
    """Encode a split of --data as float32 features, chunk by chunk.

    Writes OUTPUT (.npy, .npz or .zarr) and beside it STEM.labels.npy (for labelled images) and
    STEM.json (the model, source, split, class names, and an image folder's files row by row),
    STEM being OUTPUT without its suffix; without --model, also the fitted model as
    STEM.model.npz (with --model, the method is the file's). Until it is complete the output is OUTPUT.part with a
    manifest of finished chunks; an interrupted run finishes with --resume.
    """
    from .data import load_dataset
    from .extract import (check_scheduler_address, dask_client, extract_features, output_format, output_paths,
                          refuse_existing_outputs)
    from .persist import refuse_replacing_inputs, saved_method

    output_format(output)
    if scheduler is not None:
        check_scheduler_address(scheduler)
    elif dask and jobs > (cores := os.cpu_count() or 1):
        raise _bad_option("--jobs", f"{jobs} worker processes on {cores} cores would only compete for them: "
                                    f"at most {cores} with --dask (a cluster of more machines: --scheduler)")
    paths = output_paths(output)
    reuse_fitted = model is None and resume and paths["model"].exists() and paths["manifest"].exists()
    model = paths["model"] if reuse_fitted else model
    if method is None:
        method = Method(saved_method(model)) if model is not None else Method.fisher
    if log_var is not None and method != Method.vae:
        raise _bad_option("--log-var", "applies to --method vae only")
    if jobs > 1 and method == Method.vae and not dask:  # it would be ignored
        raise _bad_option("--jobs", "applies to Fisher encoding, or to --dask workers: the VAE encodes with "
                                    "TensorFlow's threads, all cores already")
    # Checked before loading or fitting anything, so a refusal costs nothing.
    written = [paths[key] for key in ("features", "labels", "sidecar")] + ([paths["model"]] if model is None else [])
    refuse_replacing_inputs(written, {"--data": data, "--model": model})
    refuse_existing_outputs(output, force=force, resume=resume)
    if model is None and paths["model"].exists() and not force:
        # A run that failed after fitting leaves its model; say how to use it, not only --force.
        raise OutputExistsError(f"{paths['model']} exists (fitted by an earlier run): pass --model "
                                f"{paths['model']} to encode with it, or --force to fit a new one")
    dataset = load_dataset(data, data_dir, lazy=True, image_size=image_size)
    # A remote scheduler is reached before any fitting, so that a wrong address fails in seconds,
    # not after the fit; a local cluster starts after it, so that its workers wait for no fit.
    with (dask_client(scheduler) if scheduler else contextlib.nullcontext()) as client:
        encoder, model, checksum, images, class_names = _encoder_and_images(
            dataset, split.value, model, method, data=data, output_model=paths["model"], seed=seed, force=force,
            quiet=quiet)
        if method == Method.fisher:
            encoder.set_params(n_jobs=jobs)
        elif log_var is not None:
            encoder.set_params(return_log_var=log_var)
        context, advance = _progress_bar(len(images), f"encoding {split.value}", quiet)
        local = dask_client(workers=jobs) if dask and client is None else contextlib.nullcontext(client)
        try:
            with local as client, context:
                sidecar = extract_features(
                    encoder, images, output, batch_size=batch_size, force=force, resume=resume, progress=advance,
                    client=client,
                    metadata={"method": method.value, "model": str(model), "model_checksum": checksum,
                              "source": dataset.name, "source_location": dataset.location, "split": split.value,
                              "resized_to": None if image_size is None else list(image_size),
                              **_class_names(class_names, images), **_file_names(images, dataset.location)},
                )
        except BaseException as exc:
            if not _is_interrupt(exc):
                raise
            typer.echo(f"fvae: interrupted; the finished chunks are kept in {paths['partial']}: "
                       "run the same command with --resume to finish", err=True)
            raise typer.Exit(130) from None
    speed = f" ({sidecar['images_per_second']:,.0f} img/s)" if sidecar["images_per_second"] else ""
    resumed = f", {sidecar['resumed_chunks']} chunks kept from the interrupted run" if sidecar["resumed_chunks"] else ""
    typer.echo(f"encoded {_counted(sidecar['n_images'], 'image')} -> {sidecar['shape'][1]:,} dims in "
               f"{sidecar['encode_seconds']:.1f} s{speed}{resumed}; wrote {output}")


def _encoder_and_images(dataset, split: str, model: Path | None, method: Method, *, data: str, output_model: Path,
                        seed: int, force: bool, quiet: bool):
    """The encoder for ``encode``: the saved ``model``, or one fitted on ``dataset``'s train split
    and saved as ``output_model``. Returns ``(encoder, model_path, checksum, images, class_names)``,
    ``images`` being the split to encode, its labels written as the model's classes."""
    import time

    from . import load
    from .data import image_sizes_differ
    from .evaluate import default_encoder
    from .extract import labelled_for

    images = dataset.split(split)
    if model is not None:
        encoder = load(model, method=method.value)
        images, class_names = labelled_for(encoder, images, dataset.class_names, dataset.name, str(model))
        return encoder, model, encoder.checksum_, images, class_names
    if dataset.train is None:
        raise DataError(f"{dataset.name} has no train split to fit a model on: fit one on its test images with "
                        f"'fvae fit {method.value} --data {data} --split test -o MODEL', then pass --model MODEL")
    train = dataset.split("train")
    if split == "test" and (differ := image_sizes_differ(train, images)):
        # refused before the fit, which would leave a model that cannot encode these images
        raise DataError(f"{dataset.name}: {differ}: a model fitted on the train split cannot encode the test "
                        f"split; fit one on the test images with 'fvae fit {method.value} --data {data} --split "
                        "test -o MODEL', then pass --model MODEL")
    started = time.perf_counter()
    encoder = default_encoder(method.value, seed=seed)
    if method == Method.vae:  # training shows its own epochs
        encoder.set_params(verbose=_training_verbosity(quiet))
    named = _default_fisher_fit_errors(data, "--model", fits=method == Method.fisher)
    with _status(f"fitting {method.value} on {len(train):,} train images", quiet or method == Method.vae), named:
        encoder.fit(train.images)
    checksum = encoder.save(output_model, force=force)
    typer.echo(f"fitted {method.value} on {len(train):,} train images in {time.perf_counter() - started:.1f} s; "
               f"wrote {output_model}")
    return encoder, output_model, checksum, images, dataset.class_names


def _file_names(split, location: str) -> dict:
    """The image files of an image-folder ``split`` for the sidecar, row by row, relative to the
    folder, so that each row can be traced to its file (a folder without classes has no labels)."""
    from .data import image_file_names

    names = image_file_names(split.images, location)
    return {} if names is None else {"files": names}


def _class_names(class_names, split) -> dict:
    """``class_names`` for the sidecar, when the split has labels: label i is ``class_names[i]``."""
    return {"class_names": list(class_names)} if split.labels is not None and class_names else {}


@app.command()
@_user_errors
def evaluate(
    data: Annotated[str, typer.Option("--data", "-d", help="Train source: mnist, mnist-5k, fashion-mnist, digits, or a path.")] = "mnist",
    test_data: Annotated[Optional[str], typer.Option(help="Separate test source (all of it, or its own test split); then every --data image trains.")] = None,
    image_size: ImageSizeOpt = None,
    methods: Annotated[str, typer.Option(help="Encodings to compare, comma-separated: fisher,vae,pca,raw.")] = "fisher,vae,pca,raw",
    fisher_model: Annotated[Optional[Path], typer.Option(help="Reuse this saved Fisher model instead of fitting.")] = None,
    vae_model: Annotated[Optional[Path], typer.Option(help="Reuse this saved VAE instead of training.")] = None,
    name: Annotated[Optional[str], typer.Option(
        callback=_folder_name, help="Run name: writes runs/NAME/ (default: the --data name).")] = None,
    runs_dir: Annotated[Path, typer.Option(help="Folder of the runs.")] = Path("runs"),
    quick: Annotated[bool, typer.Option(help="A few-minute run: short VAE training, fewer C values, one draw per label count.")] = False,
    vae_seconds: Annotated[Optional[float], typer.Option(callback=_number_in(1), help="VAE training budget in seconds, at least 1 (default 300 s, 60 s with --quick).")] = None,
    max_train: Annotated[int, typer.Option(min=2, help="Train images the probes are fitted on (stratified sample).")] = 10_000,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
):
    """Compare Fisher Vectors, VAE codes, PCA and raw pixels.

    Each encoding is scored on one split: classification, reconstruction and cost.

    Writes runs/NAME/report.json, report.md, figures/ and the models it fits (models/)."""
    from .evaluate import (Settings, evaluate as run_evaluation, given_models, load_splits, markdown_table,
                           parse_methods, run_name)
    from .persist import atomic_directory, output_lock, refuse_replacing_inputs
    from .report import write_run

    chosen = parse_methods(methods)
    given_models(chosen, fisher_model, vae_model)  # before the data loads: a wrong model file is refused at once
    run_dir = runs_dir / (run_name(data) if name is None else name)
    refuse_replacing_inputs([run_dir], {"--data": data, "--test-data": test_data, "--fisher-model": fisher_model,
                                        "--vae-model": vae_model},
                            otherwise="copy it out of the run first, or write this run under another --name")
    # refuses an existing run before any work
    with output_lock(run_dir), atomic_directory(run_dir, force=force, otherwise="--name to write another run beside it",
                                                what="an fvae run", marks=("report.json",)) as tmp:
        if quiet:
            logging.getLogger("fvae").setLevel(logging.WARNING)
        train, test, description = load_splits(data, test_data, data_dir, image_size=image_size)
        settings = Settings(methods=chosen, quick=quick, seed=seed, vae_seconds=vae_seconds, max_train=max_train)
        named = _default_fisher_fit_errors(data, "--fisher-model", fits="fisher" in chosen and fisher_model is None)
        with _named_as_options({"max_train": "--max-train"}), named:
            report, artifacts = run_evaluation(train, test, settings, fisher_model=fisher_model, vae_model=vae_model,
                                               models_dir=tmp / "models", data=description)
        report = write_run(report, artifacts, tmp, run_dir.name)
    typer.echo(markdown_table(report))
    fitted = [e["cost"]["model_path"] for e in report["encodings"].values()
              if e["cost"]["model_path"] and not e["cost"]["reused_model"]]
    typer.echo(f"evaluated {', '.join(chosen)} in {report['seconds']:.0f} s; wrote {run_dir}/report.json, "
               f"report.md, {len(report['figures'])} figures" + (f" and {', '.join(fitted)}" if fitted else ""))


#: What a value must be, for each refusal of typer's own type and range checks (``min=``, ``max=``),
#: keyed by pydantic's error type (typer runs the checks with pydantic): the words of
#: :func:`_number_in`, so that every refused number reads alike.
_MUST_BE = {"greater_than_equal": ">= {ge}", "greater_than": "> {gt}", "less_than_equal": "<= {le}",
            "less_than": "< {lt}", "int_parsing": "a whole number", "float_parsing": "a number"}


def _in_plain_words(exc: BaseException) -> None:
    """Reword a value typer's own checks refused: "must be >= 1, got 0" for pydantic's "Input should
    be greater than or equal to 1" (which leaves the value out), and a choice's "'nope' is not one
    of 'conv', 'mlp'" without pydantic's "Value error, " before it. Other errors are left as
    they are."""
    errors = getattr(exc.__cause__, "errors", None)
    try:
        error = errors()[0]
        if error["type"] == "value_error":
            exc.message = str(error["ctx"]["error"]).rstrip(".")
        elif error["type"] in _MUST_BE:
            exc.message = f"must be {_MUST_BE[error['type']].format(**error.get('ctx', {}))}, got {error['input']}"
    except (TypeError, LookupError):
        pass


#: Exit code of a command that SIGTERM ended (128 + 15), as a shell reports one that it killed
TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


class _Termination:
    """SIGTERM (kill, timeout, a batch system's time limit) ends a command as Ctrl-C does.

    Left to Python's default, it killed the process at once: an evaluation's hidden temporary
    run folder stayed behind, and a VAE's finished epochs were lost. Handled as SIGINT is,
    through whatever handler SIGINT has then (Python's, or fit's one that waits for the end of
    the training step), the command cleans up, keeps what Ctrl-C keeps, and says so.
    """

    def __init__(self):
        self.received = False

    @contextlib.contextmanager
    def handled(self):
        """Handle SIGTERM in the block, unless it was ignored (by a parent that chose so) or handled
        already (by a program that called :func:`run`); then the handler before is put back."""
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            yield self
            return
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _on_sigterm(self, signum, frame):
        self.received = True
        on_sigint = signal.getsignal(signal.SIGINT)
        if not callable(on_sigint):  # SIGINT ignored (a background job) or left to the system
            raise KeyboardInterrupt
        on_sigint(signal.SIGINT, frame)

    def exit_code(self, code: int) -> int:
        """The exit code to leave with: an interrupt's 130 is SIGTERM's 143 when SIGTERM caused it."""
        return TERMINATED_EXIT_CODE if self.received and code == 130 else code


def run() -> None:
    """Console entry point: like ``app()``, but usage errors are one line too (exit code 2), and
    SIGTERM ends a command as Ctrl-C does (exit code 143)."""
    with _Termination().handled() as termination:
        code = _run_app()
    sys.exit(termination.exit_code(code))


def _run_app() -> int:
    """Run the app; its exit code, with usage errors, interrupts while parsing and failed writes
    of --help said in one line."""
    try:  # typer >= 0.24 vendors click; older releases depend on it
        from typer._click.exceptions import UsageError
    except ImportError:
        from click import UsageError
    try:
        code = app(standalone_mode=False)
    except UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx and exc.ctx.parent else ""
        _in_plain_words(exc)
        typer.echo(f"fvae: error: {exc.format_message()}{hint}", err=True)
        code = 2
    except (typer.Abort, KeyboardInterrupt):  # while parsing, before a command runs
        typer.echo("fvae: interrupted", err=True)
        code = 130
    except OSError as exc:  # --help or --version written to a full disk (a closed pipe click handles)
        typer.echo(f"fvae: error: cannot write the output: {exc.strerror or exc}", err=True)
        code = 2
    return code if isinstance(code, int) else 0
