"""Images where they lie: WebDataset tar shards, Parquet files of encoded images and Hugging Face datasets.

A source yields :class:`~qualiclip_infer.sources.entries.Entry` objects (a name, the encoded bytes, extra columns
such as the WebDataset ``key``, or an error) that the engine scores exactly as it scores the same images as files.
Nothing here imports torch, pyarrow or ``datasets`` until it needs them.
"""

from .entries import Entry, SourceError, SourceResult, score_entries
from .hf import add_dataset_scores, iter_dataset_scores
from .patterns import SourcePlan, expand_braces, plan_sources

__all__ = ["Entry", "SourceResult", "score_entries", "add_dataset_scores", "iter_dataset_scores", "SourceError",
           "SourcePlan", "expand_braces", "plan_sources"]
