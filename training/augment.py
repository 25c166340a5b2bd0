"""Training views: the paper's five SxS crops (four corners + centre) and their mirrors, and
camera-like views (re-framing, light, blur, JPEG, noise, occlusion) for faces from real phones.

Training samples one of the ten views per image per epoch (the same distribution as
materialising all ten copies, at a tenth of the cost per pass); test-time averaging lives
in the exported model (training/export.py) so evaluation runs exactly what the server runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from streamfer.faces import equalize_faces

AUGMENT_MODES = ("paper10", "shift", "none", "camera")


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


# --augment camera: what a phone camera, the page's crop and the server's detector do to a
# face that FER2013's tidy 48 px crops never show. Each group can be switched off
# (--camera-off) for its ablation.
CAMERA_GROUPS = ("frame", "light", "blur", "jpeg", "noise", "erase", "flip")


@dataclass(frozen=True)
class CameraAugment:
    """Ranges of the camera-like augmentation (training/fit.py's --augment camera).

    frame: the detector's box varies: the face is re-framed at scale 0.8-1.2 of its side,
      shifted up to `shift` of the side, rotated up to `rotate` degrees, edges replicated
      as the server's crop pads them (streamfer.faces.crop_face);
    light: brightness, contrast and gamma (exposure, white balance, screens);
    blur: Gaussian blur, or a low-resolution face upsampled (a small face in the frame);
    jpeg: the page's JPEG encoding at quality 30-95;
    noise: sensor noise;
    erase: a random rectangle painted over (hands, glasses, occlusion);
    flip: the mirror image.
    """

    groups: frozenset[str] = frozenset(CAMERA_GROUPS)
    scale: tuple[float, float] = (0.8, 1.2)
    shift: float = 0.15
    rotate: float = 15.0
    brightness: float = 30.0
    contrast: tuple[float, float] = (0.7, 1.3)
    gamma: tuple[float, float] = (0.7, 1.4)
    p_blur: float = 0.25
    sigma: tuple[float, float] = (0.4, 1.2)
    lowres: tuple[int, int] = (16, 36)
    p_jpeg: float = 0.5
    quality: tuple[int, int] = (30, 95)
    p_noise: float = 0.2
    noise: tuple[float, float] = (2.0, 6.0)
    p_erase: float = 0.2
    erase_area: tuple[float, float] = (0.02, 0.12)

    def scaled(self, strength: float) -> CameraAugment:
        """These ranges widened (strength > 1) or narrowed (< 1) about the untouched face: the
        frame's and the light's distance from no change, the chance of blur, JPEG, noise and
        erasing, and the erased area, times `strength` (chances capped at 1); how strong a
        blur, JPEG or noise is when one happens stays. 1 returns the ranges unchanged."""
        if strength < 0:
            raise ValueError(f"strength {strength} must be >= 0")
        if strength == 1:
            return self

        def about(r: tuple[float, float], centre: float) -> tuple[float, float]:
            return (centre + (r[0] - centre) * strength, centre + (r[1] - centre) * strength)

        def p(x: float) -> float:
            return min(1.0, x * strength)

        return replace(
            self, scale=about(self.scale, 1.0), shift=self.shift * strength,
            rotate=self.rotate * strength, brightness=self.brightness * strength,
            contrast=about(self.contrast, 1.0), gamma=about(self.gamma, 1.0),
            p_blur=p(self.p_blur), p_jpeg=p(self.p_jpeg), p_noise=p(self.p_noise),
            p_erase=p(self.p_erase),
            erase_area=(self.erase_area[0], min(0.5, self.erase_area[1] * strength)))

    @classmethod
    def without(cls, off: str) -> CameraAugment:
        """All groups but the comma list `off` (e.g. "jpeg,noise"); unknown names raise."""
        names = {s.strip() for s in off.split(",") if s.strip()}
        unknown = names - set(CAMERA_GROUPS)
        if unknown:
            raise ValueError(f"unknown camera augmentation group(s) {sorted(unknown)}; "
                             f"groups: {', '.join(CAMERA_GROUPS)}")
        return cls(groups=frozenset(CAMERA_GROUPS) - names)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _reframe(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    s = _uniform(n, *aug.scale, gen)
    a = torch.deg2rad(_uniform(n, -aug.rotate, aug.rotate, gen))
    t = _uniform(2 * n, -2 * aug.shift, 2 * aug.shift, gen).reshape(n, 2)  # [-1, 1] is a side
    theta = torch.stack([torch.stack([s * a.cos(), -s * a.sin(), t[:, 0]], 1),
                         torch.stack([s * a.sin(), s * a.cos(), t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _light(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    g = _uniform(n, *aug.gamma, gen)[:, None, None, None]
    c = _uniform(n, *aug.contrast, gen)[:, None, None, None]
    b = _uniform(n, -aug.brightness, aug.brightness, gen)[:, None, None, None]
    x = 255.0 * (x / 255.0).clamp(0, 1) ** g
    m = x.mean((1, 2, 3), keepdim=True)
    return ((x - m) * c + m + b).clamp(0, 255)


def _blur(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n, size = x.shape[0], x.shape[-1]
    pick = torch.rand(n, generator=gen) < aug.p_blur
    low = torch.rand(n, generator=gen) < 0.5  # half the blurred faces: low resolution instead
    sigma = _uniform(n, *aug.sigma, gen)
    sides = torch.randint(aug.lowres[0], aug.lowres[1] + 1, (n,), generator=gen)
    out = x.clone()
    ar = torch.arange(-2, 3, dtype=torch.float32)
    for i in pick.nonzero().flatten().tolist():
        img = x[i:i + 1]
        if low[i]:
            side = int(sides[i])
            img = F.interpolate(img, size=(side, side), mode="area")
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
        else:
            k = torch.exp(-ar ** 2 / (2 * float(sigma[i]) ** 2))
            k = k / k.sum()
            img = F.conv2d(F.pad(img, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
            img = F.conv2d(F.pad(img, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))
        out[i:i + 1] = img
    return out


def _jpeg(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    pick = torch.rand(n, generator=gen) < aug.p_jpeg
    quality = torch.randint(aug.quality[0], aug.quality[1] + 1, (n,), generator=gen)
    out = x.clone()
    for i in pick.nonzero().flatten().tolist():
        img = x[i, 0].round().clamp(0, 255).to(torch.uint8).numpy()
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality[i])])
        out[i, 0] = torch.from_numpy(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)).float()
    return out


def _noise(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    pick = (torch.rand(n, generator=gen) < aug.p_noise).float()
    std = _uniform(n, *aug.noise, gen) * pick
    return (x + torch.randn(x.shape, generator=gen) * std[:, None, None, None]).clamp(0, 255)


def _erase(x: torch.Tensor, aug: CameraAugment, gen: torch.Generator | None) -> torch.Tensor:
    n, side = x.shape[0], x.shape[-1]
    pick = torch.rand(n, generator=gen) < aug.p_erase
    area = _uniform(n, *aug.erase_area, gen) * side * side
    ratio = torch.exp(_uniform(n, -1.2, 1.2, gen))  # aspect 0.3-3.3
    h = (area * ratio).sqrt().clamp(1, side).round()
    w = (area / ratio).sqrt().clamp(1, side).round()
    y0 = (torch.rand(n, generator=gen) * (side - h + 1)).floor()
    x0 = (torch.rand(n, generator=gen) * (side - w + 1)).floor()
    ar = torch.arange(side, dtype=torch.float32)
    rows = (ar[None] >= y0[:, None]) & (ar[None] < (y0 + h)[:, None])
    cols = (ar[None] >= x0[:, None]) & (ar[None] < (x0 + w)[:, None])
    mask = (rows[:, :, None] & cols[:, None, :] & pick[:, None, None])[:, None]
    fill = (torch.rand(n, generator=gen)[:, None, None, None] * 255.0).round()
    return torch.where(mask, fill, x)


def camera_views(images: torch.Tensor, crop: int, aug: CameraAugment,
                 generator: torch.Generator | None = None,
                 equalize: bool = False) -> torch.Tensor:
    """One camera-like training view per image of an N x 1 x S x S batch (uint8 or 0-255
    float): S x S re-framed and degraded as the serving path would see it, then (with
    `equalize`, when the model equalises its input) histogram-equalised as the server does,
    then the centre crop x crop that the default test-time views use (any of the paper's
    five crops when 'frame' is off), mirrored half the time, maybe erased. Float, 0-255."""
    x = images.float()
    g = aug.groups
    if "frame" in g:
        x = _reframe(x, aug, generator)
    if "light" in g:
        x = _light(x, aug, generator)
    if "blur" in g:
        x = _blur(x, aug, generator)
    if "jpeg" in g:
        x = _jpeg(x, aug, generator)
    if "noise" in g:
        x = _noise(x, aug, generator)
    x = x.round().clamp(0, 255)  # the server sees 8-bit pixels
    if equalize:
        x = torch.from_numpy(equalize_faces(x[:, 0].to(torch.uint8).numpy())).float()[:, None]
    size = x.shape[-1]
    if "frame" in g:
        c = (size - crop) // 2
        x = x[..., c:c + crop, c:c + crop]
    else:
        table = torch.tensor(corner_offsets(size, crop))
        pick = torch.randint(0, 5, (x.shape[0],), generator=generator)
        x = torch.stack([x[i, :, y:y + crop, o:o + crop]
                         for i, (y, o) in enumerate(table[pick].tolist())])
    if "flip" in g:
        flip = torch.rand(x.shape[0], generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "erase" in g:
        x = _erase(x, aug, generator)
    return x


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018): blend the batch with a shuffled copy of itself, the
    images and the target distributions alike, at one weight lam ~ Beta(alpha, alpha) per
    batch. It trains the network to answer in proportion between faces, a regulariser for
    noisy labels; alpha <= 0 returns the batch unchanged."""
    if alpha <= 0:
        return x, target
    # Beta draws come from numpy, seeded from the epoch's generator so runs repeat exactly.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]
