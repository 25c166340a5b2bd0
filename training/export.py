"""Export: the TorchScript file that is the contract between training and the server.

The saved module takes a batch of faces N x 1 x H x W (uint8 or float, 0-255, at the data's
source size, e.g. 48x48), normalises, cuts the test-time views and returns N x C
probabilities averaged over them. `torch.jit.load` alone runs it. Metadata (class names,
geometry, normalisation, training data, metrics, the reproducing command) rides inside the
file as `metadata.json` and is also written beside it as `<name>.json`.

    python -m training.export models/fer2013-5class.pt   # re-export with this wrapper

Portability: TorchScript compiles the Python body of any torch function the module calls
into the file, as the exporting torch version wrote it. `F.interpolate`'s body names every
resize kernel that version has (torch 2.13's includes Lanczos, which torch 2.11 cannot
load), so the wrapper calls the one aten kernel it needs directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from streamfer import contract
from streamfer.cli import opt, parse
from streamfer.contract import TTA_MODES
from training.augment import corner_offsets
from training.network import FERNet, NetConfig


class Deployed(nn.Module):
    """Network + normalisation + test-time averaging, scriptable."""

    def __init__(self, net: nn.Module, size: int, crop: int, mean: float, std: float,
                 tta: str = "mirror") -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}")
        self.net = net
        self.size = size
        self.crop = crop
        self.mean = mean
        self.std = std
        self.tta = tta
        self.offsets = corner_offsets(size, crop)

    def _views(self, x: torch.Tensor, tta: str) -> torch.Tensor:
        c = (self.size - self.crop) // 2
        centre = x[:, :, c:c + self.crop, c:c + self.crop]
        if tta == "centre":
            return centre
        if tta == "mirror":
            return torch.cat([centre, centre.flip(-1)], 0)
        if tta != "ten":
            raise ValueError("tta must be 'ten', 'mirror' or 'centre'")
        crops = [x[:, :, y:y + self.crop, xo:xo + self.crop] for y, xo in self.offsets]
        five = torch.cat(crops, 0)
        return torch.cat([five, five.flip(-1)], 0)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            # = F.interpolate(mode="bilinear", antialias=True), without its compiled body
            x = torch._C._nn._upsample_bilinear2d_aa(x, [self.size, self.size], False, None)
        return (x - self.mean) / self.std

    @torch.jit.export
    def predict(self, x: torch.Tensor, tta: str) -> torch.Tensor:
        """N x 1 x H x W faces (0-255) -> N x C probabilities averaged over the `tta` views."""
        x = self._normalised(x)
        n = x.shape[0]
        probs = torch.softmax(self.net(self._views(x, tta)), dim=1)
        return probs.reshape(-1, n, probs.shape[1]).mean(0)

    @torch.jit.ignore
    def predict_every_mode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """predict(x, tta) for every mode from one pass over the ten views: the centre crop
        is the fifth of them and its mirror the tenth (training.augment.corner_offsets)."""
        x = self._normalised(x)
        n = x.shape[0]
        views = torch.softmax(self.net(self._views(x, "ten")), dim=1).reshape(10, n, -1)
        return {"ten": views.mean(0), "mirror": views[[4, 9]].mean(0), "centre": views[4]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x, self.tta)


def export(deployed: Deployed, path: str | Path, meta: contract.ModelMeta) -> Path:
    """Script and save `deployed` with its metadata inside and beside it; returns the path.
    The geometry, normalisation and network config in `meta` are replaced by `deployed`'s."""
    meta = meta.with_geometry(input_size=deployed.size, crop=deployed.crop, mean=deployed.mean,
                              std=deployed.std, tta_default=deployed.tta,
                              network=deployed.net.cfg.to_dict())  # enough to rebuild it
    with tqdm(total=2, desc=f"export {path}", unit="step", leave=False) as bar:
        scripted = torch.jit.script(deployed.cpu().eval())
        bar.update()
        written = contract.write(scripted, path, meta)
        bar.update()
    return written


def _log_prior_shift(adjust: dict, classes: tuple[str, ...] | list[str]) -> torch.Tensor:
    """tau x log(prior) per class: what logit adjustment takes from the output bias."""
    prior = torch.tensor([float(adjust["prior"][c]) for c in classes])
    return float(adjust["tau"]) * prior.clamp_min(1e-6).log()


def rebuild(source: str | Path, logit_adjust: dict | None = None,
            weights: str | Path | None = None,
            unadjust: bool = False) -> tuple[Deployed, contract.ModelMeta]:
    """An exported model's eager wrapper and network, with its own weights, and its
    metadata: what re-export and derived artefacts (training/quantize.py) start from.
    `weights`, a training checkpoint of the same run (`last.ckpt` or `best.ckpt`), replaces
    the file's weights: another epoch than the one exported, e.g. the final one.
    `logit_adjust` ({"tau": t, "prior": {class: share}}) shifts the output layer's bias by
    -t log(prior): post-hoc logit adjustment (Menon et al., ICLR 2021), which trades a skewed
    training prior (FER+ is a third neutral) for balanced per-class recall, at no cost per
    face. `unadjust` shifts it back by the file's recorded tau and prior: the network as
    trained, which a teacher, a new tau or another checkpoint's weights start from."""
    old, meta = contract.read(source)
    if meta.network is None or meta.crop is None or meta.mean is None or meta.std is None:
        raise contract.ModelError(f"{source}: its metadata lacks the network config, crop or "
                                  "normalisation needed to rebuild it")
    net_fields = dict(meta.network)
    net_fields["conv_channels"] = tuple(net_fields["conv_channels"])
    net = FERNet(NetConfig(**net_fields))
    if unadjust and not meta.logit_adjust:
        raise ValueError(f"{source} is not logit-adjusted: it is its own source")
    if weights:
        if meta.logit_adjust and not unadjust:
            raise ValueError(f"{source} is logit-adjusted: take the weights into its source "
                             "(training.export --unadjusted)")
        state = torch.load(weights, map_location="cpu", weights_only=False)
        # last.ckpt holds the training state around the weights; best.ckpt the weights alone
        epoch = state.get("epoch") if "net" in state else None
        net.load_state_dict(state.get("net", state))
        meta = replace(meta, metrics={
            "weights": str(weights), "epoch": epoch,
            "note": "weights from a checkpoint: the source's metrics do not apply"})
    else:
        net.load_state_dict({k.removeprefix("net."): v for k, v in old.state_dict().items()})
        if unadjust:  # a checkpoint's weights are as trained already
            with torch.no_grad():
                net.full.bias += _log_prior_shift(meta.logit_adjust, meta.classes)
    if unadjust:
        meta = replace(meta, logit_adjust=None)
    if logit_adjust:
        if meta.logit_adjust:
            raise ValueError(f"{source} is already logit-adjusted; adjust its source instead "
                             "(training.export --unadjusted)")
        with torch.no_grad():
            net.full.bias -= _log_prior_shift(logit_adjust, meta.classes)
        meta = replace(meta, logit_adjust=logit_adjust)
    deployed = Deployed(net, meta.input_size, meta.crop, meta.mean, meta.std, meta.tta_default)
    return deployed.eval(), meta


def reexport(source: str | Path, target: str | Path | None = None,
             logit_adjust: dict | None = None, name: str | None = None,
             notes: dict | None = None, weights: str | Path | None = None,
             unadjust: bool = False) -> Path:
    """Rebuild an exported model's wrapper around its own weights and metadata and save it
    again (in place by default): models exported by older versions of this file pick up
    its fixes without retraining. The probabilities stay the same, unless `logit_adjust`
    is given (see `rebuild`). `name` replaces the metadata's name (the server logs it);
    `notes` are added to the metadata (a shipped model's recipe, how it was chosen).
    `weights` takes another epoch's weights from a checkpoint (see `rebuild`), e.g. to
    measure what choosing the best epoch on the validation split was worth. `unadjust`
    removes the file's logit adjustment (see `rebuild`)."""
    contract.check_notes(notes or {})  # refused before any work
    deployed, meta = rebuild(source, logit_adjust, weights, unadjust)
    meta = meta.with_notes(notes or {})
    if name:
        meta = replace(meta, name=name)
    return export(deployed, target or source, meta)


@dataclass(frozen=True)
class ReexportConfig:
    model: Path = opt(Path(), "an exported .pt file", positional=True)
    out: Path | None = opt(None, "where to write (default: in place)")
    notes: Path | None = opt(None, "a JSON object whose keys are added to the metadata (a "
                             "shipped model's recipe, how it was chosen); then rerun "
                             "training.quantize, as the file's bytes change")
    weights: Path | None = opt(None, "a checkpoint of the same run (runs/NAME/last.ckpt or "
                               "best.ckpt) whose weights replace the model's, e.g. to export "
                               "the final epoch instead of the best")
    unadjusted: bool = opt(False, "remove the file's logit adjustment (training.calibrate), "
                           "giving the network as trained: a --teacher for training.fit, or "
                           "a source for training.calibrate to adjust anew")


def main(argv: list[str] | None = None) -> Path:
    a = parse(ReexportConfig, argv, prog="python -m training.export",
              description=reexport.__doc__)
    notes = json.loads(a.notes.read_text()) if a.notes else None
    if notes is not None and not isinstance(notes, dict):
        raise SystemExit(f"--notes {a.notes}: expected a JSON object")
    if a.unadjusted and a.out is None:
        raise SystemExit("--unadjusted writes a new file: give --out")
    return reexport(a.model, a.out, notes=notes, weights=a.weights, unadjust=a.unadjusted)


if __name__ == "__main__":
    print(main())
