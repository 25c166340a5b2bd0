"""A tiny end-to-end fit whose export loads with torch.jit.load alone; k-fold; DDP smoke."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from streamfer import contract
from training import export, fit, report

ROOT = Path(__file__).resolve().parent.parent


def make_faces(root: Path, per_class: int = 12) -> None:
    """Two visibly different classes of 48x48 images, with CK+-style subject prefixes."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    for label, (folder, pattern) in enumerate([("happy", xx), ("sad", yy)]):
        (root / folder).mkdir(parents=True)
        for i in range(per_class):
            img = (pattern * 5 + rng.normal(0, 20, (48, 48))).clip(0, 255).astype(np.uint8)
            cv2.imwrite(str(root / folder / f"S{i % 6:03d}_{label:03d}_{i:08d}.png"), img)


def test_tiny_fit_exports_a_model_torch_jit_load_alone_runs(tmp_path: Path) -> None:
    make_faces(tmp_path / "data")
    model = tmp_path / "tiny.pt"
    metrics = fit.main(["--data", "folder", "--data-root", str(tmp_path / "data"),
                        "--val-root", str(tmp_path / "data"), "--classes", "happy,sad",
                        "--net", "paper", "--epochs", "2", "--batch", "8", "--lr", "0.01",
                        "--out", str(tmp_path / "run"), "--export", str(model)])
    assert metrics["val_images"] == 24 and 0.0 <= metrics["val_accuracy"] <= 1.0
    for png in ("curves.png", "confusion.png"):
        assert cv2.imread(str(tmp_path / "run" / png)) is not None
    extra = {"metadata.json": ""}
    m = torch.jit.load(str(model), _extra_files=extra)
    meta = json.loads(extra["metadata.json"])
    assert meta["classes"] == ["happiness", "sadness"] and meta["input"]["size"] == 48
    assert json.loads(model.with_suffix(".json").read_text()) == meta
    faces = torch.randint(0, 256, (5, 1, 48, 48), dtype=torch.uint8)
    for probs in (m(faces), m.predict(faces, "ten"), m.predict(faces.float(), "centre")):
        assert probs.shape == (5, 2)
        torch.testing.assert_close(probs.sum(1), torch.ones(5))
    assert m(torch.zeros(2, 1, 96, 96)).shape == (2, 2)  # other sizes are resized


def test_grouped_folds_never_share_a_subject(tmp_path: Path) -> None:
    make_faces(tmp_path / "data")
    metrics = fit.main(["--data", "folder", "--data-root", str(tmp_path / "data"),
                        "--classes", "happy,sad", "--epochs", "1", "--batch", "8",
                        "--folds", "3", "--out", str(tmp_path / "cv")])
    assert len(metrics["fold_accuracy"]) == 3
    assert "grouped by subject" in metrics["protocol"]
    from training.data import load_folder

    faces = load_folder(tmp_path / "data", "happy,sad")
    splits, _ = fit.folds_of(fit.parse_args(["--folds", "3"]), faces)
    for train, test in splits:
        assert not set(faces.groups[train]) & set(faces.groups[test])


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_process_ddp_smoke(tmp_path: Path) -> None:
    make_faces(tmp_path / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.fit", "--data", "folder", "--data-root", str(tmp_path / "data"),
           "--val-root", str(tmp_path / "data"), "--classes", "happy,sad", "--epochs", "2",
           "--batch", "8", "--threads", "1", "--device", "cpu", "--out", str(tmp_path / "ddp"),
           "--export", str(tmp_path / "ddp.pt")]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cpu x2" in done.stderr
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(metrics["history"]["epoch"]) == 2
    assert torch.jit.load(str(tmp_path / "ddp.pt"))(torch.zeros(1, 1, 48, 48)).shape == (1, 2)


def test_init_from_an_exported_model_matches_classes_by_name(tmp_path: Path,
                                                              tiny_model_path: Path) -> None:
    from training.network import FERNet, NetConfig

    source = torch.jit.load(str(tiny_model_path)).state_dict()
    net = FERNet(NetConfig(classes=3, conv_channels=(8, 8), local_channels=4))
    mean, std = fit.init_from(net, str(tiny_model_path), ("sadness", "contempt", "anger"))
    assert (mean, std) == (128.0, 64.0)
    own = net.state_dict()
    torch.testing.assert_close(own["features.0.weight"], source["net.features.0.weight"])
    # the tiny model's classes are anger, happiness, sadness, surprise, neutral
    torch.testing.assert_close(own["full.weight"][0], source["net.full.weight"][2])
    torch.testing.assert_close(own["full.weight"][2], source["net.full.weight"][0])
    assert not torch.equal(own["full.weight"][1], source["net.full.weight"][1])


def test_a_run_stopped_and_resumed_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    make_faces(tmp_path / "data")
    args = ["--data", "folder", "--data-root", str(tmp_path / "data"), "--classes", "happy,sad",
            "--epochs", "3", "--batch", "8", "--threads", "1", "--device", "cpu"]
    straight = fit.main([*args, "--out", str(tmp_path / "straight")])
    first = fit.main([*args, "--out", str(tmp_path / "split"), "--stop-after", "2"])
    assert first["history"]["epoch"] == [1, 2]
    resumed = fit.main([*args, "--out", str(tmp_path / "split"), "--resume"])
    assert json.dumps(resumed["history"]) == json.dumps(straight["history"])  # NaN val: no val
    a = torch.load(tmp_path / "straight" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["net"].items():
        torch.testing.assert_close(b["net"][key], value, rtol=0, atol=0)


def test_export_compiles_no_torch_python_resize_and_reexport_keeps_probabilities(
        tmp_path: Path, tiny_model_path: Path) -> None:
    import zipfile

    # F.interpolate's compiled body names every resize kernel of the exporting torch (2.13's
    # Lanczos kernel made files that torch 2.11 refused to load); the wrapper avoids it.
    with zipfile.ZipFile(tiny_model_path) as z:
        code = b"".join(z.read(n) for n in z.namelist() if n.endswith(".py"))
    assert b"def interpolate" not in code and b"lanczos" not in code
    again = export.reexport(tiny_model_path, tmp_path / "again.pt")
    old, new = torch.jit.load(str(tiny_model_path)), torch.jit.load(str(again))
    for x in (torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8),
              torch.rand(2, 1, 96, 80) * 255):
        for mode in ("ten", "mirror", "centre"):
            torch.testing.assert_close(new.predict(x, mode), old.predict(x, mode), rtol=0, atol=0)
    assert json.loads(again.with_suffix(".json").read_text()) == \
        json.loads(tiny_model_path.with_suffix(".json").read_text())


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_whole(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    fit.save_atomically({"epoch": 3, "w": torch.ones(4)}, ckpt)
    with pytest.raises((AttributeError, pickle.PicklingError)):  # fails part-way through
        fit.save_atomically({"epoch": 4, "w": torch.ones(4), "bad": lambda: None}, ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 3 and torch.equal(state["w"], torch.ones(4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left
    fit.save_atomically({"epoch": 4}, ckpt)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 4


def test_reexport_notes_add_a_recipe_and_keep_what_the_weights_compute(
        tiny_model_path: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"recipe": ["python -m training.fit ..."],
                                 "selection": "chosen before its results"}))
    out = export.main([str(tiny_model_path), "--out", str(tmp_path / "noted.pt"),
                       "--notes", str(notes)])
    _, meta = contract.read(out)
    _, before = contract.read(tiny_model_path)
    assert meta.notes["recipe"] == ["python -m training.fit ..."]
    assert meta.notes["selection"] == "chosen before its results"
    assert dataclasses.replace(meta, notes={}) == before
    x = torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8)
    torch.testing.assert_close(torch.jit.load(str(out)).predict(x, "mirror"),
                               torch.jit.load(str(tiny_model_path)).predict(x, "mirror"),
                               rtol=0, atol=0)
    notes.write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(ValueError, match="classes"):
        export.main([str(tiny_model_path), "--out", str(tmp_path / "bad.pt"),
                     "--notes", str(notes)])
    assert not (tmp_path / "bad.pt").exists()


def test_reexport_takes_another_epochs_weights_from_a_checkpoint(
        tiny_model_path: Path, tmp_path: Path) -> None:
    deployed, _ = export.rebuild(tiny_model_path)
    state = {k: v + 0.01 for k, v in deployed.net.state_dict().items()}  # "a later epoch"
    fit.save_atomically({"net": state, "epoch": 7}, tmp_path / "last.ckpt")
    fit.save_atomically(state, tmp_path / "best.ckpt")
    for ckpt, epoch in (("last.ckpt", 7), ("best.ckpt", None)):
        out = export.main([str(tiny_model_path), "--out", str(tmp_path / f"{ckpt}.pt"),
                           "--weights", str(tmp_path / ckpt)])
        again, meta = export.rebuild(out)
        for k, v in again.net.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0)
        assert meta.metrics["epoch"] == epoch and meta.metrics["weights"].endswith(ckpt)
    x = torch.randint(0, 256, (2, 1, 48, 48), dtype=torch.uint8)
    assert not torch.equal(torch.jit.load(str(tmp_path / "last.ckpt.pt")).predict(x, "centre"),
                           torch.jit.load(str(tiny_model_path)).predict(x, "centre"))


def test_unadjusted_gives_back_the_network_as_trained(
        tiny_model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """training.export --unadjusted undoes training.calibrate's shift: the same probabilities
    as the file before adjustment, no logit_adjust in the metadata, and the result can be
    adjusted again; a file that was never adjusted, or no --out, is refused."""
    prior = {"anger": 0.1, "happiness": 0.3, "sadness": 0.15, "surprise": 0.1, "neutral": 0.35}
    adjusted = export.reexport(tiny_model_path, tmp_path / "adj.pt", {"tau": 1.0, "prior": prior})
    source = export.main([str(adjusted), "--unadjusted", "--out", str(tmp_path / "src.pt")])
    x = torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8)
    raw = torch.jit.load(str(tiny_model_path)).predict(x, "ten")
    assert not torch.allclose(torch.jit.load(str(adjusted)).predict(x, "ten"), raw, atol=1e-3)
    torch.testing.assert_close(torch.jit.load(str(source)).predict(x, "ten"), raw,
                               rtol=1e-5, atol=1e-6)
    _, meta = contract.read(source)
    assert meta.logit_adjust is None
    export.reexport(source, tmp_path / "again.pt", {"tau": 0.5, "prior": prior})
    with pytest.raises(ValueError, match="not logit-adjusted"):
        export.reexport(tiny_model_path, tmp_path / "no.pt", unadjust=True)
    with pytest.raises(SystemExit, match="--out"):
        export.main([str(adjusted), "--unadjusted"])
    # a checkpoint's weights are the network as trained: taken as they are, not shifted
    deployed, _ = export.rebuild(tiny_model_path)
    fit.save_atomically(deployed.net.state_dict(), tmp_path / "best.ckpt")
    again, meta = export.rebuild(adjusted, weights=tmp_path / "best.ckpt", unadjust=True)
    torch.testing.assert_close(again.net.state_dict()["full.bias"],
                               deployed.net.state_dict()["full.bias"], rtol=0, atol=0)
    assert meta.logit_adjust is None


def test_a_model_rewrite_that_fails_part_way_leaves_the_served_file_loadable(
        tiny_model_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "served.pt"
    export.reexport(tiny_model_path, model)  # through contract.write, as calibrate writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served.json", "served.pt"]

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(model.read_bytes()[:1000])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        contract.replace_atomically(model, half_then_fail)
    _, meta = contract.read(model)  # the old file, whole
    assert meta.name == "tiny"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served.json", "served.pt"]


def test_report_compares_runs_from_their_metrics(tmp_path: Path) -> None:
    for name, accs in (("a", [0.4, 0.5]), ("b", [0.3, 0.6])):
        (tmp_path / name).mkdir()
        history = {"epoch": [1, 2], "val_acc": accs, "train_loss": [1.5, 1.2]}
        (tmp_path / name / "metrics.json").write_text(json.dumps({"history": history}))
    out = tmp_path / "compare.png"
    done = subprocess.run([sys.executable, "-m", "training.report", str(tmp_path / "a"),
                           str(tmp_path / "b"), "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    image = cv2.imread(str(out))
    assert image is not None and image.shape[1] > image.shape[0] > 200


def test_report_lines_up_runs_of_different_lengths_by_schedule(tmp_path: Path) -> None:
    """A 50- and a 100-epoch run (the second stopped early) on the fraction axis: each
    epoch sits at its share of its own schedule, not of the longest run's."""
    runs = {"short": (50, 50), "long": (100, 60)}
    for name, (planned, logged) in runs.items():
        (tmp_path / name).mkdir()
        epochs = list(range(1, logged + 1))
        history = {"epoch": epochs, "val_acc": [0.5] * logged, "train_loss": [1.0] * logged}
        (tmp_path / name / "metrics.json").write_text(
            json.dumps({"config": {"epochs": planned}, "history": history}))
    short = json.loads((tmp_path / "short" / "metrics.json").read_text())
    long = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert report.schedule_position(short, "fraction")[24] == 0.5
    assert report.schedule_position(long, "fraction")[49] == 0.5
    assert report.schedule_position(long, "fraction")[-1] == 0.6  # stopped early
    assert report.schedule_position(long)[-1] == 60
    with pytest.raises(ValueError, match="fraction"):
        report.schedule_position(long, "lr")
    out = tmp_path / "compare.png"
    done = subprocess.run([sys.executable, "-m", "training.report", str(tmp_path / "short"),
                           str(tmp_path / "long"), "--x", "fraction", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert cv2.imread(str(out)) is not None


def test_folds_split_across_runs_then_resumed_equal_one_whole_run(tmp_path: Path) -> None:
    make_faces(tmp_path / "data")
    args = ["--data", "folder", "--data-root", str(tmp_path / "data"), "--classes", "happy,sad",
            "--epochs", "2", "--batch", "8", "--threads", "1", "--device", "cpu", "--folds", "3"]
    whole = fit.main([*args, "--out", str(tmp_path / "whole")])
    split = tmp_path / "split"
    part = fit.main([*args, "--out", str(split), "--only-folds", "1-2"])
    assert part["only_folds"] == [1, 2] and len(part["fold_accuracy"]) == 2
    assert not (split / "metrics.json").exists()  # metrics only ever cover every fold
    fit.main([*args, "--out", str(split), "--only-folds", "0"])
    before = (split / "fold1" / "last.ckpt").stat().st_mtime_ns
    joined = fit.main([*args, "--out", str(split), "--resume"])
    assert (split / "fold1" / "last.ckpt").stat().st_mtime_ns == before  # not retrained
    assert joined["fold_accuracy"] == whole["fold_accuracy"]
    assert joined["accuracy"] == whole["accuracy"]
    assert json.loads((split / "metrics.json").read_text())["accuracy"] == whole["accuracy"]
    with pytest.raises(SystemExit, match="numbered 0 to 2"):
        fit.main([*args, "--out", str(split), "--only-folds", "2-3"])


def test_views_drawn_by_workers_do_not_depend_on_how_many_nor_on_a_resume(
        tmp_path: Path) -> None:
    """--workers N draws each step's views in other processes from a seed of (seed, epoch,
    step): one worker, two workers and a run stopped and resumed train on the same batches
    and end on the same weights; the in-process stream (--workers 0) is another one."""
    write_ferplus_tree(tmp_path / "ferplus")
    args = ["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
            "--classes", "happiness,sadness", "--labels", "soft", "--augment", "camera",
            "--preprocess", "equalize-hist", "--net", "paper", "--epochs", "3", "--batch", "4",
            "--mixup", "0.4", "--label-smoothing", "0.1", "--threads", "1", "--device", "cpu"]
    runs = {n: fit.main([*args, "--workers", n, "--out", str(tmp_path / f"w{n}")])
            for n in ("0", "1", "2")}
    fit.main([*args, "--workers", "2", "--out", str(tmp_path / "split"), "--stop-after", "1"])
    runs["split"] = fit.main([*args, "--workers", "2", "--out", str(tmp_path / "split"),
                              "--resume"])
    losses = {k: run["history"]["train_loss"] for k, run in runs.items()}
    assert losses["1"] == losses["2"] == losses["split"]
    assert losses["0"] != losses["1"]
    weights = {k: torch.load(tmp_path / f"{k if k == 'split' else 'w' + k}" / "last.ckpt",
                             weights_only=False)["net"] for k in ("1", "2", "split")}
    for key, value in weights["1"].items():
        torch.testing.assert_close(weights["2"][key], value, rtol=0, atol=0)
        torch.testing.assert_close(weights["split"][key], value, rtol=0, atol=0)
    with pytest.raises(SystemExit):
        fit.parse_args(["--workers", "-1"])


def test_workers_feed_the_same_faces_and_targets_as_the_training_process(tmp_path: Path) -> None:
    """With views that draw nothing at random (--augment none, no mixup) the only chance left
    is the epoch's order, which both paths take from the same seed: a run fed by --workers
    then trains on exactly the batches, labels and targets of the in-process run."""
    write_ferplus_tree(tmp_path / "ferplus")
    args = ["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
            "--classes", "happiness,sadness", "--labels", "soft", "--augment", "none",
            "--net", "paper", "--epochs", "3", "--batch", "4", "--label-smoothing", "0.1",
            "--threads", "1", "--device", "cpu"]
    inline = fit.main([*args, "--workers", "0", "--out", str(tmp_path / "w0")])
    drawn = fit.main([*args, "--workers", "2", "--out", str(tmp_path / "w2")])
    assert drawn["history"]["train_loss"] == inline["history"]["train_loss"]
    assert drawn["history"]["train_acc"] == inline["history"]["train_acc"]


def write_ferplus_tree(root: Path, per_class: int = 8) -> None:
    """FER+-style train/valid folders: happy faces (columns) and sad ones (rows), with votes."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:48]
    for split in ("train", "valid"):
        (root / split).mkdir(parents=True)
        lines = []
        for i in range(2 * per_class):
            happy = i % 2 == 0
            img = ((xx if happy else yy) * 2 + 20 + rng.normal(0, 10, (48, 48))).clip(0, 255)
            name = f"fer{split[0]}{i:06d}.png"
            cv2.imwrite(str(root / split / name), img.astype(np.uint8))
            votes = [0, 7, 0, 2, 0, 0, 0, 0, 1, 0] if happy else [1, 0, 0, 8, 0, 0, 0, 0, 1, 0]
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, votes)))
        (root / split / "label.csv").write_text("\n".join(lines) + "\n")


def test_ferplus_soft_labels_camera_views_and_equalisation_reach_the_served_model(
        tmp_path: Path) -> None:
    from streamfer.faces import equalize_faces
    from streamfer.model import Predictor

    write_ferplus_tree(tmp_path / "ferplus")
    model = tmp_path / "plus.pt"
    metrics = fit.main(["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
                        "--classes", "happiness,sadness", "--labels", "soft",
                        "--augment", "camera", "--camera-off", "jpeg",
                        "--preprocess", "equalize-hist", "--net", "paper", "--epochs", "2",
                        "--batch", "8", "--lr", "0.01", "--out", str(tmp_path / "run"),
                        "--export", str(model)])
    assert metrics["val_images"] == 16
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["preprocess"] == "equalize-hist" and "soft labels" in meta["train_data"]
    # the server's Predictor equalises each face, as training did, before the network
    faces = np.random.default_rng(0).integers(40, 90, (3, 48, 48), dtype=np.uint8)
    served = Predictor(model, device="cpu", optimize=False).forward(faces)
    m = torch.jit.load(str(model))
    with torch.no_grad():
        direct = m.predict(torch.from_numpy(equalize_faces(faces))[:, None], meta["tta_default"])
        raw = m.predict(torch.from_numpy(faces)[:, None], meta["tta_default"])
    np.testing.assert_allclose(served, direct.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(served, raw.numpy(), atol=1e-4)


def test_soft_targets_train_toward_the_vote_distribution(tmp_path: Path) -> None:
    """Soft vs majority targets differ in the loss: with votes 7:2 the soft run's loss cannot
    fall below the votes' entropy, the one-hot run's can."""
    write_ferplus_tree(tmp_path / "ferplus")
    runs = {}
    for labels in ("soft", "majority"):
        runs[labels] = fit.main(["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
                                 "--classes", "happiness,sadness", "--labels", labels,
                                 "--augment", "none", "--net", "paper", "--epochs", "3",
                                 "--batch", "8", "--lr", "0.01", "--dropout", "0",
                                 "--out", str(tmp_path / labels)])
    entropy = -(0.7 / 0.9 * np.log(0.7 / 0.9) + 0.2 / 0.9 * np.log(0.2 / 0.9))
    assert runs["soft"]["history"]["train_loss"][-1] > 0.9 * entropy
    assert runs["majority"]["history"]["train_loss"][-1] < runs["soft"]["history"]["train_loss"][-1]


def test_mixup_trains_toward_blended_targets(tmp_path: Path) -> None:
    """With one-hot targets a network can drive its loss towards zero; mixup's blended
    targets have entropy, so the same run with --mixup must end at a higher training loss,
    and a negative --mixup is refused."""
    write_ferplus_tree(tmp_path / "ferplus")
    losses = {}
    for alpha in ("0", "1"):
        run = fit.main(["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
                        "--classes", "happiness,sadness", "--labels", "majority",
                        "--augment", "none", "--net", "paper", "--epochs", "3", "--batch", "8",
                        "--lr", "0.01", "--dropout", "0", "--mixup", alpha,
                        "--out", str(tmp_path / f"mix{alpha}")])
        losses[alpha] = run["history"]["train_loss"][-1]
    assert losses["1"] > losses["0"] + 0.05
    with pytest.raises(SystemExit):
        fit.parse_args(["--mixup", "-0.2"])


def test_distillation_targets_are_the_teachers_served_ensemble(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--teacher: the cached targets are the geometric mean of what each teacher answers as
    the server runs it (its own preprocessing), on the student's classes; a student trained at
    weight 1 cannot fit below the targets' entropy; adjusted or class-lacking teachers are
    refused."""
    from streamfer.model import Predictor
    from training import data as D
    from training import distill

    write_ferplus_tree(tmp_path / "ferplus")
    common = ["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"), "--augment",
              "none", "--net", "paper", "--batch", "8", "--lr", "0.01"]
    teachers = []
    for i, (classes, prep) in enumerate([("happiness,sadness", "none"),
                                         ("sadness,neutral,happiness", "equalize-hist")]):
        teachers.append(tmp_path / f"t{i}.pt")
        fit.main([*common, "--classes", classes, "--preprocess", prep, "--epochs", "1",
                  "--seed", str(i), "--out", str(tmp_path / f"t{i}"), "--export",
                  str(teachers[-1])])
    student = fit.main([*common, "--classes", "happiness,sadness", "--epochs", "3",
                        "--dropout", "0", "--teacher", ",".join(map(str, teachers)),
                        "--teacher-weight", "1", "--out", str(tmp_path / "s"), "--export",
                        str(tmp_path / "s.pt")])
    train = D.load_ferplus(tmp_path / "ferplus", "train", ("happiness", "sadness"), "soft")
    probs = []
    for t in teachers:
        p = Predictor(t, device="cpu", runtime="torchscript")
        out = p.forward(train.images)[:, [p.classes.index("happiness"), p.classes.index("sadness")]]
        probs.append(out / out.sum(1, keepdims=True))
    expected = np.exp(np.mean(np.log(probs), 0))
    expected /= expected.sum(1, keepdims=True)
    cached = distill.ensemble_targets(teachers, train.images, ("happiness", "sadness"),
                                      tmp_path / "s" / "teachers")  # as the run stored them
    assert len(list((tmp_path / "s" / "teachers").glob("teacher-*.npy"))) == 2
    np.testing.assert_allclose(cached, expected, rtol=1e-4, atol=1e-5)
    entropy = float(-(expected * np.log(expected)).sum(1).mean())
    assert student["history"]["train_loss"][-1] >= entropy - 1e-4
    meta = json.loads((tmp_path / "s.json").read_text())
    assert "distilled from" in meta["train_data"]
    with pytest.raises(ValueError, match="no output for"):
        distill.ensemble_targets([teachers[0]], train.images, ("happiness", "neutral"))
    adjusted = export.reexport(teachers[0], tmp_path / "adj.pt",
                               {"tau": 1.0, "prior": {"happiness": 0.7, "sadness": 0.3}})
    with pytest.raises(ValueError, match=r"logit-adjusted.*--unadjusted"):
        distill.ensemble_targets([adjusted], train.images, ("happiness", "sadness"))
    source = export.reexport(adjusted, tmp_path / "src.pt", unadjust=True)
    np.testing.assert_allclose(
        distill.ensemble_targets([source], train.images, ("happiness", "sadness")),
        distill.ensemble_targets([teachers[0]], train.images, ("happiness", "sadness")),
        rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit):
        fit.main([*common, "--teacher", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x")])
    assert "--teacher: no such model file" in capsys.readouterr().err


def test_fer2013_votes_need_ferplus_faces(capsys: pytest.CaptureFixture[str]) -> None:
    """--fer2013-votes adds FER2013's label to FER+ votes (tests/test_evaluate.py pairs and
    counts them); on any other data, or below 0, it is refused with the reason."""
    assert fit.parse_args(["--data", "ferplus", "--fer2013-votes", "2"]).fer2013_votes == 2
    with pytest.raises(SystemExit):
        fit.parse_args(["--data", "fer2013", "--fer2013-votes", "2"])
    assert "it needs --data ferplus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fit.parse_args(["--data", "ferplus", "--fer2013-votes", "-1"])
    assert "must be >= 0" in capsys.readouterr().err
    cfg = fit.parse_args(["--data", "ferplus", "--fer2013-votes", "5",
                          "--fer2013-votes-on", "undecided"])
    assert (cfg.fer2013_votes, cfg.fer2013_votes_on) == (5, "undecided")
    with pytest.raises(SystemExit):
        fit.parse_args(["--data", "ferplus", "--fer2013-votes-on", "undecided"])
    assert "give N > 0" in capsys.readouterr().err


def test_a_smoke_run_on_the_real_data_validates_what_limit_bounds(tmp_path: Path,
                                                                   datasets: Path) -> None:
    """README's smoke run, smaller, through the CLI: `--limit` bounds validation too; the
    final scoring covers every test-time mode on that bounded set; every phase (loading,
    training, validation, the final scoring, export) shows a progress bar; the exported
    model loads with torch.jit.load alone."""
    model = tmp_path / "model.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "training.fit", "--epochs", "1", "--limit", "200",
         "--data-root", str(datasets / "fer2013"), "--out", str(tmp_path / "run"),
         "--export", str(model)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bars = {  # each phase's tqdm description, as its bar prints it ("desc: nn%|")
        "loading": f"load {datasets / 'fer2013' / 'train'}:",
        "training": "epoch 1/1:",
        "validation": "validate 200 faces, tta mirror:",  # the per-epoch pass, bounded
        "final scoring": "validate 200 faces, every tta mode:",  # bounded too
        "export": f"export {model}:",
    }
    for phase, desc in bars.items():
        assert f"{desc} " in proc.stderr and "%|" in proc.stderr.split(desc, 1)[1][:12], phase
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_images"] == 200
    assert {"val_accuracy_ten", "val_accuracy_mirror", "val_accuracy_centre"} <= set(metrics)
    extra = {"metadata.json": ""}
    m = torch.jit.load(str(model), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["metrics"]["val_images"] == 200
    probs = m.predict(torch.randint(0, 256, (3, 1, 48, 48), dtype=torch.uint8), "ten")
    assert probs.shape == (3, 5)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_val_on_selection_trains_without_the_selection_split_and_reports_ferplus_valid(
        tmp_path: Path) -> None:
    from training import data as D

    write_ferplus_tree(tmp_path / "ferplus", per_class=20)
    names = sorted(p.name for p in (tmp_path / "ferplus" / "train").glob("*.png"))
    held = [n for n in names if D.in_selection(n)]
    assert 0 < len(held) < len(names)  # the tree's names put some faces in the split
    model = tmp_path / "sel.pt"
    metrics = fit.main(["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
                        "--classes", "happiness,sadness", "--val-on", "selection",
                        "--net", "paper", "--epochs", "1", "--batch", "8",
                        "--out", str(tmp_path / "run"), "--export", str(model)])
    assert metrics["val_images"] == len(held)
    assert metrics["val_set"].startswith("FER+ train selection split")
    assert 0 <= metrics["report_ferplus_valid_accuracy"] <= 1
    meta = json.loads(model.with_suffix(".json").read_text())
    assert f"({len(names) - len(held)} images" in meta["train_data"]
    assert "selection split held out" in meta["train_data"]
    assert "report_ferplus_valid_accuracy" in meta["metrics"]


def test_val_on_selection_needs_ferplus(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fit.parse_args(["--data", "fer2013", "--val-on", "selection"])
    assert "needs --data ferplus" in capsys.readouterr().err


def test_class_weights_even_out_the_prior_and_keep_the_mean_weight() -> None:
    targets = torch.tensor([[1.0, 0.0, 0.0]] * 6 + [[0.0, 1.0, 0.0]] * 3 + [[0.0, 0.5, 0.5]] * 2)
    assert fit.class_weights(targets, 0) is None
    prior = targets.mean(0)
    for power in (0.5, 1.0):
        w = fit.class_weights(targets, power)
        assert torch.isclose((prior * w).sum(), torch.tensor(1.0))
        assert w[0] < w[1] < w[2]  # the rarer the class, the larger its weight
    w = fit.class_weights(targets, 1.0)
    share = prior * w  # inverse frequency: every class carries the same share of the loss
    torch.testing.assert_close(share, torch.full((3,), 1 / 3))


def test_class_weight_changes_the_loss_the_run_trains_on(tmp_path: Path) -> None:
    write_ferplus_tree(tmp_path / "ferplus")
    # one happy face in three: re-weighting makes the happy faces count for more
    label = tmp_path / "ferplus" / "train" / "label.csv"
    lines = label.read_text().splitlines()
    label.write_text("\n".join(ln for i, ln in enumerate(lines) if i % 2 or i % 3 == 0) + "\n")
    losses = {}
    for cw in ("0", "1"):
        m = fit.main(["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
                      "--classes", "happiness,sadness", "--augment", "none", "--net", "paper",
                      "--epochs", "1", "--batch", "4", "--dropout", "0", "--class-weight", cw,
                      "--out", str(tmp_path / f"cw{cw}")])
        losses[cw] = m["history"]["train_loss"][0]
    assert losses["0"] != losses["1"]


def test_init_from_an_adjusted_model_takes_the_networks_own_logits(
        tmp_path: Path, tiny_model_path: Path) -> None:
    from training.network import FERNet, NetConfig

    prior = {"anger": 0.1, "happiness": 0.3, "sadness": 0.15, "surprise": 0.1, "neutral": 0.35}
    adjusted = export.reexport(tiny_model_path, tmp_path / "adj.pt",
                               {"tau": 1.0, "prior": prior})
    raw = torch.jit.load(str(tiny_model_path)).state_dict()["net.full.bias"]
    shifted = torch.jit.load(str(adjusted)).state_dict()["net.full.bias"]
    assert not torch.allclose(raw, shifted)
    net = FERNet(NetConfig(classes=5, conv_channels=(8, 8), local_channels=4))
    fit.init_from(net, str(adjusted), ("anger", "happiness", "sadness", "surprise", "neutral"))
    torch.testing.assert_close(net.state_dict()["full.bias"], raw)


def test_a_run_from_a_pack_equals_one_from_the_folders_without_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--pack-only writes what a run loads (faces, vote targets, the selection split, FER+
    valid, the teacher's answers); a run from the pack, with the folders and the teacher
    moved away, trains on the same batches to the same weights and the same report as a run
    from the folders; a pack made under other data flags is refused, naming the flag."""
    write_ferplus_tree(tmp_path / "ferplus", per_class=20)
    common = ["--data", "ferplus", "--data-root", str(tmp_path / "ferplus"),
              "--classes", "happiness,sadness", "--net", "paper", "--batch", "8",
              "--threads", "1", "--device", "cpu"]
    teacher = tmp_path / "t.pt"
    fit.main([*common, "--epochs", "1", "--out", str(tmp_path / "t"), "--export", str(teacher)])
    args = [*common, "--labels", "soft", "--augment", "camera", "--val-on", "selection",
            "--teacher", str(teacher), "--teacher-weight", "0.5", "--epochs", "2"]
    direct = fit.main([*args, "--out", str(tmp_path / "direct")])
    pack = tmp_path / "faces.npz"
    assert fit.main([*args, "--pack", str(pack), "--pack-only", "--out", str(tmp_path / "p")]
                    ) == {"pack": str(pack)}
    shutil.move(tmp_path / "ferplus", tmp_path / "elsewhere")
    teacher.unlink()
    packed = fit.main([*args, "--pack", str(pack), "--out", str(tmp_path / "packed")])
    assert json.dumps(packed["history"]) == json.dumps(direct["history"])
    assert packed["report_ferplus_valid_accuracy"] == direct["report_ferplus_valid_accuracy"]
    assert packed["val_images"] == direct["val_images"]
    a = torch.load(tmp_path / "direct" / "last.ckpt", weights_only=False)["net"]
    b = torch.load(tmp_path / "packed" / "last.ckpt", weights_only=False)["net"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0)
    with pytest.raises(SystemExit):
        fit.main([*args, "--labels", "majority", "--pack", str(pack),
                  "--out", str(tmp_path / "other")])
    assert "packed with --labels 'soft', this run has 'majority'" in capsys.readouterr().err
    untaught = [a for a in args if a not in ("--teacher", str(teacher), "--teacher-weight", "0.5")]
    plain = fit.main([*untaught, "--pack", str(pack), "--out", str(tmp_path / "plain")])
    assert plain["history"]["train_loss"] != packed["history"]["train_loss"]  # no teacher
    with pytest.raises(SystemExit):
        fit.parse_args([*args, "--pack-only"])
    for bad in (pack.read_bytes()[: pack.stat().st_size // 2], b"not a pack"):
        (tmp_path / "bad.npz").write_bytes(bad)
        with pytest.raises(SystemExit):
            fit.main([*args, "--pack", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "x")])
        assert "--pack: " in capsys.readouterr().err


def test_folds_from_a_pack_keep_their_subjects(tmp_path: Path) -> None:
    """A pack of a cross-validated folder (no validation set) keeps each face's subject, so
    the run from it makes the same grouped folds and ends on the same fold accuracies."""
    make_faces(tmp_path / "data")
    args = ["--data", "folder", "--data-root", str(tmp_path / "data"), "--classes", "happy,sad",
            "--epochs", "1", "--batch", "8", "--folds", "3", "--threads", "1",
            "--device", "cpu"]
    direct = fit.main([*args, "--out", str(tmp_path / "direct")])
    pack = tmp_path / "cv.npz"
    fit.main([*args, "--pack", str(pack), "--pack-only"])
    shutil.rmtree(tmp_path / "data")
    packed = fit.main([*args, "--pack", str(pack), "--out", str(tmp_path / "packed")])
    assert packed["fold_accuracy"] == direct["fold_accuracy"]
    assert packed["protocol"] == direct["protocol"] and "grouped by subject" in packed["protocol"]
