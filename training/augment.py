"""The paper's augmentation: five SxS crops (four corners + centre) and their mirrors.

Training samples one of the ten views per image per epoch (the same distribution as
materialising all ten copies, at a tenth of the cost per pass); test-time averaging lives
in the exported model (training/export.py) so evaluation runs exactly what the server runs.
"""

from __future__ import annotations

import torch

AUGMENT_MODES = ("paper10", "shift", "none")


def corner_offsets(size: int, crop: int) -> list[tuple[int, int]]:
    """(y, x) of the four corner crops and the centre crop of a size x size image."""
    m, c = size - crop, (size - crop) // 2
    return [(0, 0), (0, m), (m, 0), (m, m), (c, c)]


def random_views(images: torch.Tensor, crop: int, mode: str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One training view per image of an N x 1 x S x S batch.

    mode 'paper10': one of the 5 crops, mirrored half the time (the paper's 10x);
    'shift': any crop offset, mirrored half the time (a denser variant);
    'none': the centre crop, never mirrored (the no-augmentation ablation).
    """
    n, size = images.shape[0], images.shape[-1]
    if mode == "none":
        c = (size - crop) // 2
        return images[..., c:c + crop, c:c + crop]
    if mode == "paper10":
        table = torch.tensor(corner_offsets(size, crop))
        pick = torch.randint(0, 5, (n,), generator=generator)
        ys, xs = table[pick, 0], table[pick, 1]
    elif mode == "shift":
        ys = torch.randint(0, size - crop + 1, (n,), generator=generator)
        xs = torch.randint(0, size - crop + 1, (n,), generator=generator)
    else:
        raise ValueError(f"unknown augmentation {mode!r}: one of {AUGMENT_MODES}")
    ar = torch.arange(crop)
    rows = (ys[:, None] + ar[None, :])[:, None, :, None].expand(n, 1, crop, size)
    out = torch.gather(images, 2, rows)
    cols = (xs[:, None] + ar[None, :])[:, None, None, :].expand(n, 1, crop, crop)
    out = torch.gather(out, 3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)
