"""The Ray module of qualiclip-infer 0.1, kept so that code importing from it keeps working: it is now
:mod:`qualiclip_infer.ray_scoring` (in PyTorch, "distributed" means ``torch.distributed``, which this is not).
"""

from .ray_actors import BatchScorer  # noqa: F401
from .ray_scoring import connect, ray_error_cause, require_ray, score_dataset  # noqa: F401
from .uris import find_inputs, is_uri  # noqa: F401
