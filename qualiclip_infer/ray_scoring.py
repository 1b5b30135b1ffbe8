"""Scoring on a Ray cluster: :func:`score_dataset` turns paths, URIs or a Ray Dataset into a Dataset of score rows.

Each Ray actor loads the model once and scores the images of the batches it is handed with the same engine as
``QualityScorer.score`` and ``qualiclip-score``, at native resolution, so a cluster gives the rows one machine gives:
``path, score, width, height, error``. Images travel as paths (read where the actor runs; local paths must then be
visible on every node) or as encoded bytes, never as decoded or resized pixels.

Ray and pyarrow are imported only when needed: without the ``ray`` extra this module still imports, and
:func:`require_ray` names the extra to install.
"""

from __future__ import annotations

import math
import os
import re
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .constants import available_cpus
from .extras import require
from .files import InputNotFoundError
from .hub import go_offline
from .messages import first_line
from .parquet_rows import row_schema
from .results import ScoreResult, from_values, row_values
from .uris import InputOpener, find_inputs, is_uri

if TYPE_CHECKING:
    import pyarrow
    import ray.data
# Rows handed to an actor at a time: few enough that every actor gets several of them (load balance, and rows
# stream out while the run goes on), many enough that each call amortises Ray's per-task cost (milliseconds).
_MAX_ROWS_PER_CALL = 256
_CALLS_PER_ACTOR = 4
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
    source: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], "ray.data.Dataset"],
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
    path_column: str = "path",
    bytes_column: Optional[str] = None,
    rows_per_call: Optional[int] = None,
    **scorer_options: Any,
) -> "ray.data.Dataset":
    """Scores images on a Ray cluster; returns a (lazy) Dataset with one row per input.

    Rows are ``path`` (str), ``score`` (float, null when not scored), ``width``, ``height`` (int, null when even
    the header could not be read) and ``error`` (one line, ``""`` when scored), as ``qualiclip-score`` writes them.
    An input that cannot be read or scored gets an error row; it never fails a task. Row order is not preserved
    (Ray Data's default); the path says which input a row belongs to.

    Each actor loads the model once, from its node's Hugging Face cache or a path every node can read (see
    docs/scale.md, "Weights on every node", for pre-populating it). Ray starts a local cluster on first use unless
    ``ray.init`` connected to one.

    Args:
        source: An image file, folder, glob pattern or URI (``s3://bucket/prefix``, ``gs://...``: any filesystem
            pyarrow has), or a list of them, expanded like ``qualiclip-score`` does; or a ``ray.data.Dataset`` with
            a ``path_column`` of paths/URIs, or of names when it also has a ``bytes_column`` of encoded image files
            (as ``ray.data.read_binary_files(..., include_paths=True)`` gives: columns ``path`` and ``bytes``).
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
            threads each: see docs/scale.md, "On one machine"); for GPU actors: 1.
        threads: torch CPU threads per actor; default ``num_cpus`` rounded up.
        workers: Image decoding threads per actor; default the engine's.
        recursive: Search folders recursively.
        hidden: Include names starting with ``.`` found in folders.
        path_column: For a Dataset source: the column of paths (or names, with ``bytes_column``).
        bytes_column: For a Dataset source: a column of encoded image files; default ``bytes`` when the Dataset
            has one.
        rows_per_call: Rows handed to an actor per call; default: a few calls per actor, at most 256.
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
        ValueError: A Dataset without the named columns, or bad resource numbers.
    """
    ray = require_ray("score_dataset")

    cpus = _default_cpus(ray, num_gpus) if num_cpus is None else float(num_cpus)
    if cpus < 0 or num_gpus < 0:
        raise ValueError(f"num_cpus and num_gpus must not be negative, got {num_cpus} and {num_gpus}")
    pool = ray.data.ActorPoolStrategy(**_pool_size(concurrency))
    max_actors = _max_actors(ray, concurrency, cpus, num_gpus)
    dataset, bytes_column, per_call = _input_dataset(ray, source, path_column, bytes_column, rows_per_call,
                                                     recursive=recursive, hidden=hidden, max_actors=max_actors)
    options = dict(scorer_options, weights=weights, device=device, precision=precision, batch_size=batch_size)
    for key in ("weights", "prompt_weights"):
        if isinstance(options.get(key), (str, os.PathLike)) and os.path.exists(options[key]):
            options[key] = os.path.abspath(options[key])  # actors may run in another working directory
    return dataset.map_batches(
        BatchScorer,
        fn_constructor_kwargs=dict(
            scorer_options={key: value for key, value in options.items() if value is not None},
            threads=threads or max(1, math.ceil(cpus)), workers=workers, base_dir=os.getcwd(),
            path_column=path_column, bytes_column=bytes_column),
        batch_size=per_call,
        batch_format="pyarrow",
        zero_copy_batch=True,
        compute=pool,
        num_cpus=cpus,
        num_gpus=num_gpus or None,
    )


def _input_dataset(ray: Any, source: Any, path_column: str, bytes_column: Optional[str],
                   rows_per_call: Optional[int], *, recursive: bool, hidden: bool,
                   max_actors: int) -> Tuple["ray.data.Dataset", Optional[str], int]:
    """The Dataset of inputs, its bytes column (if any) and the rows per actor call, for :func:`score_dataset`."""
    if isinstance(source, ray.data.Dataset):
        dataset = source
        names = dataset.schema().names
        if path_column not in names:
            raise ValueError(f"the source Dataset has no {path_column!r} column (columns: {', '.join(names)})")
        if bytes_column is None and "bytes" in names:
            bytes_column = "bytes"
        if bytes_column is not None and bytes_column not in names:
            raise ValueError(f"the source Dataset has no {bytes_column!r} column (columns: {', '.join(names)})")
        per_call = rows_per_call or _MAX_ROWS_PER_CALL // 4
    else:
        sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
        paths = find_inputs([os.fspath(path) for path in sources], recursive=recursive, hidden=hidden)
        if not paths:
            raise InputNotFoundError(f"no images found in {' '.join(map(os.fspath, sources))}")
        per_call = rows_per_call or max(1, min(_MAX_ROWS_PER_CALL, math.ceil(len(paths) / (_CALLS_PER_ACTOR
                                                                                         * max_actors))))
        # One block per call: each block goes to one actor, so the blocks spread the work.
        dataset = ray.data.from_items([{path_column: path} for path in paths],
                                      override_num_blocks=max(1, math.ceil(len(paths) / per_call)))
        bytes_column = None
    return dataset, bytes_column, per_call


def _default_cpus(ray: Any, gpus: float) -> float:
    if gpus:
        return 1.0
    if ray.is_initialized():
        node_cpus = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
        smallest = min((cpus for cpus in node_cpus if cpus > 0), default=1)
    else:  # Ray Data will start a local cluster with this machine's CPUs
        smallest = available_cpus()
    return float(max(1, min(MAX_DEFAULT_CPUS_PER_ACTOR, int(smallest))))


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


class BatchScorer:
    """The Ray actor's callable: loads a :class:`~qualiclip_infer.QualityScorer` once, then scores batches.

    A batch is a pyarrow table with a path column (and optionally a bytes column); the result is a table of
    :data:`~qualiclip_infer.results.COLUMNS` with one row per input row. Inputs that cannot be read or scored become error rows.

    Args:
        scorer_options: Keyword arguments of ``QualityScorer``.
        threads: torch CPU threads.
        workers: Decoding threads of the engine.
        base_dir: The driver's working directory, where relative paths are found (actors may run elsewhere).
        path_column: Column of paths, or of names when ``bytes_column`` is given.
        bytes_column: Column of encoded image files, or ``None`` to read the paths.
    """

    def __init__(self, scorer_options: Dict[str, Any], *, threads: int, workers: Optional[int], base_dir: str,
                 path_column: str, bytes_column: Optional[str]):
        if scorer_options.get("local_files_only"):
            go_offline()  # before huggingface_hub is imported in this worker
        import torch

        from .scorer import QualityScorer

        torch.set_num_threads(threads)
        self.scorer = QualityScorer(**scorer_options)
        self.workers = workers
        self.base_dir = base_dir
        self.path_column = path_column
        self.bytes_column = bytes_column
        self._opener = InputOpener(base_dir)

    def __call__(self, batch: "pyarrow.Table") -> "pyarrow.Table":
        import pyarrow as pa

        names = [str(name) for name in batch.column(self.path_column).to_pylist()]
        if self.bytes_column is not None:
            inputs: List[Any] = batch.column(self.bytes_column).to_pylist()
            errors = ["no image bytes" if data is None else "" for data in inputs]
        else:
            inputs, errors = zip(*(self._locate(name) for name in names)) if names else ((), ())
        rows = [row_values(ScoreResult(index, name, error=error))
                for index, (name, error) in enumerate(zip(names, errors))]
        todo = [index for index, error in enumerate(errors) if not error]
        for index, result in zip(todo, self._score([inputs[i] for i in todo], [names[i] for i in todo])):
            rows[index] = row_values(result)
        return pa.Table.from_pylist(rows, schema=row_schema())

    def _locate(self, name: str) -> Tuple[Any, str]:
        """What the engine reads for a path: a local path, or a URI's bytes; or the error that stops it."""
        if not is_uri(name):
            return os.path.join(self.base_dir, name), ""
        try:
            return self._opener.read(name), ""
        except Exception as error:  # missing object, permissions, network: an error row, never a failed task
            return None, f"cannot read: {first_line(error)}"

    def _score(self, inputs: List[Any], names: List[str]) -> Iterator[ScoreResult]:
        return self.scorer.iter_scores(inputs, names=names, workers=self.workers)


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
    ray.init(address=address, logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=not quiet,
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


def ray_rows(paths: Sequence[str], address: str, *, quiet: bool = False, **options: Any) -> Iterator[ScoreResult]:
    """Scores ``paths`` on Ray and yields their rows as the actors finish them (in no particular order).

    The connection this call makes is shut down as soon as the rows are done (0.5-0.7 s sooner than Ray's exit
    handlers, benchmarks/RESULTS.md); a connection the caller already had is left open.

    Args:
        paths: Paths or URIs to score.
        address: ``local``, ``auto``, ``ray://HOST:PORT`` or ``HOST:PORT`` (see :func:`connect`).
        quiet: Only warnings from Ray, and no progress bars.
        options: Keyword arguments of :func:`score_dataset`.

    Raises:
        RayJobError: The job failed as a whole; the message is its one-line cause.
    """
    if not paths:  # nothing left to score: no need to start a cluster
        return
    connected = False
    try:
        connected = connect(None if address == "local" else address, quiet=quiet)
        dataset = score_dataset(paths, **options)
        index = 0
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for values in batch.to_pylist():
                yield from_values(values, index)
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
