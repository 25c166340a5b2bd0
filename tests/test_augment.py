"""The paper's ten views: four corners + centre, each mirrored; and the exported averaging."""

from __future__ import annotations

import torch

from training.augment import corner_offsets, mixup, random_views
from training.export import Deployed
from training.network import FERNet, NetConfig


def test_corner_offsets_48_to_44() -> None:
    assert corner_offsets(48, 44) == [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]


def test_random_views_are_paper_crops_or_their_mirrors() -> None:
    img = torch.arange(48 * 48, dtype=torch.float32).reshape(1, 1, 48, 48)
    allowed = []
    for y, x in corner_offsets(48, 44):
        crop = img[0, :, y:y + 44, x:x + 44]
        allowed += [crop, crop.flip(-1)]
    gen = torch.Generator().manual_seed(0)
    views = random_views(img.expand(200, -1, -1, -1), 44, "paper10", gen)
    seen = set()
    for v in views:
        matches = [i for i, a in enumerate(allowed) if torch.equal(v, a)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(10))  # all ten views occur


def test_no_augmentation_is_the_centre_crop() -> None:
    img = torch.rand(4, 1, 48, 48)
    torch.testing.assert_close(random_views(img, 44, "none"), img[..., 2:46, 2:46])


def test_deployed_ten_crop_averages_the_ten_views() -> None:
    torch.manual_seed(0)
    net = FERNet(NetConfig(conv_channels=(4, 4), local_channels=2)).eval()
    dep = Deployed(net, 48, 44, mean=100.0, std=50.0).eval()
    x = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    xn = (x.float() - 100.0) / 50.0
    views = [xn[..., y:y + 44, c:c + 44] for y, c in corner_offsets(48, 44)]
    views += [v.flip(-1) for v in views]
    expected = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0)
    with torch.no_grad():
        got = dep.predict(x, "ten")
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(dep.predict(x, "centre"), torch.softmax(net(views[4]), 1))
        torch.testing.assert_close(dep(x).sum(1), torch.ones(3))


def test_camera_views_shape_range_and_each_group_switches_off() -> None:
    import pytest

    from training.augment import CAMERA_GROUPS, CameraAugment, camera_views

    rng = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (16, 1, 48, 48), generator=rng, dtype=torch.uint8)
    every = camera_views(faces, 44, CameraAugment(), torch.Generator().manual_seed(1))
    assert every.shape == (16, 1, 44, 44) and every.dtype == torch.float32
    assert every.min() >= 0 and every.max() <= 255 and torch.equal(every, every.round())
    # with every group off, a view is one of the paper's five crops, unchanged
    none = camera_views(faces, 44, CameraAugment.without(",".join(CAMERA_GROUPS)),
                        torch.Generator().manual_seed(1))
    for view, face in zip(none, faces.float(), strict=True):
        assert any(torch.equal(view, face[:, y:y + 44, x:x + 44])
                   for y, x in corner_offsets(48, 44))
    # each group on its own changes the views (flip: at least one mirrored)
    for group in CAMERA_GROUPS:
        aug = CameraAugment.without(",".join(g for g in CAMERA_GROUPS if g != group))
        if group != "frame":
            aug = CameraAugment(groups=frozenset({group}))
        out = camera_views(faces, 44, aug, torch.Generator().manual_seed(2))
        assert not torch.equal(out, none), group
    with pytest.raises(ValueError, match="unknown camera augmentation"):
        CameraAugment.without("jpg")


def test_camera_views_equalise_after_the_degradations() -> None:
    from streamfer.faces import equalize_faces
    from training.augment import CameraAugment, camera_views

    dark = (torch.arange(48 * 48).reshape(1, 1, 48, 48) % 60).to(torch.uint8).repeat(4, 1, 1, 1)
    off = CameraAugment(groups=frozenset())
    eq = camera_views(dark, 44, off, torch.Generator().manual_seed(0), equalize=True)
    expect = torch.from_numpy(equalize_faces(dark[:, 0].numpy())).float()[:, None]
    assert any(torch.equal(eq[0], expect[0, :, y:y + 44, x:x + 44])
               for y, x in corner_offsets(48, 44))
    assert eq.max() > 200  # a dark face spread over the whole range


def test_mixup_blends_each_face_and_its_target_with_the_same_partner_and_weight() -> None:
    """Face k is a flat image of value 10k labelled class k: after mixup, every pixel of face k
    must equal the target-weighted sum of 10 x class, so images and targets share one weight
    and one partner per face."""
    n = 8
    x = (torch.arange(n, dtype=torch.float32) * 10)[:, None, None, None].expand(n, 1, 4, 4)
    t = torch.eye(n)
    assert mixup(x, t, 0.0, torch.Generator().manual_seed(0))[0] is x  # off
    weights = []
    for seed in range(6):
        mx, mt = mixup(x, t, 0.4, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(mt.sum(1), torch.ones(n))
        expect = (mt * torch.arange(n) * 10).sum(1)
        torch.testing.assert_close(mx[:, 0, 0, 0], expect)
        assert torch.all(mx == mx[:, :, :1, :1])  # still flat: one weight per image
        weights.append(float(mt.max(1).values.min()))
        again = mixup(x, t, 0.4, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(again[0], mx)  # the generator decides it all
    assert len({round(w, 4) for w in weights}) > 1  # the weight is drawn, not fixed


def test_camera_strength_scales_the_ranges_about_the_untouched_face() -> None:
    from training.augment import CameraAugment

    base = CameraAugment()
    assert base.scaled(1) is base
    none = base.scaled(0)
    assert none.scale == (1.0, 1.0) and none.shift == 0 and none.rotate == 0
    assert none.contrast == (1.0, 1.0) and none.gamma == (1.0, 1.0) and none.brightness == 0
    assert none.p_blur == none.p_jpeg == none.p_noise == none.p_erase == 0
    wide = base.scaled(2)
    assert wide.rotate == 2 * base.rotate and wide.shift == 2 * base.shift
    assert wide.scale[0] < base.scale[0] and wide.scale[1] > base.scale[1]
    assert wide.p_erase == 2 * base.p_erase and base.scaled(10).p_jpeg == 1.0
    assert wide.quality == base.quality  # how strong a JPEG is when one happens stays
