"""Scoring on a Ray cluster: :func:`score_dataset` turns paths, URIs, tar shards, Parquet files or a Ray Dataset into
a Dataset of score rows.

Each Ray actor (:mod:`~qualiclip_infer.ray_actors`) loads the model once and scores what it is handed with the same
engine as ``QualityScorer.score`` and ``qualiclip-score``, at native resolution, so a cluster gives the rows one
machine gives: ``path, score, width, height, error``, and for shards and Parquet files their extra columns. Images
travel as paths (read where the actor runs; local paths must then be visible on every node), as whole shard and
Parquet files streamed by one actor each, or as encoded bytes, never as decoded or resized pixels.

Ray and pyarrow are imported only when needed: without the ``ray`` extra this module still imports, and
:func:`require_ray` names the extra to install.
"""

from __future__ import annotations

import math
import os
import re
from typing import (TYPE_CHECKING, Any, Callable, Collection, Dict, FrozenSet, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple, Union)

from .constants import available_cpus
from .extras import require
from .files import InputNotFoundError
from .messages import first_line
from .ray_actors import BatchScorer, SourceScorer, work_unit
from .results import ScoreResult, from_values
from .sources.entries import SOURCE_SEPARATOR
from .sources.parquet import row_group_count
from .sources.patterns import SourcePlan, plan_sources
from .uris import find_inputs, open_input

if TYPE_CHECKING:
    import ray.data

# Rows handed to an actor at a time: few enough that every actor gets several of them (load balance, and rows
# stream out while the run goes on), many enough that each call amortises Ray's per-task cost (milliseconds).
_MAX_ROWS_PER_CALL = 256
_CALLS_PER_ACTOR = 4
# Each shard or Parquet file is a block of its own, up to this many (Ray Data's bookkeeping grows with the blocks).
_MAX_BLOCKS = 10_000
# RN50 on the CPU costs less CPU time per image with two torch threads than with one (0.058 against 0.081 CPU-seconds
# per 224x224 image on 2 EPYC cores: benchmarks/RESULTS.md), and every actor holds its own model copy (about 1 GB),
# so CPU actors get several CPUs each by default. More than 2 threads per actor were not measured.
MAX_DEFAULT_CPUS_PER_ACTOR = 4


def require_ray(feature: str = "Scoring on Ray") -> Any:
    """Imports Ray Data and pyarrow, or raises a one-line :class:`~qualiclip_infer.extras.MissingExtraError`.

    Returns:
        The ``ray`` module, with ``ray.data`` imported.
    """
    for module in ("pyarrow", "ray.data", "ray"):
        ray = require(module, "ray", feature, needs="Ray Data and pyarrow")
    return ray


def score_dataset(
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], SourcePlan, "ray.data.Dataset"],
    *,
    weights: Union[str, os.PathLike, None] = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: Optional[int] = None,
    concurrency: Union[int, Tuple[int, int], None] = None,
    num_gpus: float = 0,
    num_cpus: Optional[float] = None,
    threads: Optional[int] = None,
    workers: Optional[int] = None,
    recursive: bool = True,
    hidden: bool = False,
    image_col: Optional[str] = None,
    id_cols: Optional[Sequence[str]] = None,
    skip: Collection[str] = (),
    path_column: str = "path",
    bytes_column: Optional[str] = None,
    keep_columns: Sequence[str] = (),
    rows_per_call: Optional[int] = None,
    **scorer_options: Any,
) -> "ray.data.Dataset":
    """Scores images on a Ray cluster; returns a (lazy) Dataset with one row per image.

    Rows are ``path`` (str), ``score`` (float, null when not scored), ``width``, ``height`` (int, null when even
    the header could not be read) and ``error`` (one line, ``""`` when scored), as ``qualiclip-score`` writes them;
    images from tar shards and Parquet files add their ``key`` and id columns, as text (docs/datasets.md). An input
    that cannot be read or scored gets an error row; it never fails a task. Row order is not preserved (Ray Data's
    default); the path says which input a row belongs to.

    Each actor loads the model once, from its node's Hugging Face cache or a path every node can read (see
    docs/scale.md, "Weights on every node", for pre-populating it). Ray starts a local cluster on first use unless
    ``ray.init`` connected to one.

    Args:
        source: An image file, folder, glob pattern or URI (``s3://bucket/prefix``, ``gs://...``: any filesystem
            pyarrow has), a WebDataset tar shard or Parquet file of encoded images (or a brace pattern of them,
            ``shards/{00000..00099}.tar``), or a list of these, expanded like ``qualiclip-score`` does: each actor
            streams whole shards and Parquet files, giving the rows a local run gives. Or a
            ``ray.data.Dataset`` with a ``path_column`` of paths/URIs, or of names when it also has a
            ``bytes_column`` of encoded image files (``ray.data.read_binary_files(..., include_paths=True)``:
            columns ``path`` and ``bytes``; ``ray.data.read_webdataset(..., decoder=None)``: ``__key__`` and
            ``jpg``; ``ray.data.read_parquet``: an id column and ``jpg``, or Hugging Face's ``image`` struct).
            Local paths are read by the actors, so on a cluster they must be on a filesystem every node mounts.
        weights: Checkpoint path (readable by every node), ``hf-hub:ORG/REPO/FILE``, or ``None`` for the model's
            published weights.
        device: Each actor's device: ``auto`` picks the GPU Ray assigned it (``num_gpus > 0``), else the CPU.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        batch_size: Most images per forward pass (equal sizes only); default ``QualityScorer``'s.
        concurrency: Actors: a fixed number, or ``(min, max)`` for an autoscaling pool; default Ray's (one up to
            what the cluster's resources allow).
        num_gpus: GPUs per actor; a fraction packs several actors onto one GPU (``0.25``: four).
        num_cpus: CPUs reserved per actor (and torch threads, unless ``threads`` is given). Default for CPU
            actors: the CPUs of the smallest node, at most :data:`MAX_DEFAULT_CPUS_PER_ACTOR` (fewer actors with more
            threads each: see docs/scale.md, "On one machine"), one fewer for a Dataset source (its read tasks
            need a CPU too); for GPU actors: 1.
        threads: torch CPU threads per actor; default ``num_cpus`` rounded up.
        workers: Image decoding threads per actor; default the engine's.
        recursive: Search folders recursively.
        hidden: Include names starting with ``.`` found in folders.
        image_col: The Parquet files' image column (default: the first binary one among ``jpg``, ``png``, ``webp``,
            ``image``, ``bytes``).
        id_cols: Parquet columns carried into the rows (default: ``key`` when present, else the row number).
        skip: Row names (paths, ``SHARD::MEMBER``, ``FILE::ROW``) already scored, not to score again: how
            ``qualiclip-score --ray --resume`` goes on.
        path_column: For a Dataset source: the column of paths (or names, with ``bytes_column``).
        bytes_column: For a Dataset source: a column of encoded image files; default ``bytes`` when the Dataset
            has one.
        keep_columns: For a Dataset source: columns carried into the rows unchanged (``__url__``, ``key``...).
        rows_per_call: Images handed to an actor per call; default: a few calls per actor, at most 256.
        **scorer_options: Any other :class:`~qualiclip_infer.QualityScorer` argument, the same for every actor:
            ``model``, ``prompt_weights``, ``prompts``, ``logit_scale``, ``max_image_pixels``, ``revision``...;
            ``local_files_only=True`` keeps every actor off the network (the weights must be a file or already in
            each node's cache).

    Returns:
        A ``ray.data.Dataset``; nothing runs until it is consumed (``iter_rows``, ``write_parquet``...).

    Raises:
        ImportError: Ray Data or pyarrow is not installed (the message names the extra).
        InputNotFoundError: A path is neither a file, a folder, a glob pattern nor an existing URI, or no image
            was found.
        ValueError: A Dataset without the named columns, a Parquet file without its image or id columns, or bad
            resource numbers.
    """
    ray = require_ray("score_dataset")

    reads = isinstance(source, ray.data.Dataset)
    cpus = _default_cpus(ray, num_gpus, reads) if num_cpus is None else float(num_cpus)
    if cpus < 0 or num_gpus < 0:
        raise ValueError(f"num_cpus and num_gpus must not be negative, got {num_cpus} and {num_gpus}")
    pool = ray.data.ActorPoolStrategy(**_pool_size(concurrency))
    layout = _Layout(rows_per_call, _max_actors(ray, concurrency, cpus, num_gpus), frozenset(skip))
    if isinstance(source, ray.data.Dataset):
        work = _dataset_work(source, path_column, bytes_column, keep_columns, layout)
    else:
        plan = source if isinstance(source, SourcePlan) else _plan(source, recursive, hidden, image_col, id_cols)
        work = _image_work(ray, plan, path_column, layout) if plan.is_images() else _source_work(ray, plan, layout)
    options = dict(scorer_options, weights=weights, device=device, precision=precision, batch_size=batch_size)
    for key in ("weights", "prompt_weights"):
        if isinstance(options.get(key), (str, os.PathLike)) and os.path.exists(options[key]):
            options[key] = os.path.abspath(options[key])  # actors may run in another working directory
    return work.dataset.map_batches(
        work.scorer,
        fn_constructor_kwargs=dict(
            work.options, scorer_options={key: value for key, value in options.items() if value is not None},
            threads=threads or max(1, math.ceil(cpus)), workers=workers, base_dir=os.getcwd()),
        batch_size=work.per_call,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=pool,
        num_cpus=cpus,
        num_gpus=num_gpus or None,
    )


class _Layout(NamedTuple):
    """How the inputs are cut into calls: the rows asked for per call, the actors there may be, the names to skip."""

    rows_per_call: Optional[int]
    max_actors: int
    skip: FrozenSet[str]

    def images_per_call(self, images: int) -> int:
        """A few calls per actor, at most :data:`_MAX_ROWS_PER_CALL` images each (unless asked otherwise)."""
        return self.rows_per_call or max(1, min(_MAX_ROWS_PER_CALL,
                                                math.ceil(images / (_CALLS_PER_ACTOR * self.max_actors))))


class _Work(NamedTuple):
    """What :func:`score_dataset` maps: the input Dataset, the actor's class and its options, rows per call."""

    dataset: "ray.data.Dataset"
    scorer: type
    options: Dict[str, Any]
    per_call: int


def _plan(source: Any, recursive: bool, hidden: bool, image_col: Optional[str],
          id_cols: Optional[Sequence[str]]) -> SourcePlan:
    """The inputs that paths, URIs and patterns name: shards, Parquet files and images, or images only."""
    sources = [os.fspath(source)] if isinstance(source, (str, os.PathLike)) else [os.fspath(s) for s in source]
    plan = plan_sources(sources, recursive=recursive, hidden=hidden, image_col=image_col, id_cols=id_cols)
    if plan is None:
        paths = find_inputs(sources, recursive=recursive, hidden=hidden)
        if not paths:
            raise InputNotFoundError(f"no images found in {' '.join(sources)}")
        plan = SourcePlan([("image", path) for path in paths])
    return plan


def _dataset_work(dataset: "ray.data.Dataset", path_column: str, bytes_column: Optional[str],
                  keep_columns: Sequence[str], layout: _Layout) -> _Work:
    names = dataset.schema().names
    if bytes_column is None and "bytes" in names:
        bytes_column = "bytes"
    for option, column in [("path_column", path_column), ("bytes_column", bytes_column),
                           *(("keep_columns", column) for column in keep_columns)]:
        if column is not None and column not in names:
            raise ValueError(f"the source Dataset has no {column!r} column ({option}; columns: {', '.join(names)})")
    options = dict(path_column=path_column, bytes_column=bytes_column, keep_columns=tuple(keep_columns))
    return _Work(dataset, BatchScorer, options, layout.rows_per_call or _MAX_ROWS_PER_CALL // 4)


def _image_work(ray: Any, plan: SourcePlan, path_column: str, layout: _Layout) -> _Work:
    paths = [path for _, path in plan.inputs if path not in layout.skip]
    per_call = layout.images_per_call(len(paths))
    # One block per call: each block goes to one actor, so the blocks spread the work.
    dataset = ray.data.from_items([{path_column: path} for path in paths],
                                  override_num_blocks=max(1, math.ceil(len(paths) / per_call)))
    return _Work(dataset, BatchScorer, dict(path_column=path_column, bytes_column=None), per_call)


def _source_work(ray: Any, plan: SourcePlan, layout: _Layout) -> _Work:
    """Each shard and Parquet file one unit, read whole by one actor (a Parquet file cut into parts of whole row
    groups when there are too few files to give every actor several); images between them in runs, as for folders."""
    skipped: Dict[str, List[str]] = {}
    for name in layout.skip:
        skipped.setdefault(name.split(SOURCE_SEPARATOR, 1)[0], []).append(name)
    images = sum(kind == "image" for kind, _ in plan.inputs)
    per_call = layout.images_per_call(images)
    files = len(plan.inputs) - images
    parts_per_file = math.ceil(_CALLS_PER_ACTOR * layout.max_actors / files) if files else 1
    units: List[str] = []
    run: List[str] = []
    for kind, path in plan.inputs:
        if kind == "image":
            if path not in layout.skip:
                run.append(path)
            if len(run) == per_call:
                units.append(work_unit("image", run))
                run = []
        elif kind == "parquet" and parts_per_file > 1:
            units += [work_unit(kind, [path], skipped.get(path, ()), groups)
                      for groups in _row_group_parts(path, parts_per_file)]
        else:
            units.append(work_unit(kind, [path], skipped.get(path, ())))
    if run:
        units.append(work_unit("image", run))
    dataset = ray.data.from_items([{"unit": unit} for unit in units],
                                  override_num_blocks=max(1, min(len(units), _MAX_BLOCKS)))
    options = dict(extra_columns=plan.extra_columns(), image_col=plan.image_col, id_cols=plan.id_cols)
    return _Work(dataset, SourceScorer, options, 1)


def _row_group_parts(path: str, parts: int) -> List[Optional[Tuple[int, int]]]:
    """``(first, stop)`` row-group ranges cutting a Parquet file into up to ``parts`` parts of near-equal numbers of
    groups; ``[None]`` (the whole file) for a file whose footer cannot be read (its actor reports why)."""
    groups = row_group_count(path, open_input)
    if not groups or groups < 2:
        return [None]
    parts = min(parts, groups)
    bounds = [round(groups * part / parts) for part in range(parts + 1)]
    return [(first, stop) for first, stop in zip(bounds, bounds[1:])]


def _default_cpus(ray: Any, gpus: float, reads: bool) -> float:
    """CPUs per actor when not given; ``reads``: the source Dataset has read tasks of its own, which need a CPU
    beside the actors (an actor holding every CPU of a node would wait for them for ever)."""
    if gpus:
        return 1.0
    if ray.is_initialized():
        node_cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        smallest = min((cpus for cpus in node_cpus if cpus > 0), default=1)
    else:  # Ray Data will start a local cluster with this machine's CPUs
        smallest = available_cpus()
    return float(max(1, min(MAX_DEFAULT_CPUS_PER_ACTOR, int(smallest) - (reads and smallest > 1))))


def _pool_size(concurrency: Union[int, Tuple[int, int], None]) -> Dict[str, Optional[int]]:
    if concurrency is None:
        return dict(min_size=1, max_size=None)
    if isinstance(concurrency, int):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        return dict(size=concurrency)
    low, high = concurrency
    if not 1 <= low <= high:
        raise ValueError(f"concurrency (min, max) needs 1 <= min <= max, got {concurrency}")
    return dict(min_size=low, max_size=high)


def _max_actors(ray: Any, concurrency: Union[int, Tuple[int, int], None], cpus: float, gpus: float) -> int:
    """How many actors may run at once, to cut the inputs into enough calls."""
    if isinstance(concurrency, int):
        return max(1, concurrency)
    if isinstance(concurrency, tuple):
        return max(1, concurrency[1])
    resources = ray.cluster_resources() if ray.is_initialized() else {"CPU": available_cpus()}
    fits = [resources.get(kind, 0) / need for kind, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
    return max(1, int(min(fits))) if fits else 1


def connect(address: Optional[str] = None, *, quiet: bool = False) -> bool:
    """Connects to a Ray cluster, or starts a local one, unless this process is already connected.

    Args:
        address: ``None`` or ``local`` for a new local cluster on this machine, ``auto`` for the running cluster
            this machine belongs to, ``ray://HOST:PORT`` for Ray Client, or ``HOST:PORT`` of a head node.
        quiet: Only warnings from Ray, and no progress bars.

    Returns:
        Whether this call connected (so the caller owns the connection and should ``ray.shutdown()`` it), rather
        than finding the process already connected.
    """
    ray = require_ray()
    import logging

    if quiet:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for name in ("ray", "ray.data"):  # Ray Data sets its own logger's level
            logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    address = address or "local"
    options = dict(include_dashboard=False) if address == "local" else {}
    ray.init(address=address, logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet,
             **options)
    return True


def ray_error_cause(error: BaseException) -> str:
    """The one-line cause of a failed Ray job: the last line of the remote traceback, without the exception's type.

    Ray reports an exception raised in an actor (say, weights missing on a node) as its own error type whose
    message holds the remote traceback; the cause is its last line, ``module.ErrorType: message``.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    cause = re.sub(r"^\x1b\[[0-9;]*m|\x1b\[[0-9;]*m", "", lines[-1])
    match = re.match(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception)): (.+)$", cause)
    return match[2] if match else cause


class RayJobError(RuntimeError):
    """A Ray job that failed as a whole (a cluster that cannot be reached, an actor that cannot load the model)."""


def ray_rows(source: Union[Sequence[str], SourcePlan], address: str, *, quiet: bool = False,
             **options: Any) -> Iterator[ScoreResult]:
    """Scores images, or the shards and Parquet files of a plan, on Ray and yields their rows as the actors finish
    them (in no particular order): the rows a local run gives, extra columns (``key``, id columns) included.

    The connection this call makes is shut down as soon as the rows are done (0.5-0.7 s sooner than Ray's exit
    handlers, benchmarks/RESULTS.md); a connection the caller already had is left open.

    Args:
        source: Paths or URIs of images, or a :class:`~qualiclip_infer.sources.SourcePlan`.
        address: ``local``, ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (see :func:`connect`).
        quiet: Only warnings from Ray, and no progress bars.
        options: Keyword arguments of :func:`score_dataset` (``skip`` included).

    Raises:
        RayJobError: The job failed as a whole; the message is its one-line cause.
    """
    if isinstance(source, SourcePlan):
        plan = source
    else:
        plan = SourcePlan([("image", path) for path in source if path not in options.get("skip", ())])
    if not plan.inputs:  # nothing left to score: no need to start a cluster
        return
    connected = False
    try:
        restorers = {column: _restorer(kind) for column, kind in plan.extra_column_types().items()}
        connected = connect(None if address == "local" else address, quiet=quiet)
        dataset = score_dataset(plan, **options)
        index = 0
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for values in batch.to_pylist():
                yield from_values(values, index, restorers)
                index += 1
    except (ImportError, ValueError, ConnectionError) as error:
        raise RayJobError(first_line(error)) from error
    except Exception as error:
        if type(error).__module__.split(".")[0] != "ray":
            raise
        raise RayJobError(f"the Ray job failed: {ray_error_cause(error)}") from error
    finally:
        if connected:
            import ray

            ray.shutdown()


def _restorer(arrow_type: Any) -> Callable[[str], Any]:
    """What turns an extra column's text (as :func:`~qualiclip_infer.parquet_rows.parquet_values` writes it) back
    into the value of a local run: the Parquet column's integers, floats and booleans; text stays text, as does a
    value that does not read as the first file's type (a later file whose column has another type)."""
    import pyarrow as pa

    if arrow_type is None:
        return str
    if pa.types.is_integer(arrow_type):
        convert: Callable[[str], Any] = int
    elif pa.types.is_floating(arrow_type):
        convert = float
    elif pa.types.is_boolean(arrow_type):
        convert = {"True": True, "False": False}.__getitem__
    else:
        return str

    def restore(text: str) -> Any:
        try:
            return convert(text)
        except (ValueError, KeyError):
            return text

    return restore


def parse_actors(text: str) -> Union[int, Tuple[int, int]]:
    """Parses ``N`` or ``MIN-MAX`` for ``--actors``.

    Raises:
        ValueError: Not a positive integer or a range ``1 <= MIN <= MAX``.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < int(match[1])):
        raise ValueError(f"expected N or MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return int(match[1]) if match[2] is None else (int(match[1]), int(match[2]))


def is_ray_address(text: str) -> bool:
    """Whether ``text`` reads as a Ray address (``local``, ``auto``, ``ray://...``, ``HOST:PORT``), not a path."""
    return text in ("local", "auto") or text.startswith("ray://") or re.fullmatch(r"[\w.-]+:\d+", text) is not None
