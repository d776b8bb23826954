"""Image augmentation: each transform does what its spec says, and only when asked."""

from __future__ import annotations

import torch

from medfuse.core.spec import AugmentSpec, ModalitySpec
from medfuse.training.augment import augment_batch

MODS = {"image": ModalitySpec(kind="image", channels=1, size=[12, 12])}


def _run(x: torch.Tensor, seed: int = 0, **aug: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return augment_batch({"image": x}, MODS, AugmentSpec(**aug), g)["image"]


def _batch() -> torch.Tensor:
    return torch.randn(64, 1, 12, 12, generator=torch.Generator().manual_seed(1)) + 3.0


def test_nothing_asked_nothing_changed() -> None:
    x = _batch()
    assert torch.equal(_run(x), x)


def test_contrast_scales_about_each_images_mean() -> None:
    x = _batch()
    y = _run(x, contrast=0.3)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-5)
    ratio = y.std(dim=(1, 2, 3)) / x.std(dim=(1, 2, 3))
    assert ratio.min() >= 0.7 - 1e-5 and ratio.max() <= 1.3 + 1e-5
    assert ratio.max() - ratio.min() > 0.2  # drawn per image, not once per batch


def test_brightness_shifts_each_image_by_one_offset() -> None:
    x = _batch()
    d = _run(x, brightness=0.5) - x
    per_image = d.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)
    assert per_image.abs().max() <= 0.5 + 1e-5 and per_image[:, 0].std() > 0.1


def test_erase_blanks_one_square_in_about_half_the_images() -> None:
    x = _batch()
    y = _run(x, erase=0.25)
    changed = y != x
    n_changed = changed.flatten(1).sum(1)
    hit = n_changed > 0
    assert 16 <= int(hit.sum()) <= 48  # probability 0.5 over 64 images
    assert torch.all(n_changed[hit] == 9)  # a 3 x 3 square (0.25 x 12), inputs are never 0
    assert torch.all(y[changed] == 0)
    rows = changed[hit].any(dim=3).sum(dim=(1, 2))
    assert torch.all(rows == 3)  # contiguous 3 rows (and so 3 columns): a square


def test_same_generator_same_result_and_flip_is_a_mirror() -> None:
    x = _batch()
    kw = {"flip": True, "rotate": 10.0, "contrast": 0.2, "brightness": 0.2, "erase": 0.2}
    assert torch.equal(_run(x, 3, **kw), _run(x, 3, **kw))
    assert not torch.equal(_run(x, 3, **kw), _run(x, 4, **kw))
    y = _run(x, flip=True)
    mirrored = (y == x.flip(3)).flatten(1).all(1)
    same = (y == x).flatten(1).all(1)
    assert torch.all(mirrored | same) and mirrored.any() and same.any()
