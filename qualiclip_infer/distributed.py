"""The Ray module of qualiclip-infer 0.1, kept so that code importing from it keeps working: it is now
:mod:`qualiclip_infer.ray_scoring` (in PyTorch, "distributed" means ``torch.distributed``, which this is not).
"""

from .ray_scoring import BatchScorer, connect, find_inputs, is_uri, ray_error_cause, require_ray, score_dataset  # noqa: F401
