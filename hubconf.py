"""torch.hub entry points: ``torch.hub.load("<owner>/<repo>", "QualiCLIP")`` works like the official model.

Heavy imports happen inside the entry points, so ``torch.hub.list`` and ``torch.hub.help`` stay cheap.
"""

dependencies = ["torch", "open_clip", "PIL", "huggingface_hub", "numpy"]


def QualiCLIP(pretrained: bool = True, **kwargs):  # noqa: N802 (the official entry point's name)
    """QualiCLIP as an ``nn.Module``: CLIP-normalised ``N x 3 x H x W`` float images in, ``(N,)`` scores out.

    A drop-in for the official ``torch.hub.load("miccunifi/QualiCLIP", "QualiCLIP")``: feed
    ``normalize(ToTensor()(img))[None]`` with CLIP's mean and std, at the image's native size (H, W >= 32).

    Args:
        pretrained: ``True`` loads the QualiCLIP weights. ``False`` returns the same architecture (CLIP RN50
            image tower) randomly initialised, scoring against random unit prompt features: the prompt features
            come from a trained text tower, so without weights there are none to have. Its scores are
            meaningless; it is for shape, speed and training tests.
        **kwargs: With ``pretrained=True``: ``weights``, ``revision``, ``cache_dir``, ``local_files_only``,
            ``prompts``, ``logit_scale`` (see ``qualiclip_infer.load_model``). With ``pretrained=False``: only
            ``logit_scale``. The other models of the family have entry points of their own (``QualiCLIP_plus``,
            ``CLIP_IQA``, ``CLIP_IQA_plus``): ``torch.hub.load`` keeps ``model`` for the entry point's name.

    Returns:
        The model on the CPU in eval mode; move it with ``.to(device)``.
    """
    if pretrained:
        from qualiclip_infer import load_model

        return load_model(**kwargs)
    if set(kwargs) - {"logit_scale"}:
        raise TypeError(f"QualiCLIP(pretrained=False) takes only logit_scale, got {sorted(kwargs)}")
    return _random_model(**kwargs)


def QualiCLIP_plus(dataset: str = "koniq", **kwargs):  # noqa: N802 (named like the model)
    """QualiCLIP+ as an ``nn.Module``: QualiCLIP's image tower with prompts learned on a MOS dataset.

    Args:
        dataset: ``koniq``, ``clive``, ``flive`` or ``spaq``: the dataset whose human scores the prompts were fitted
            to (so the model is no longer opinion-unaware).
        **kwargs: ``weights``, ``prompt_weights``, ``revision``, ``prompt_revision``, ``cache_dir``,
            ``local_files_only``, ``logit_scale`` (see ``qualiclip_infer.load_model``).
    """
    from qualiclip_infer import load_model

    return load_model(model=f"qualiclip+{dataset}", **kwargs)


def CLIP_IQA(**kwargs):  # noqa: N802
    """CLIP-IQA as an ``nn.Module``: stock OpenAI CLIP RN50 scoring against pyiqa's five antonym pairs (zero-shot).

    Args:
        **kwargs: ``weights``, ``revision``, ``cache_dir``, ``local_files_only``, ``prompts``, ``logit_scale``.
    """
    from qualiclip_infer import load_model

    return load_model(model="clipiqa", **kwargs)


def CLIP_IQA_plus(**kwargs):  # noqa: N802
    """CLIP-IQA+ as an ``nn.Module``: OpenAI CLIP RN50 with a prompt context learned on KonIQ-10k human scores.

    Args:
        **kwargs: ``weights``, ``prompt_weights``, ``revision``, ``prompt_revision``, ``cache_dir``,
            ``local_files_only``, ``logit_scale``.
    """
    from qualiclip_infer import load_model

    return load_model(model="clipiqa+", **kwargs)


def qualiclip_scorer(preset: str = "qualiclip", **kwargs):
    """A ``qualiclip_infer.QualityScorer``: scores paths, PIL images, arrays and tensors, batched and exact.

    Args:
        preset: The scorer's ``model``: ``qualiclip`` (the official model), ``qualiclip+koniq``,
            ``qualiclip+clive``, ``qualiclip+flive``, ``qualiclip+spaq``, ``clipiqa`` or ``clipiqa+``
            (``torch.hub.load`` keeps the name ``model`` for the entry point).
        **kwargs: Arguments of ``QualityScorer`` (``weights``, ``prompt_weights``, ``device``, ``precision``,
            ``prompts``, ``batch_size``, ...).
    """
    from qualiclip_infer import QualityScorer

    return QualityScorer(model=preset, **kwargs)


def qualiclip_loss(**kwargs):
    """``qualiclip_infer.QualiCLIPLoss``: ``1 - QualiCLIP score`` of ``N x 3 x H x W`` images in [0, 1], differentiable
    with respect to the images, with the network frozen (BatchNorms always in eval mode).

    Args:
        **kwargs: Arguments of ``QualiCLIPLoss`` (``weights``, ``reduction``, ``prompts``, ``logit_scale``, ...).
    """
    from qualiclip_infer import QualiCLIPLoss

    return QualiCLIPLoss(**kwargs)


def _random_model(logit_scale=None):
    import torch
    import torch.nn.functional as F

    from qualiclip_infer.model import OFFICIAL_LOGIT_SCALE, ClipArchitecture, QualiCLIP

    rn50 = ClipArchitecture(embed_dim=1024, vision_layers=(3, 4, 6, 3), vision_width=64, image_size=224,
                            context_length=77, vocab_size=49408, text_width=512, text_layers=12)
    prompt_features = F.normalize(torch.randn(14, rn50.embed_dim), dim=-1)
    model = QualiCLIP(rn50.build_image_tower(), prompt_features,
                      OFFICIAL_LOGIT_SCALE if logit_scale is None else logit_scale)
    return model.eval().requires_grad_(False)
