"""Train the paper's CNN (or a variant), evaluate it, and export the TorchScript model.

    python -m training.fit --data fer2013 --data-root ../shared/datasets/fer2013 --net paper
    python -m training.fit --data ckplus --data-root ../shared/datasets/CK+48 --folds 10
    python -m training.fit --data ferplus --data-root ../shared/datasets/ferplus --labels soft \
        --augment camera --preprocess equalize-hist --init models/fer2013-5class.pt --net deep
    torchrun --nproc_per_node=2 -m training.fit ...          # data-parallel (DDP)

The paper's optimiser is SGD, batch 128, momentum 0.9, weight decay 0.0005 with the update
v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v. PyTorch's SGD computes
b <- 0.9 b + (grad + 0.0005 w); w <- w - lr b, which is the same trajectory with lr = eps
(v = -lr b). The learning-rate schedule is ours: linear warm-up, then cosine to zero.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from streamfer import contract
from streamfer.contract import TTA_MODES, TTA_VIEWS
from streamfer.faces import PREPROCESS_MODES, preprocess_faces
from streamfer.model import DEVICES
from streamfer.paths import DEFAULT_DATASETS
from training import data as D
from training import pack as faces_pack
from training.augment import (
    AUGMENT_MODES,
    CAMERA_GROUPS,
    CameraAugment,
    camera_views,
    mixup,
    random_views,
)
from training.cli import fail, need_path, opt, parse_config
from training.distill import ensemble_targets, parse_teachers
from training.export import Deployed, export
from training.network import PRESETS, FERNet, count_parameters, preset
from training.report import save_confusion, save_curves

log = logging.getLogger("training.fit")

@dataclass
class FitConfig:
    data: str = opt("fer2013", "data set layout: FER2013 folders, Kaggle's fer2013.csv, CK+48, "
                    "or any root/<class>/*.png tree", D.DATA_KINDS)
    data_root: str = opt(str(DEFAULT_DATASETS / "fer2013"), "the data set's folder (or the .csv)")
    val_root: str = opt("", "--data folder: a second tree to validate on")
    classes: str = opt("paper5", "paper5 (the paper's five), fer7, ck7, fer8 (FER+'s eight), "
                       "or a comma list")
    labels: str = opt("soft", "FER+ training targets: the crowd's vote distribution over the "
                      "classes, or the majority class only (validation is always majority)",
                      D.LABEL_MODES)
    fer2013_votes: int = opt(0, "--data ferplus: count FER2013's original label on each "
                             "training face as this many votes beside the crowd's ten (faces "
                             "paired by pixels with fer2013/train beside --data-root; 0: off)")
    fer2013_votes_on: str = opt("all", "--fer2013-votes: on every paired face, or only on "
                                "faces whose crowd gives no class more than half of its votes "
                                "(FER2013's label breaks the crowd's tie)", D.FER2013_VOTES_ON)
    preprocess: str = opt("none", "what every face goes through before the network, at "
                          "training and (from the model's metadata) at serving: none, or "
                          "per-face histogram equalisation as fer2013/'s images have",
                          PREPROCESS_MODES)
    net: str = opt("paper", "network preset (training/network.py)", tuple(PRESETS))
    size: int = opt(48, "source image side; every image must have it")
    crop: int = opt(44, "network input side (the paper's 88 of 96 scaled to 44 of 48)")
    dropout: float = opt(0.5, "dropout after each locally-connected layer (the paper's 0.5)")
    zero_head: bool = opt(False, "start the output layer at zero, every class at equal odds "
                          "(training/network.py says why)")
    epochs: int = opt(30, "training epochs (the cosine schedule ends at the last)")
    batch: int = opt(128, "minibatch size (the paper's 128), split across DDP processes")
    lr: float = opt(0.01, "peak learning rate (the paper's epsilon)")
    momentum: float = opt(0.9, "SGD momentum (the paper's)")
    weight_decay: float = opt(5e-4, "L2 weight decay (the paper's)")
    warmup: float = opt(1.0, "epochs of linear learning-rate warm-up before the cosine decay")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing (0: the paper's loss)")
    mixup: float = opt(0.0, "mixup's Beta(a, a) parameter: blend each batch with a shuffled "
                       "copy, images and targets alike (training/augment.py: mixup; 0: off)")
    teacher: str = opt("", "distil: a comma list of exported, unadjusted models whose "
                       "ensemble (geometric mean, each run as served on the clean training "
                       "face) joins the training targets (training/distill.py)")
    teacher_weight: float = opt(0.5, "with --teacher, the ensemble's share of each target; "
                                "the rest is --labels")
    val_on: str = opt("valid", "--data ferplus: choose the best epoch on FER+ valid, or on "
                      "the selection split of FER+ train (training/data.py: in_selection), "
                      "which then leaves the training faces; FER+ valid is then reported "
                      "only, never chosen on", D.VAL_ON)
    class_weight: float = opt(0.0, "weight each class's term of the loss by its training "
                              "prior to the power -P, normalised to a mean weight of 1 over "
                              "the training targets (0: off; 1: every class counts as much "
                              "as the others; 0.5: between)")
    augment: str = opt("paper10", "training views: the paper's five crops x mirror, any shift "
                       "x mirror, the centre crop only, or camera-like views (training/"
                       "augment.py: CameraAugment)", AUGMENT_MODES)
    camera_off: str = opt("", "--augment camera without these groups (ablations), a comma "
                          f"list of: {', '.join(CAMERA_GROUPS)}")
    camera_strength: float = opt(1.0, "--augment camera: widen (> 1) or narrow (< 1) its "
                                 "ranges and chances about the untouched face "
                                 "(training/augment.py: CameraAugment.scaled; 0 to 3)")
    tta: str = opt("mirror", "test-time views for validation and the exported default",
                   TTA_MODES)
    folds: int = opt(0, "k-fold cross-validation when > 1 (no validation set is needed)")
    fold_mode: str = opt("grouped", "grouped: a subject's images in one fold (CK+48); "
                         "stratified: random folds, which leak subjects", D.FOLD_MODES)
    only_folds: str = opt("", "train just these folds, e.g. 0-4,7, to split one "
                          "cross-validation across processes sharing --out")
    patience: int = opt(0, "stop after this many epochs without a better val accuracy (0: off)")
    bf16: bool = opt(True, "bfloat16 autocast where it is fast (CUDA; CPUs with AMX or "
                     "AVX-512 bf16), float32 elsewhere")
    device: str = opt("auto", "auto picks CUDA when torch sees one", DEVICES)
    seed: int = opt(0, "seeds the initialisation, the folds and the augmentation")
    threads: int = opt(0, "torch intra-op threads (0: torch's default)")
    workers: int = opt(0, "processes that draw the training views ahead of the network (0: "
                       "the training process draws them, in the stream earlier runs saw): "
                       "for a GPU, whose steps can outpace one process drawing views (docs/"
                       "BENCHMARKS.md, Training). With N > 0 each step's views are seeded by "
                       "(--seed, epoch, step), so a run's result does not depend on N, but "
                       "differs from the N = 0 stream")
    limit: int = opt(0, "use only this many training images (smoke runs; 0: all); also "
                     "bounds validation unless --val-limit is given")
    val_limit: int = opt(0, "validate on only this many images of the validation set, drawn "
                         "at random once (0: all, or --limit's number when that is given)")
    max_steps: int = opt(0, "end each epoch after this many steps (smoke runs; 0: all)")
    stop_after: int = opt(0, "end this run after this many epochs; continue with --resume")
    ckpt_every_s: float = opt(60.0, "write last.ckpt at most this often, and after the last "
                              "epoch")
    out: str = opt("runs/fer2013-paper", "run folder: checkpoints, metrics.json, PNGs")
    export: str = opt("", "write the best model here as TorchScript (models/NAME.pt)")
    init: str = opt("", "fine-tune from an exported model (.pt); classes matched by name")
    pack: str = opt("", "read the faces, targets and teachers' answers from this file instead "
                    "of the data set folders (made by --pack-only under the same data flags; "
                    "training/pack.py)")
    pack_only: bool = opt(False, "load the faces (and run the teachers) as a run would, write "
                          "them to --pack, and stop")
    resume: bool = opt(False, "continue from --out's last checkpoint (and its finished folds)")
    command: str = field(default="", repr=False)

    @property
    def from_pack(self) -> bool:
        """Whether the faces come from --pack rather than the data set folders."""
        return bool(self.pack) and not self.pack_only


def parse_args(argv: list[str] | None = None) -> FitConfig:
    def check(cfg: FitConfig) -> str | None:
        if not 0 < cfg.crop <= cfg.size:
            return f"--crop {cfg.crop} must be between 1 and --size {cfg.size}"
        if cfg.camera_off:
            try:
                CameraAugment.without(cfg.camera_off)
            except ValueError as e:
                return f"--camera-off: {e}"
        if not 0 <= cfg.teacher_weight <= 1:
            return f"--teacher-weight {cfg.teacher_weight} must be between 0 and 1"
        if cfg.workers < 0:
            return f"--workers {cfg.workers} must be >= 0 (0: draw the views in this process)"
        if cfg.mixup < 0:
            return f"--mixup {cfg.mixup} must be >= 0 (0: off)"
        if cfg.fer2013_votes < 0:
            return f"--fer2013-votes {cfg.fer2013_votes} must be >= 0 (0: off)"
        if cfg.val_on != "valid" and cfg.data != "ferplus":
            return "--val-on selection holds out a split of FER+ train: it needs --data ferplus"
        if not 0 <= cfg.camera_strength <= 3:
            return f"--camera-strength {cfg.camera_strength} must be between 0 and 3"
        if cfg.camera_strength != 1 and cfg.augment != "camera":
            return "--camera-strength scales --augment camera's ranges: give --augment camera"
        if not 0 <= cfg.class_weight <= 2:
            return f"--class-weight {cfg.class_weight} must be between 0 (off) and 2"
        if cfg.fer2013_votes and cfg.data != "ferplus":
            return "--fer2013-votes adds votes to FER+ faces: it needs --data ferplus"
        if cfg.fer2013_votes_on != "all" and not cfg.fer2013_votes:
            return "--fer2013-votes-on says where --fer2013-votes N adds votes: give N > 0"
        if cfg.pack_only and not cfg.pack:
            return "--pack-only writes the faces to --pack FILE: give --pack"
        if cfg.teacher and not cfg.from_pack:  # a pack carries their answers
            try:
                parse_teachers(cfg.teacher)
            except FileNotFoundError as e:
                return str(e)
        return D.classes_problem(cfg.classes)

    return parse_config(FitConfig, argv, program="training.fit", doc=__doc__, check=check)


def load(cfg: FitConfig) -> tuple[D.FaceSet, D.FaceSet | None]:
    """(train, val) for the configured data set; val is None where folds supply it. With
    --val-on selection, val is FER+ train's selection split and train the rest."""
    if cfg.from_pack:
        sets = read_pack(cfg, ("train", "val"))
        return sets["train"], sets.get("val")  # type: ignore[return-value]
    classes = D.resolve_classes(cfg.classes)
    if cfg.data == "fer2013":
        return (D.load_fer2013(cfg.data_root, "train", classes),
                D.load_fer2013(cfg.data_root, "test", classes))
    if cfg.data == "fer2013-csv":
        return (D.load_fer2013_csv(cfg.data_root, "Training", classes),
                D.load_fer2013_csv(cfg.data_root, "PublicTest", classes))
    if cfg.data == "ferplus":
        train = D.load_ferplus(cfg.data_root, "train", classes, cfg.labels, cfg.fer2013_votes,
                               cfg.fer2013_votes_on)
        if cfg.val_on == "selection":
            rest, _ = D.split_selection(train)
            return rest, D.load_selection(cfg.data_root, classes)
        return train, D.load_ferplus(cfg.data_root, "valid", classes, "majority")
    if cfg.data == "ckplus":
        return D.load_ckplus(cfg.data_root, classes), None
    if cfg.data == "folder":
        val = D.load_folder(cfg.val_root, classes, cfg.size) if cfg.val_root else None
        return D.load_folder(cfg.data_root, classes, cfg.size), val
    raise ValueError(f"unknown --data {cfg.data!r}")


def report_set(cfg: FitConfig, classes: tuple[str, ...]) -> D.FaceSet:
    """With --val-on selection, FER+ valid: reported on, never chosen on."""
    if cfg.from_pack:
        report = read_pack(cfg, ("report",))["report"]
        assert report is not None
        return report
    return D.load_ferplus(cfg.data_root, "valid", classes, "majority")


def data_flags(cfg: FitConfig) -> dict[str, object]:
    return {k: getattr(cfg, k) for k in faces_pack.DATA_FLAGS}


def read_pack(cfg: FitConfig, names: tuple[str, ...]) -> dict[str, D.FaceSet | None]:
    try:
        return faces_pack.load(cfg.pack, data_flags(cfg), names)
    except (OSError, ValueError) as e:
        fail("training.fit", f"--pack: {e}")


def write_pack(cfg: FitConfig, train: D.FaceSet, val: D.FaceSet | None) -> Path:
    """--pack-only: the faces as loaded, the teachers' answers on the training faces, and
    FER+ valid where the run would report on it."""
    teachers = parse_teachers(cfg.teacher) if cfg.teacher else []
    if teachers:
        train = replace(train, taught=ensemble_targets(teachers, train.images, train.classes))
    report = report_set(cfg, train.classes) if cfg.val_on == "selection" else None
    return faces_pack.save(cfg.pack, {"train": train, "val": val, "report": report},
                           data_flags(cfg), faces_pack.file_digests(teachers))


def device_and_rank(want: str = "auto") -> tuple[torch.device, int, int]:
    """Join the torchrun process group if launched by torchrun (nccl on GPUs, gloo on CPUs);
    'auto' picks CUDA when present. Each process on a node takes the GPU of its LOCAL_RANK."""
    if want not in DEVICES:
        raise ValueError(f"--device must be one of {DEVICES}, not {want!r}")
    if want == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = want != "cpu" and torch.cuda.is_available()
    if cuda and local >= torch.cuda.device_count():
        raise SystemExit(f"process {local} on this node has no GPU of its own (torch sees "
                         f"{torch.cuda.device_count()}): start at most that many with "
                         "--nproc_per_node, or pass --device cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local), rank, world
    return torch.device("cpu"), rank, world


# Views per forward pass when validating. On a CPU a forward over a few hundred 44x44 views
# keeps the activations in cache; over thousands (256 faces x ten views) the
# locally-connected layers' unfolded patches run to hundreds of MB per tensor and the pass
# runs at a third of the speed. The probabilities do not depend on the chunking.
VALIDATE_VIEWS = 320


@torch.inference_mode()
def predict(deployed: Deployed, images: np.ndarray, tta: str, device: torch.device,
            batch: int = 0) -> np.ndarray:
    """Probabilities from the deployable module, exactly the path the server runs (a
    progress bar per call: test-time averaging over ten views takes a while on a CPU).
    `batch`: faces per forward (0: VALIDATE_VIEWS views' worth)."""
    deployed.eval()
    batch = batch or max(1, VALIDATE_VIEWS // TTA_VIEWS[tta])
    starts = range(0, len(images), batch)
    out = [deployed.predict(torch.from_numpy(images[i:i + batch]).to(device)[:, None], tta)
           for i in tqdm(starts, desc=f"validate {len(images)} faces, tta {tta}", unit="batch",
                         leave=False, mininterval=1)]
    return torch.cat(out).float().cpu().numpy()


@torch.inference_mode()
def predict_every_mode(deployed: Deployed, images: np.ndarray, device: torch.device,
                       batch: int = 0) -> dict[str, np.ndarray]:
    """predict() for every test-time mode from one pass over the ten views (the centre and
    mirror modes are two of them). `batch`: faces per forward (0: VALIDATE_VIEWS views')."""
    deployed.eval()
    batch = batch or max(1, VALIDATE_VIEWS // TTA_VIEWS["ten"])
    parts: dict[str, list[torch.Tensor]] = {}
    for i in tqdm(range(0, len(images), batch), desc=f"validate {len(images)} faces, every "
                  f"tta mode", unit="batch", leave=False, mininterval=1):
        x = torch.from_numpy(images[i:i + batch]).to(device)[:, None]
        for mode, p in deployed.predict_every_mode(x).items():
            parts.setdefault(mode, []).append(p)
    return {mode: torch.cat(p).float().cpu().numpy() for mode, p in parts.items()}


def _fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds this device up rather than slowing it down.

    On CPUs without AVX-512 bf16/AMX, bf16 convolutions fall back to reference GEMMs that
    run ~20x slower than float32, so autocast is only worth it where oneDNN has bf16 kernels.
    """
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lr_at(cfg: FitConfig, step: float, steps_per_epoch: int) -> float:
    """Linear warm-up for `warmup` epochs, then cosine decay to zero at the last step."""
    warm = cfg.warmup * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1.0, total - warm)))


def init_from(net: FERNet, path: str, classes: tuple[str, ...]) -> tuple[float, float]:
    """Copy an exported model's weights into `net` (same preset); the output layer's rows are
    matched by class name, so FER2013's five classes seed CK+48's four or seven. Returns the
    exported normalisation, which the copied weights expect."""
    source, meta = contract.read(path)
    state = {k.removeprefix("net."): v for k, v in source.state_dict().items()
             if k.startswith("net.")}
    own = net.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape == value.shape and not key.startswith("full."):
            own[key] = value
    if meta.logit_adjust:  # fine-tune the network's own logits, not a post-hoc shift of them
        shift = torch.tensor([float(meta.logit_adjust["prior"][c]) for c in meta.classes])
        state["full.bias"] = state["full.bias"] + float(
            meta.logit_adjust["tau"]) * shift.clamp_min(1e-6).log()
    rows = {c: i for i, c in enumerate(meta.classes)}
    for i, cls in enumerate(classes):
        if cls in rows:
            own["full.weight"][i] = state["full.weight"][rows[cls]]
            own["full.bias"][i] = state["full.bias"][rows[cls]]
    net.load_state_dict(own)
    log.info("initialised from %s (classes %s)", path, meta.classes)
    if meta.mean is None or meta.std is None:
        raise contract.ModelError(f"{path}: its metadata has no normalisation (mean, std)")
    return meta.mean, meta.std


@dataclass
class TrainSet:
    """What the epochs draw from: the faces as the augmentation takes them, labels, target
    distributions, and the validation faces as the network sees them."""

    images: torch.Tensor  # N x 1 x S x S uint8 (camera views: before the preprocessing)
    labels: torch.Tensor
    targets: torch.Tensor  # N x C: FER+'s vote shares, a teacher blend, or one-hot
    camera: CameraAugment | None  # camera views, which apply the preprocessing themselves
    val_images: np.ndarray | None
    class_weights: torch.Tensor | None = None  # C: --class-weight's loss weights, or None


def class_weights(targets: torch.Tensor, power: float) -> torch.Tensor | None:
    """Per-class loss weights prior^-power (the prior: the mean training target), scaled so
    the mean weight over the training targets is 1 and the learning rate keeps its meaning.
    None for power 0: the plain loss, bit for bit."""
    if not power:
        return None
    prior = targets.double().mean(0).clamp_min(1e-6)
    w = prior ** -power
    return (w / (prior * w).sum()).float()


def train_set(cfg: FitConfig, train: D.FaceSet, val: D.FaceSet | None, out: Path,
              rank: int) -> TrainSet:
    camera = (CameraAugment.without(cfg.camera_off).scaled(cfg.camera_strength)
              if cfg.augment == "camera" else None)
    if camera:  # degradations come first, then the preprocessing, as on the serving path
        images = torch.from_numpy(train.images)[:, None]
    else:
        images = torch.from_numpy(preprocess_faces(train.images, cfg.preprocess))[:, None]
    # Targets are distributions: FER+'s vote shares (--labels soft), else one-hot labels.
    targets = torch.from_numpy(train.soft if train.soft is not None else
                               np.eye(len(train.classes), dtype=np.float32)[train.labels])
    if cfg.teacher:
        taught = train.taught if train.taught is not None else ensemble_targets(
            parse_teachers(cfg.teacher), train.images, train.classes,
            out / "teachers" if rank == 0 else None)
        targets = (1 - cfg.teacher_weight) * targets + cfg.teacher_weight * torch.from_numpy(taught)
    val_images = None if val is None else preprocess_faces(val.images, cfg.preprocess)
    weights = class_weights(targets, cfg.class_weight)
    if weights is not None:
        log.info("class weights %s", dict(zip(train.classes, weights.tolist(), strict=True)))
    return TrainSet(images, torch.from_numpy(train.labels), targets, camera, val_images, weights)


def epoch_order(cfg: FitConfig, n: int, epoch: int, rank: int, world: int,
                gen: torch.Generator | None = None) -> torch.Tensor:
    """This rank's share of the epoch's shuffled face indices (`gen`: the epoch's generator,
    which then goes on to draw the views; else a fresh one seeded the same way)."""
    if gen is None:
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen)[rank::world]


def step_indices(cfg: FitConfig, order: torch.Tensor, step: int, world: int) -> torch.Tensor:
    per_rank = cfg.batch // world  # the paper's batch of 128 is the global batch
    return order[step * per_rank:(step + 1) * per_rank]


def draw_batch(cfg: FitConfig, data: TrainSet, idx: torch.Tensor, gen: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step's training views (0-255 floats, before the normalisation), labels and
    targets (smoothed, mixed up), on the CPU."""
    if data.camera:
        x = camera_views(data.images[idx], cfg.crop, data.camera, gen,
                         equalize=cfg.preprocess == "equalize-hist")
    else:
        x = random_views(data.images[idx], cfg.crop, cfg.augment, gen)
    target = data.targets[idx]
    if cfg.label_smoothing:
        target = target * (1 - cfg.label_smoothing) + cfg.label_smoothing / target.shape[1]
    x, target = mixup(x.float(), target, cfg.mixup, gen)
    return x, data.labels[idx], target


class DrawnBatches(torch.utils.data.Dataset):
    """Every remaining step's batch of a run, in order, for a DataLoader's --workers processes
    to draw ahead of the training loop. Step s of epoch e draws from a generator seeded by
    (seed, e, s) alone, so any number of workers, and a --resume'd run, give the same batches."""

    def __init__(self, cfg: FitConfig, data: TrainSet, first_epoch: int, last_epoch: int,
                 steps: int, rank: int, world: int) -> None:
        self.cfg, self.data, self.first, self.steps = cfg, data, first_epoch, steps
        self.rank, self.world = rank, world
        self.length = (last_epoch - first_epoch) * steps
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, order), per worker

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, step = self.first + i // self.steps, i % self.steps
        if self._order is None or self._order[0] != epoch:
            self._order = epoch, epoch_order(self.cfg, len(self.data.labels), epoch,
                                             self.rank, self.world)
        seed = ((self.cfg.seed * 100_003 + epoch) * 1_000_003 + step) % 2**63
        gen = torch.Generator().manual_seed(seed)
        return draw_batch(self.cfg, self.data, step_indices(self.cfg, self._order[1], step,
                                                            self.world), gen)


PREFETCH = 4  # batches each --workers process draws ahead


def drawn_batches(cfg: FitConfig, data: TrainSet, first_epoch: int, last_epoch: int,
                  steps: int, rank: int, world: int, device: torch.device
                  ) -> Iterator[tuple[torch.Tensor, ...]] | None:
    """--workers' batches for epochs [first, last) as one iterator (None with --workers 0)."""
    if not cfg.workers or last_epoch <= first_epoch:
        return None
    loader = torch.utils.data.DataLoader(
        DrawnBatches(cfg, data, first_epoch, last_epoch, steps, rank, world), batch_size=None,
        num_workers=cfg.workers, prefetch_factor=PREFETCH, pin_memory=device.type == "cuda",
        # its own generator: starting the workers must not draw from the global one, which
        # dropout draws from and a checkpoint restores
        generator=torch.Generator().manual_seed(cfg.seed))
    return iter(loader)


@dataclass
class Progress:
    """What a checkpoint carries besides the weights: enough to resume exactly."""

    history: dict = field(default_factory=lambda: {
        "epoch": [], "train_loss": [], "train_acc": [], "val_acc": [], "lr": []})
    best: float = -1.0
    epoch: int = 0  # epochs done
    stale: int = 0  # epochs since the best validation accuracy


def resume(ckpt: Path, net: FERNet, opt: torch.optim.Optimizer,
           device: torch.device) -> Progress:
    """Weights, optimiser, progress and RNG state from the last checkpoint."""
    state = torch.load(ckpt, map_location=device, weights_only=False)
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    progress = Progress(state["history"], state["best"], state["epoch"], state["stale"])
    torch.set_rng_state(state["rng"])  # dropout continues exactly where it stopped
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    log.info("resumed from %s at epoch %d (best val %.4f)", ckpt, progress.epoch,
             progress.best)
    return progress


def save_checkpoint(ckpt: Path, net: FERNet, opt: torch.optim.Optimizer, progress: Progress,
                    device: torch.device) -> None:
    save_atomically({"net": net.state_dict(), "opt": opt.state_dict(),
                     "history": progress.history, "best": progress.best,
                     "epoch": progress.epoch, "stale": progress.stale,
                     "rng": torch.get_rng_state(),
                     "cuda_rng": (torch.cuda.get_rng_state(device)
                                  if device.type == "cuda" else None)}, ckpt)


def train_epoch(cfg: FitConfig, model: torch.nn.Module, opt: torch.optim.Optimizer,
                data: TrainSet, epoch: int, steps: int, norm: tuple[float, float],
                device: torch.device, rank: int, world: int,
                drawn: Iterator[tuple[torch.Tensor, ...]] | None = None) -> tuple[float, float]:
    """One pass over this rank's share of the training faces; (mean loss, accuracy).
    `drawn`: the epoch's batches from --workers' processes (DrawnBatches), else None to draw
    them here from the epoch's generator."""
    model.train()
    # One seed per epoch: a --resume'd run sees the same data as an uninterrupted one.
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = epoch_order(cfg, len(data.labels), epoch, rank, world, gen)
    use_bf16 = cfg.bf16 and _fast_bf16(device)
    mean, std = norm
    weights = None if data.class_weights is None else data.class_weights.to(device)
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0,
               leave=False, mininterval=5)
    for step in bar:
        if drawn is None:
            x, y, target = draw_batch(cfg, data, step_indices(cfg, order, step, world), gen)
        else:
            x, y, target = next(drawn)
        x = (x.to(device, non_blocking=True).float() - mean) / std
        y = y.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, epoch * steps + step, steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(x)
        # cross-entropy against a distribution (= the usual loss for one-hot targets)
        if weights is not None:
            target = target * weights
        loss = -(target * F.log_softmax(logits.float(), 1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
    return total_loss / seen, correct / seen


def train_one(cfg: FitConfig, train: D.FaceSet, val: D.FaceSet | None, out: Path,
              device: torch.device, rank: int, world: int,
              on_epoch: Callable[[int, np.ndarray], None] | None = None
              ) -> tuple[Deployed, dict]:
    """Train one model; returns the best (or last, without val) deployable module + history.
    `on_epoch(epochs done, val probabilities)` sees each validation (training.search scores
    and prunes trials through it; an exception it raises ends the run)."""
    torch.manual_seed(cfg.seed)
    net_cfg = preset(cfg.net, crop=cfg.crop, classes=len(train.classes), dropout=cfg.dropout,
                     zero_head=cfg.zero_head)
    net = FERNet(net_cfg).to(device)
    seen_faces = preprocess_faces(train.images, cfg.preprocess)  # what the network sees
    mean, std = float(seen_faces.mean()), float(seen_faces.std())
    del seen_faces
    if cfg.init:
        mean, std = init_from(net, cfg.init, train.classes)
    deployed = Deployed(net, cfg.size, cfg.crop, mean, std, cfg.tta).to(device)
    model: torch.nn.Module = net
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    data = train_set(cfg, train, val, out, rank)
    steps = len(train) // cfg.batch or 1
    if cfg.max_steps:
        steps = min(steps, cfg.max_steps)
    ckpt = out / "last.ckpt"
    progress = resume(ckpt, net, opt, device) if cfg.resume and ckpt.exists() else Progress()
    last_save = time.monotonic()
    start = progress.epoch
    end = min(cfg.epochs, start + cfg.stop_after) if cfg.stop_after else cfg.epochs
    drawn = drawn_batches(cfg, data, start, end, steps, rank, world, device)
    for epoch in range(start, end):
        loss, acc = train_epoch(cfg, model, opt, data, epoch, steps, (mean, std), device, rank,
                                world, drawn)
        val_acc = float("nan")
        if val is not None and rank == 0:
            assert data.val_images is not None
            probs = predict(deployed, data.val_images, cfg.tta, device)
            val_acc = float((probs.argmax(1) == val.labels).mean())
            if on_epoch:
                on_epoch(epoch + 1, probs)
        for key, value in (("epoch", epoch + 1), ("train_loss", loss), ("train_acc", acc),
                           ("val_acc", val_acc), ("lr", opt.param_groups[0]["lr"])):
            progress.history[key].append(value)
        progress.epoch = epoch + 1
        stop = torch.zeros(1)
        if rank == 0:
            log.info("epoch %d/%d loss %.4f train acc %.4f val acc %.4f", epoch + 1, cfg.epochs,
                     loss, acc, val_acc)
            if val is not None and val_acc > progress.best:
                progress.best, progress.stale = val_acc, 0
                save_atomically(net.state_dict(), out / "best.ckpt")
            elif val is not None:
                progress.stale += 1
            stop[0] = float(bool(cfg.patience) and progress.stale >= cfg.patience)
            # Checkpoints cost a few MB each: on short epochs (CK+ folds) writing one per
            # epoch would cost more than the epoch, so they are written by the clock.
            if stop.item() or epoch + 1 == end or time.monotonic() - last_save >= cfg.ckpt_every_s:
                save_checkpoint(ckpt, net, opt, progress, device)
                last_save = time.monotonic()
        if world > 1:
            dist.broadcast(stop, 0)
        if stop.item():
            log.info("early stop: no better val accuracy for %d epochs", cfg.patience)
            break
    if rank == 0 and val is not None and (out / "best.ckpt").exists():
        net.load_state_dict(torch.load(out / "best.ckpt", map_location=device))
    return deployed, progress.history


def save_atomically(obj: object, path: Path) -> None:
    """torch.save through a temporary file and a rename, so that a run killed while writing
    (a machine taken back, an out-of-memory kill) keeps its previous checkpoint whole: --resume
    then loses one interval of training, never the run."""
    contract.replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def folds_of(cfg: FitConfig, faces: D.FaceSet) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """k (train, test) index pairs: by subject where the data has subjects, else stratified."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if cfg.fold_mode == "grouped" and faces.groups is not None:
        splitter = StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
        return list(splitter.split(faces.images, faces.labels, faces.groups)), \
            f"{cfg.folds}-fold, grouped by subject"
    splitter = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    return list(splitter.split(faces.images, faces.labels)), \
        f"{cfg.folds}-fold, random stratified (subjects may appear in train and test)"


def chosen_folds(spec: str, folds: int) -> list[int]:
    """Fold indices from "0-4,7" (all folds when empty).

    One cross-validation can be shared by processes or machines that write to the same --out,
    each with its own --only-folds; a last run with --resume and no --only-folds then finds
    every fold trained and only evaluates, writing the metrics for all of them.
    """
    if not spec:
        return list(range(folds))
    picked: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        try:
            picked.update(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise SystemExit(f"--only-folds {spec!r}: expected e.g. 0-4 or 0,3,5") from None
    if not picked or min(picked) < 0 or max(picked) >= folds:
        raise SystemExit(f"--only-folds {spec!r}: folds are numbered 0 to {folds - 1}")
    return sorted(picked)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    if cfg.from_pack:
        need_path("training.fit", cfg.pack, "--pack", "the faces pack")
    else:
        need_path("training.fit", cfg.data_root, "--data-root", f"the {cfg.data} data set")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, rank, world = device_and_rank(cfg.device)
    train, val = load(cfg)
    if cfg.pack_only:
        return {"pack": str(write_pack(cfg, train, val))}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.limit:
        keep = np.random.default_rng(cfg.seed).permutation(len(train))[:cfg.limit]
        train = train.subset(np.sort(keep))
    val_limit = cfg.val_limit or cfg.limit
    if val is not None and val_limit and val_limit < len(val):
        keep = np.random.default_rng(cfg.seed + 1).permutation(len(val))[:val_limit]
        val = val.subset(np.sort(keep))
    log.info("train %d images %s; val %s; device %s x%d", len(train), train.counts(),
             len(val) if val is not None else "folds", device, world)
    t0 = time.time()
    metrics: dict = {"config": asdict(cfg), "classes": list(train.classes)}
    partial = False  # --only-folds short of every fold: no metrics.json, it must cover all
    if cfg.folds > 1:
        splits, protocol = folds_of(cfg, train)
        chosen = chosen_folds(cfg.only_folds, cfg.folds)
        accs, pooled_true, pooled_pred = [], [], []
        tta_accs: dict[str, list[float]] = {}
        for k, (tr, te) in enumerate(splits):
            if k not in chosen:
                continue
            fold_out = out / f"fold{k}"
            fold_out.mkdir(exist_ok=True)
            deployed, _ = train_one(cfg, train.subset(tr), None, fold_out, device, rank, world)
            if rank == 0:
                seen = preprocess_faces(train.images[te], cfg.preprocess)
                by_mode = predict_every_mode(deployed, seen, device)
                for tta in TTA_MODES:  # the no-test-time-averaging ablation comes free
                    p = by_mode[tta].argmax(1)
                    tta_accs.setdefault(tta, []).append(float((p == train.labels[te]).mean()))
                pred = by_mode[cfg.tta].argmax(1)
                accs.append(float((pred == train.labels[te]).mean()))
                pooled_true += train.labels[te].tolist()
                pooled_pred += pred.tolist()
                log.info("fold %d/%d: %d test images, accuracy %.4f", k + 1, cfg.folds,
                         len(te), accs[-1])
        partial = len(chosen) < cfg.folds
        if partial:
            log.info("trained folds %s of %d; for the metrics of all folds, rerun with --resume "
                     "and without --only-folds once every fold is trained", chosen, cfg.folds)
            metrics.update(only_folds=chosen, fold_accuracy=accs)
        elif rank == 0:
            metrics.update(protocol=protocol, images=len(train), fold_accuracy=accs,
                           accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
                           **{f"accuracy_{t}": float(np.mean(a)) for t, a in tta_accs.items()},
                           pooled_accuracy=float(np.mean(np.array(pooled_true) ==
                                                         np.array(pooled_pred))))
            save_confusion(pooled_true, pooled_pred, train.classes, out / "confusion.png",
                           f"{cfg.net}, {protocol}")
    else:
        deployed, history = train_one(cfg, train, val, out, device, rank, world)
        if rank == 0:
            metrics.update(history=history, params=count_parameters(deployed.net),
                           protocol="train on the training split, select and report on val")
            save_curves(history, out / "curves.png", cfg.net)
            if val is not None:
                metrics["val_images"] = len(val)
                seen = preprocess_faces(val.images, cfg.preprocess)
                preds = {tta: p.argmax(1) for tta, p in
                         predict_every_mode(deployed, seen, device).items()}
                for tta, p in preds.items():
                    metrics[f"val_accuracy_{tta}"] = float((p == val.labels).mean())
                metrics["val_accuracy"] = metrics[f"val_accuracy_{cfg.tta}"]
                pred = preds[cfg.tta]
                save_confusion(val.labels.tolist(), pred.tolist(), train.classes,
                               out / "confusion.png", f"{cfg.net} on val, tta={cfg.tta}")
            if cfg.val_on == "selection":  # chosen on the selection split: FER+ valid reports
                metrics["val_set"] = "FER+ train selection split, majority protocol"
                valid = report_set(cfg, train.classes)
                pred = predict(deployed, preprocess_faces(valid.images, cfg.preprocess),
                               cfg.tta, device).argmax(1)
                metrics["report_ferplus_valid_accuracy"] = float((pred == valid.labels).mean())
            if cfg.export:
                export(deployed, cfg.export, contract.ModelMeta(
                    name=Path(cfg.export).stem, classes=tuple(train.classes),
                    preprocess=cfg.preprocess, params=metrics["params"],
                    train_data=f"{cfg.data}:{cfg.data_root} ({len(train)} images"
                               + (f", {cfg.labels} labels" if cfg.data == "ferplus" else "")
                               + (", selection split held out" if cfg.val_on == "selection"
                                  else "")
                               + (f", class weight {cfg.class_weight:g}" if cfg.class_weight
                                  else "")
                               + (f", distilled from {cfg.teacher} at weight "
                                  f"{cfg.teacher_weight:g})" if cfg.teacher else ")"),
                    metrics={k: v for k, v in metrics.items()
                             if k.startswith(("val_", "report_"))},
                    command=cfg.command,
                ))
                log.info("exported %s", cfg.export)
    if rank == 0 and not partial:
        metrics["seconds"] = time.time() - t0
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log.info("metrics: %s", {k: v for k, v in metrics.items()
                                 if k.endswith("accuracy") or k.startswith("val_acc")})
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
