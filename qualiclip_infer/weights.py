"""The weights module of qualiclip-infer 0.1, kept so that code importing from it keeps working: the Hub side now lives in
:mod:`qualiclip_infer.hub`, reading and writing checkpoints in :mod:`qualiclip_infer.checkpoint`.
"""

from .checkpoint import (CLIP_PREFIX, PROMPT_FEATURES_KEY, Checkpoint, CheckpointError, describe_content,  # noqa: F401
                         file_sha256, load_checkpoint, read_tensor_file, save_checkpoint)
from .hub import (DEFAULT_FILENAME, DEFAULT_REPO_ID, HUB_PREFIX, HubFile, WeightsNotFoundError,  # noqa: F401
                  WeightsSpec, resolve_weights)
