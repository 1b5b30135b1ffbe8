"""Former home of :mod:`qualiclip_infer.mos` (the MOS file reader, shared with ``qualiclip-train --val-csv``)."""

from ..mos import (DATASETS, EXAMPLES, GENERIC, LAYOUTS, Excluded, Layout, MosFileError,  # noqa: F401
                   MosTable, guess_dataset, read_mos)
