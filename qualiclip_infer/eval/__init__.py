"""Evaluation against human opinion scores: MOS file readers, saved scores, metrics with confidence intervals,
the ``qualiclip-eval`` command (``python -m qualiclip_infer.eval``).

Example::

    from qualiclip_infer.eval import evaluate, read_mos

    table = read_mos("kadid10k/dmos.csv")                     # layout recognised by the file name
    result = evaluate(table, scorer_options={"device": "cuda"}, cache_dir="eval-out")
    print(result.table())                                       # markdown, 95% intervals in brackets
    result.report["models"][0]["metrics"]["srcc"]               # {"value": ..., "ci": [low, high]}
"""

from .evaluate import Evaluation, EvaluationError, ModelSpec, evaluate, markdown_table, scores_file_name
from ..mos import DATASETS, LAYOUTS, Excluded, Layout, MosFileError, MosTable, guess_dataset, read_mos
from .plot import MissingExtraError
from .scores import SCORE_COLUMNS, SavedScore, ScoresFileError, read_scores

__all__ = [
    "DATASETS", "LAYOUTS", "SCORE_COLUMNS", "Evaluation", "EvaluationError", "Excluded", "Layout", "MissingExtraError",
    "ModelSpec", "MosFileError", "MosTable", "SavedScore", "ScoresFileError", "evaluate", "guess_dataset",
    "markdown_table", "read_mos", "read_scores", "scores_file_name",
]
