"""Training of the lesion synthesis models (thesis §4.3): ``brainldm train synthesis``.

A synthesis run trains, in its own sub-folders (each a normal run folder with checkpoints,
metrics and status, mirrored into the run's own ``status.json``/``metrics.jsonl``)::

    <run>/autoencoder        the image first stage (``autoencoder`` section), unless --autoencoder
                             or --init BUNDLE gives one
    <run>/denoiser           G4 only: the denoiser that stays frozen (``denoiser`` section), unless
                             --init gives a pretrained one (the thesis used its detection denoiser)
    <run>/mask_autoencoder   the mask autoencoder (``synthesis.mask_autoencoder``)
    <run>/synthesis          the mask-conditioned denoiser (G3/G3wide) or the structural encoder (G4)
    <run>/bundle             the synthesis model bundle (:class:`~brainldm.nets.synthesis_bundle.SynthesisBundle`)

Training pairs are the training subjects' slices (2D) or patches (3D) with their two-channel
one-hot (brain, lesion) conditioning mask (:func:`brainldm.synth.lesions.conditioning_mask`), the
lesion being the subject's tumour label (all labels > 0). Both latents are computed once with
the frozen first stages (image latents shared with detection runs in the cache) and scaled by
``1 / std``. The conditioned denoiser minimises the noise-prediction loss of the detection
denoiser (Eq. 2.31) with the scaled mask latent of the same window as its condition::

    L = || eps - eps_theta(z_t, t, y, condition = s_m * E_mask(M)) ||^2

with the healthy / diseased label ``y`` of the window dropped to the null label with probability
``label_dropout``. For G4 only the structural encoder is optimised; the frozen denoiser's
weights never change (their gradients are not even computed).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainldm.data.lesion_geometry import lesion_components
from brainldm.data.preprocess import PreprocessConfig
from brainldm.errors import BrainLDMError, ModelBundleError, SettingsError
from brainldm.nets.autoencoder import build_autoencoder
from brainldm.nets.conditioning import ConditionedDenoiser, StructuralEncoder, freeze
from brainldm.nets.config import AutoencoderConfig, ConditioningConfig, DenoiserConfig
from brainldm.nets.denoiser import build_denoiser
from brainldm.synth.lesions import conditioning_mask, place_lesion, resize_lesion
from brainldm.train.autoencoder import AutoencoderTrainer
from brainldm.train.config import (
    MaskAutoencoderStage,
    SynthesisDenoiserStage,
    TrainingConfig,
)
from brainldm.train.data import (
    LatentRecord,
    VolumeRecord,
    _safe_name,
    encode_record,
    extract_box,
    latent_scale_of,
    prepare_training_data,
    random_start,
)
from brainldm.train.denoiser import DenoiserTrainer, FirstStageSource
from brainldm.train.distributed import wrap_ddp
from brainldm.train.rundir import RunDir, atomic_write_bytes, atomic_write_text
from brainldm.train.state import ExponentialMovingAverage, load_checkpoint

log = logging.getLogger("brainldm.train")

MASK_FIRST_STAGE_FILE = "mask_autoencoder.pt"
BACKBONE_FILE = "backbone.pt"
SUB_RUNS = ("autoencoder", "denoiser", "mask_autoencoder", "synthesis")


# --------------------------------------------------------------------------- losses


def lesion_weighted_l1(reconstruction: torch.Tensor, target: torch.Tensor, lesion_weight: float) -> torch.Tensor:
    """Mean absolute error of a two-channel mask reconstruction with lesion voxels up-weighted.

    A voxel counts ``lesion_weight`` times where the target marks lesion (channel 1) or the
    reconstruction does (> 0.5: false lesions cost as much as lost ones), once elsewhere; the
    weights are normalised so that ``lesion_weight = 1`` is the plain L1 of the thesis.
    """
    lesion = (target[:, 1:2] > 0.5) | (reconstruction[:, 1:2].detach() > 0.5)
    weights = 1.0 + (float(lesion_weight) - 1.0) * lesion.float()
    error = (reconstruction - target).abs()
    return (error * weights).sum() / (weights.sum() * target.shape[1])


def lesion_dice(reconstruction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """``(sum of 2|A∩B|, sum of |A|+|B|)`` of the lesion channel thresholded at 0.5 (for a Dice over a set)."""
    a = reconstruction[:, 1] > 0.5
    b = target[:, 1] > 0.5
    return float(2 * (a & b).sum()), float(a.sum() + b.sum())


# --------------------------------------------------------------------------- mask patches


@dataclass
class MaskPatch:
    subject: int
    start: tuple[int, ...]
    flip: bool
    slice_index: int = -1
    small: tuple[int, float] | None = None  # (lesion shape, diameter) replacing the lesion
    seed: int = 0


def _lesion_library(records: list[VolumeRecord], spatial_dims: int, limit: int = 64,
                    min_voxels: int = 4) -> list[np.ndarray]:
    """Real lesion shapes of the training labels: 3D component boxes, or for 2D the largest
    axial cross-section of each component (boolean boxes, largest lesions first)."""
    shapes: list[np.ndarray] = []
    for record in records:
        if record.tumour is None or not np.asarray(record.tumour).any():
            continue
        for _, part in lesion_components(np.asarray(record.tumour), min_voxels=min_voxels):
            if spatial_dims == 3:
                shapes.append(part)
            else:
                z = int(np.argmax(part.sum(axis=(0, 1))))
                shapes.append(part[:, :, z])
            if len(shapes) >= limit:
                return shapes
    return shapes


class MaskPatchSampler:
    """Training windows of the conditioning mask: slices (2D) or boxes (3D), ``lesion_fraction``
    of them holding a lesion, ``small_fraction`` with a real lesion resized to a random small
    diameter placed in the brain of the window (see :class:`MaskAutoencoderStage`)."""

    def __init__(self, records: list[VolumeRecord], settings: MaskAutoencoderStage, rng: np.random.Generator,
                 augment: bool = True):
        if not records:
            raise BrainLDMError("No subjects to draw mask training windows from.")
        self.records = records
        self.patch_size = tuple(int(s) for s in settings.patch_size)
        self.spatial_dims = len(self.patch_size)
        self.flip_prob = settings.flip_prob if augment else 0.0
        self.lesion_fraction = settings.lesion_fraction
        self.small_fraction = settings.small_lesion_fraction if augment else 0.0
        self.diameters = tuple(float(d) for d in settings.small_lesion_diameters)
        self.rng = rng
        self.shapes = _lesion_library(records, self.spatial_dims)
        self._brain_slices, self._lesion_slices, self._lesion_voxels = [], [], []
        for record in records:
            mask = np.asarray(record.mask)
            tumour = np.zeros(mask.shape, bool) if record.tumour is None else np.asarray(record.tumour, dtype=bool)
            if self.spatial_dims == 2:
                slices = np.flatnonzero(mask.any(axis=(0, 1)))
                self._brain_slices.append(slices if slices.size else np.arange(mask.shape[2]))
                self._lesion_slices.append(np.flatnonzero(tumour.any(axis=(0, 1))))
            else:
                voxels = np.argwhere(tumour)
                self._lesion_voxels.append(voxels[:: max(1, len(voxels) // 4096)])
        self._with_lesion = [i for i in range(len(records)) if (
            self._lesion_slices[i].size if self.spatial_dims == 2 else len(self._lesion_voxels[i]))]

    def _start_around(self, voxel: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...]:
        """A window start whose window holds ``voxel`` (in-plane / in-volume)."""
        start = []
        for v, size, full in zip(voxel, self.patch_size, shape):
            low, high = max(int(v) - size + 1, min(0, full - size)), min(int(v), max(full - size, 0))
            start.append(int(self.rng.integers(low, high + 1)) if high >= low else int(v) - size // 2)
        return tuple(start)

    def draw(self) -> MaskPatch:
        want_lesion = bool(self._with_lesion) and bool(self.rng.random() < self.lesion_fraction)
        small = None
        if self.shapes and self.rng.random() < self.small_fraction:
            want_lesion = False  # a brain window; the small lesion replaces whatever is there
            small = (int(self.rng.integers(len(self.shapes))), float(self.rng.uniform(*self.diameters)))
        pool = self._with_lesion if want_lesion else list(range(len(self.records)))
        index = int(pool[self.rng.integers(len(pool))])
        record = self.records[index]
        shape = record.shape
        slice_index = -1
        if self.spatial_dims == 2:
            if want_lesion:
                slice_index = int(self.rng.choice(self._lesion_slices[index]))
                ys, xs = np.nonzero(np.asarray(record.tumour)[:, :, slice_index])
                k = int(self.rng.integers(len(ys)))
                start = self._start_around(np.array([ys[k], xs[k]]), shape[:2])
            else:
                slices = self._brain_slices[index]
                slice_index = int(slices[self.rng.integers(len(slices))])
                start = tuple(random_start(self.rng, shape[a], self.patch_size[a]) for a in range(2))
        else:
            if want_lesion:
                voxels = self._lesion_voxels[index]
                start = self._start_around(voxels[self.rng.integers(len(voxels))], shape)
            else:
                start = tuple(random_start(self.rng, shape[a], self.patch_size[a]) for a in range(3))
        flip = bool(self.rng.random() < self.flip_prob)
        return MaskPatch(index, start, flip, slice_index, small, int(self.rng.integers(2**31)))

    def extract(self, patch: MaskPatch) -> tuple[np.ndarray, np.ndarray]:
        """``(conditioning mask (2, *P) float32, brain (*P) bool)`` of one window."""
        record = self.records[patch.subject]
        brain, tumour = np.asarray(record.mask), record.tumour
        tumour = np.zeros(brain.shape, bool) if tumour is None else np.asarray(tumour)
        if self.spatial_dims == 2:
            brain, tumour = brain[..., patch.slice_index], tumour[..., patch.slice_index]
        brain = extract_box(brain, patch.start, self.patch_size, False)
        lesion = extract_box(tumour, patch.start, self.patch_size, False)
        if patch.small is not None and brain.any():
            shape, diameter = patch.small
            try:
                resized = resize_lesion(self.shapes[shape], diameter)
                lesion = place_lesion(resized.labels, brain, rng=patch.seed).labels > 0
            except SettingsError:
                pass  # does not fit this window's brain: keep the window's own mask
        cond = conditioning_mask(brain, lesion)
        if patch.flip:
            cond, brain = cond[:, ::-1].copy(), brain[::-1].copy()
        return cond, brain

    def batch(self, patches: list[MaskPatch]) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.extract(p) for p in patches]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch([self.draw() for _ in range(batch_size)])


# --------------------------------------------------------------------------- mask autoencoder


def _require_synthesis(config: TrainingConfig) -> None:
    if config.synthesis is None:
        raise SettingsError(f"The configuration {config.name!r} has no 'synthesis' section. Use a synthesis preset "
                            "(synth-2d, thesis-synth-2d, thesis-synth-2d-g3wide, tiny-synth) or add one.")


class MaskAutoencoderTrainer(AutoencoderTrainer):
    """Trains the mask autoencoder (``synthesis.mask_autoencoder``): lesion-weighted L1 + KL
    (+ optional hinge patch discriminator, Table B.4). Validation: ``val_loss`` = the same
    weighted L1 on fixed validation windows (half of them with a lesion), ``val_lesion_dice``
    (lesion channel thresholded at 0.5) and ``val_lesions_kept`` (fraction of windows whose
    lesion is still found, overlapping, after reconstruction)."""

    stage = "mask_autoencoder"

    def __init__(self, config: TrainingConfig, data_dir, run_dir, init_weights: dict | None = None, **kwargs):
        kwargs.pop("init", None)
        _require_synthesis(config)
        super().__init__(config, data_dir, run_dir, init=None, **kwargs)
        self.init_weights = init_weights

    @property
    def settings(self) -> MaskAutoencoderStage:
        return self.config.synthesis.mask_autoencoder

    def model_settings(self, config: dict[str, Any]) -> dict[str, Any] | None:
        section = (config.get("synthesis") or {}).get("mask_autoencoder")
        return section.get("model") if isinstance(section, dict) else None

    def prepare_data(self) -> None:
        if self.data_dir is None:
            raise BrainLDMError("No data folder given: the mask autoencoder needs training subjects.")
        data = prepare_training_data(self.data_dir, self.config.preprocess, self.config.split, self.cache_folder(),
                                     self.context, self.config.max_subjects, should_stop=self.stop_requested,
                                     progress=self._data_progress)
        self.data = data
        self.skipped = list(data.skipped)
        self.data_summary = {**data.summary(), "n_train": len(data.train), "n_val": len(data.val)}
        s = self.settings
        self.sampler = MaskPatchSampler(data.train, s, self.rng)
        if not self.sampler._with_lesion:
            log.warning("No training subject has a tumour label: the mask autoencoder sees no real lesion shapes.")
        val_sampler = MaskPatchSampler(data.val, s, np.random.default_rng([self.config.seed, 7927]), augment=False)
        self.val_sampler = val_sampler
        self.val_patches = [val_sampler.draw() for _ in range(max(s.val_patches, 1))]

    def build(self) -> None:
        super().build()
        if self.init_weights is not None and not self.resume_has_checkpoint():
            self.load_init_weights(self.autoencoder, self.init_weights, "mask autoencoder")

    def pixel_loss(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return lesion_weighted_l1(reconstruction, images, self.settings.lesion_weight)

    def extra_state(self) -> dict[str, Any]:
        return {"autoencoder_config": self.settings.model.to_dict(), "preprocess": self.config.preprocess.to_dict()}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        model = self._evaluation_model()
        was_training = model.training
        model.eval()
        mine = self.val_patches[self.context.rank :: self.context.world_size]
        # weighted-L1 sum, count, plain L1 sum, voxels, dice numerator, dice denominator, lesions, kept
        totals = torch.zeros(8, dtype=torch.float64)
        batch = self.settings.batch_size
        for begin in range(0, len(mine), batch):
            masks, _ = self.val_sampler.batch(mine[begin:begin + batch])
            masks = masks.to(self.device)
            with self.autocast():
                output = model(masks)
            recon = output.reconstruction.float()
            numerator, denominator = lesion_dice(recon, masks)
            has = masks[:, 1].flatten(1).amax(dim=1) > 0.5
            kept = ((recon[:, 1] > 0.5) & (masks[:, 1] > 0.5)).flatten(1).any(dim=1) & has
            totals += torch.tensor([float(self.pixel_loss(recon, masks)) * len(masks), len(masks),
                                    float((recon - masks).abs().sum()), masks.numel(), numerator, denominator,
                                    float(has.sum()), float(kept.sum())], dtype=torch.float64)
        totals = self.context.all_reduce_sum(totals)
        model.train(was_training)
        value = float(totals[0] / max(totals[1], 1))
        return {"val_loss": value, "val_weighted_l1": value, "val_l1": float(totals[2] / max(totals[3], 1)),
                "val_lesion_dice": float(totals[4] / totals[5]) if totals[5] > 0 else 1.0,
                "val_lesions_kept": float(totals[7] / totals[6]) if totals[6] > 0 else 1.0}


def _checkpoint_weights(state: dict[str, Any], network: str) -> dict[str, torch.Tensor]:
    """A network's weights from a checkpoint: the EMA shadow when the run kept one."""
    ema = state.get("ema")
    if ema:
        return {k: v.clone() for k, v in ema["shadow"].items()}
    return state["networks"][network]


def read_mask_first_stage(path: str | Path) -> FirstStageSource:
    """The mask autoencoder from a mask autoencoder run or checkpoint, a stored copy
    (``mask_autoencoder.pt``), a synthesis run folder or a synthesis bundle."""
    from brainldm.nets.synthesis_bundle import (
        MASK_AUTOENCODER_FILE,
        SynthesisBundle,
        is_synthesis_bundle,
    )
    from brainldm.train.export import resolve_checkpoint

    path = Path(path).expanduser()
    if is_synthesis_bundle(path):
        description = SynthesisBundle.verify(path)
        try:
            weights = torch.load(path / MASK_AUTOENCODER_FILE, map_location="cpu", weights_only=True)
            config = AutoencoderConfig.from_dict(description["mask_autoencoder"]["config"])
            preprocess = PreprocessConfig.from_dict(description["preprocess"])
        except Exception as error:
            raise ModelBundleError(f"The mask autoencoder of the bundle {path} cannot be read: {error}") from error
        return FirstStageSource(config, weights, preprocess, f"bundle {path}")
    if path.is_file() and path.name == MASK_FIRST_STAGE_FILE:
        return FirstStageSource.read(path)
    if path.is_dir() and (path / "mask_autoencoder").is_dir():
        path = path / "mask_autoencoder"
    elif path.is_dir() and (path / MASK_FIRST_STAGE_FILE).is_file() and not (path / "checkpoints").is_dir():
        return FirstStageSource.read(path / MASK_FIRST_STAGE_FILE)
    checkpoint = resolve_checkpoint(path)
    state = load_checkpoint(checkpoint)
    if state.get("stage") != "mask_autoencoder":
        raise BrainLDMError(f"{path} is not a mask autoencoder run or checkpoint (stage {state.get('stage')!r}).")
    config = state["config"]
    return FirstStageSource(AutoencoderConfig.from_dict(config["synthesis"]["mask_autoencoder"]["model"]),
                            _checkpoint_weights(state, "autoencoder"), PreprocessConfig.from_dict(config["preprocess"]),
                            f"run {checkpoint.parent.parent}")


# --------------------------------------------------------------------------- backbone (G4)


@dataclass
class BackboneSource:
    """The pretrained denoiser G4 keeps frozen, with the latent scale it was trained with."""

    config: DenoiserConfig
    weights: dict[str, torch.Tensor]
    latent_scale: float
    first_stage_fingerprint: str | None
    origin: str

    def save(self, path: Path) -> None:
        payload = {"config": self.config.to_dict(), "weights": self.weights, "latent_scale": self.latent_scale,
                   "first_stage_fingerprint": self.first_stage_fingerprint, "origin": self.origin}
        atomic_write_bytes(path, lambda stream: torch.save(payload, stream))

    @classmethod
    def read(cls, path: Path) -> BackboneSource:
        try:
            p = torch.load(path, map_location="cpu", weights_only=True)
            return cls(DenoiserConfig.from_dict(p["config"]), p["weights"], float(p["latent_scale"]),
                       p.get("first_stage_fingerprint"), str(p.get("origin", path)))
        except Exception as error:
            raise BrainLDMError(f"The frozen denoiser saved in {path} cannot be read ({error}).") from error


def read_backbone(path: str | Path) -> BackboneSource:
    """The denoiser to keep frozen (G4) from a detection bundle, a denoiser run, a stored copy
    (``backbone.pt``) or a structural synthesis bundle."""
    from brainldm.nets.bundle import ModelBundle
    from brainldm.nets.synthesis_bundle import (
        DENOISER_FILE,
        SynthesisBundle,
        is_synthesis_bundle,
    )
    from brainldm.train.export import is_bundle, read_first_stage, read_stage_weights

    path = Path(path).expanduser()
    if path.is_file() and path.name == BACKBONE_FILE:
        return BackboneSource.read(path)
    if is_synthesis_bundle(path):
        description = SynthesisBundle.verify(path)
        if description["conditioning"].get("mechanism") != "structural":
            raise BrainLDMError(f"{path} is a concatenation (G3) synthesis model: it has no frozen denoiser for G4.")
        weights = torch.load(path / DENOISER_FILE, map_location="cpu", weights_only=True)
        return BackboneSource(DenoiserConfig.from_dict(description["denoiser"]["config"]), weights,
                              float(description["latent_scale"]), None, f"bundle {path}")
    weights, info = read_stage_weights(path, "denoiser")
    if is_bundle(path):
        description = ModelBundle.read_description(path)
        config = DenoiserConfig.from_dict(description["denoiser"]["config"])
        fingerprint = read_first_stage(path).fingerprint()
    else:
        from brainldm.train.export import resolve_checkpoint

        state = load_checkpoint(resolve_checkpoint(path))
        config = DenoiserConfig.from_dict(state["config"]["denoiser"]["model"])
        fingerprint = info.get("first_stage_fingerprint")
    if info.get("latent_scale") is None:
        raise BrainLDMError(f"The denoiser of {path} has no latent_scale; it cannot serve as the frozen G4 denoiser.")
    return BackboneSource(config, weights, float(info["latent_scale"]), fingerprint, str(path))


# --------------------------------------------------------------------------- conditioned denoiser


class PairedLatentSampler:
    """Wraps a :class:`~brainldm.train.data.LatentPatchSampler`: every batch also holds ``c``, the
    mask latent of the same window (``mask_records`` aligned with the sampler's records)."""

    def __init__(self, sampler, mask_records: list[LatentRecord]):
        if len(mask_records) != len(sampler.records):
            raise BrainLDMError("Image and mask latents are not aligned.")
        self.sampler = sampler
        self.records = sampler.records
        self.mask_records = mask_records

    def draw(self):
        return self.sampler.draw()

    def batch(self, patches) -> dict[str, torch.Tensor]:
        out = self.sampler.batch(patches)
        masks = []
        for p in patches:
            latent = np.asarray(self.mask_records[p.record].latent)
            if self.sampler.spatial_dims == 2:
                latent = latent[..., p.slice_index]
            masks.append(extract_box(latent, p.start, self.sampler.latent_patch, 0.0))
        out["c"] = torch.from_numpy(np.stack(masks))
        return out

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        return self.batch([self.draw() for _ in range(batch_size)])


class SynthesisTrainer(DenoiserTrainer):
    """Trains the mask-conditioned denoiser (``concat``) or the structural encoder beside a frozen
    denoiser (``structural``); see the module docstring."""

    stacked_sampler = False  # pairs every latent window with its mask latent (PairedLatentSampler)

    stage = "synthesis"

    def __init__(self, config: TrainingConfig, data_dir, run_dir, autoencoder: str | Path | None = None,
                 mask_autoencoder: str | Path | None = None, backbone: str | Path | None = None,
                 init_weights: dict | None = None, **kwargs):
        kwargs.pop("init", None)
        _require_synthesis(config)
        super().__init__(config, data_dir, run_dir, autoencoder=autoencoder, init=None, **kwargs)
        self.latent_scale = self.settings.latent_scale
        self.mask_latent_scale = self.settings.mask_latent_scale
        self.mask_source_path = Path(mask_autoencoder).expanduser() if mask_autoencoder is not None else None
        self.init_weights = init_weights
        self.conditioning: ConditioningConfig = config.synthesis.conditioning
        self.backbone: BackboneSource | None = None
        if self.conditioning.mechanism == "structural":
            stored = self.run_dir.path / BACKBONE_FILE
            if self.resume and stored.exists():
                self.backbone = BackboneSource.read(stored)
            elif backbone is not None:
                self.backbone = read_backbone(backbone)
            else:
                raise SettingsError("The structural encoder (G4) needs the frozen denoiser: a denoiser run or a model "
                                    "bundle (--init).")
            if self.backbone.config.to_dict() != self.settings.model.to_dict():
                log.info("Using the architecture of the frozen denoiser of %s.", self.backbone.origin)
                self.settings.model = self.backbone.config
            self.latent_scale = self.backbone.latent_scale  # the frozen denoiser knows only its own latent scale
        self._mask_latents: dict[tuple[str, bool], LatentRecord] = {}

    @property
    def settings(self) -> SynthesisDenoiserStage:
        return self.config.synthesis.denoiser

    def model_settings(self, config: dict[str, Any]) -> dict[str, Any] | None:
        section = config.get("synthesis")
        if not isinstance(section, dict):
            return None
        return {"model": (section.get("denoiser") or {}).get("model"), "conditioning": section.get("conditioning")}

    # ------------------------------------------------------------------ data
    def _mask_first_stage(self) -> FirstStageSource:
        stored = self.run_dir.path / MASK_FIRST_STAGE_FILE
        if self.resume and stored.exists():
            return FirstStageSource.read(stored)
        if self.mask_source_path is None:
            raise SettingsError("The synthesis denoiser needs a trained mask autoencoder.")
        return read_mask_first_stage(self.mask_source_path)

    def prepare_data(self) -> None:
        source = self._mask_first_stage()
        if source.preprocess.to_dict() != self.config.preprocess.to_dict():
            raise BrainLDMError(f"The mask autoencoder of {source.origin} was trained with other preprocessing than "
                                "this run; train it again with this configuration.")
        self.config.synthesis.mask_autoencoder.model = source.config
        self.mask_source = source
        if self.is_main:
            self.run_dir.create()
            stored = self.run_dir.path / MASK_FIRST_STAGE_FILE
            if not stored.exists() or not self.resume:
                source.save(stored)
            if self.backbone is not None:
                self.backbone.save(self.run_dir.path / BACKBONE_FILE)
        mask_ae = build_autoencoder(source.config)
        mask_ae.load_state_dict(source.weights)
        self.mask_autoencoder = mask_ae.eval().requires_grad_(False).to(self.device)
        super().prepare_data()  # image latents (and, through _encode_all, the mask latents)
        if self.backbone is not None and self.backbone.first_stage_fingerprint not in (
                None, self.first_stage_source.fingerprint()):
            raise BrainLDMError(f"The frozen denoiser of {self.backbone.origin} was trained on another image "
                                "autoencoder than this run's; use its own (--init with its bundle).")
        train_masks = [self._mask_latents[(r.subject_id, r.flipped)] for r in self.sampler.records]
        val_masks = [self._mask_latents[(r.subject_id, r.flipped)] for r in self.val_sampler.records]
        if self.mask_latent_scale is None:
            self.mask_latent_scale = latent_scale_of([r for r in train_masks if not r.flipped])
        log.info("mask_latent_scale = %.6g", self.mask_latent_scale)
        self.sampler = PairedLatentSampler(self.sampler, train_masks)
        self.val_sampler = PairedLatentSampler(self.val_sampler, val_masks)
        self.data_summary.update({"mask_latent_scale": self.mask_latent_scale, "mask_first_stage": source.origin,
                                  "mask_first_stage_fingerprint": source.fingerprint()})

    def _encode_all(self, records, flips: bool, cache: Path | None, fingerprint: str) -> list[LatentRecord]:
        latents = super()._encode_all(records, flips, cache, fingerprint)
        jobs = [(r, False) for r in records] + ([(r, True) for r in records] if flips else [])
        folder = cache / "mask-latents" / self.mask_source.fingerprint() if cache is not None else None
        mine = jobs if (folder is None or not self.context.enabled) else jobs[self.context.rank::self.context.world_size]
        for index, (record, flip) in enumerate(mine):
            self.check_stop()
            self._mask_latents[(record.subject_id, flip)] = self._encode_mask_cached(record, flip, folder)
            if index % 5 == 0:
                self.write_status("starting", f"encoding masks {index + 1}/{len(mine)}")
        self.context.barrier()
        for record, flip in jobs:
            if (record.subject_id, flip) not in self._mask_latents:
                self._mask_latents[(record.subject_id, flip)] = self._encode_mask_cached(record, flip, folder)
        return latents

    def _encode_mask_cached(self, record: VolumeRecord, flip: bool, folder: Path | None) -> LatentRecord:
        patch = self.settings.patch_size

        def encode() -> LatentRecord:
            masks = VolumeRecord(record.subject_id, conditioning_mask(np.asarray(record.mask), record.tumour),
                                 record.mask, record.tumour)
            return encode_record(self.mask_autoencoder, masks, patch, self.device, flip=flip, fill=0.0)

        if folder is None:
            return encode()
        entry = folder / (_safe_name(record.subject_id) + ("-flip" if flip else ""))
        meta = {"patch_size": list(patch), "flip": flip}
        if (entry / "meta.json").is_file():
            try:
                if json.loads((entry / "meta.json").read_text()) == meta:
                    return LatentRecord(record.subject_id, np.load(entry / "latent.npy", mmap_mode="r"),
                                        np.load(entry / "brain.npy"), None, flip)
            except (ValueError, OSError):
                pass
        latent = encode()
        entry.mkdir(parents=True, exist_ok=True)
        np.save(entry / "latent.npy", latent.latent)
        np.save(entry / "brain.npy", latent.brain)
        atomic_write_text(entry / "meta.json", json.dumps(meta))
        return latent

    # ------------------------------------------------------------------ networks
    def build(self) -> None:
        from brainldm.diffusion.schedule import NoiseSchedule

        s = self.settings
        self.schedule = NoiseSchedule.from_config(s.schedule)
        if self.conditioning.mechanism == "structural":
            backbone = build_denoiser(self.backbone.config, channels_last=False)
            backbone.load_state_dict(self.backbone.weights)
            freeze(backbone.eval()).to(self.device)
            encoder = StructuralEncoder(self.backbone.config, self.conditioning)
            encoder.copy_denoiser(backbone)
            trainable: torch.nn.Module = encoder.to(self.device)
            self.conditioned = ConditionedDenoiser(backbone, self.conditioning, encoder)
        else:
            trainable = build_denoiser(s.model, channels_last=False).to(self.device)
            self.conditioned = ConditionedDenoiser(trainable, self.conditioning, None)
        if self.init_weights is not None and not (self.resume and self.run_dir.last_checkpoint.exists()):
            self.load_init_weights(trainable, self.init_weights, "synthesis network")
        self.denoiser = trainable  # what the optimiser, the EMA and the parent's train_step see
        self.model = wrap_ddp(self.conditioned, self.context, self.device)
        self.trainable = [p for p in trainable.parameters() if p.requires_grad]
        self.optimizers = {"denoiser": self.make_optimizer(self.trainable)}
        self.ema = ExponentialMovingAverage(trainable, s.ema_decay) if s.ema_decay > 0 else None
        self._eval_copy = None

    @property
    def network_key(self) -> str:
        return "structural_encoder" if self.conditioning.mechanism == "structural" else "denoiser"

    def network_states(self) -> dict[str, Any]:
        return {self.network_key: self.denoiser.state_dict()}

    def load_network_states(self, states: dict[str, Any]) -> None:
        self.denoiser.load_state_dict(states[self.network_key])

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "mask_latent_scale": self.mask_latent_scale,
                "conditioning": self.conditioning.to_dict(),
                "mask_first_stage_fingerprint": self.mask_source.fingerprint()}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        super().load_extra_state(extra)
        if extra.get("mask_latent_scale") is not None:
            self.mask_latent_scale = float(extra["mask_latent_scale"])
            self.data_summary["mask_latent_scale"] = self.mask_latent_scale

    # ------------------------------------------------------------------ step
    def _forward(self, model, batch: dict[str, torch.Tensor], t: torch.Tensor, eps: torch.Tensor,
                 labels: torch.Tensor) -> torch.Tensor:
        z0 = batch["z"].to(self.device) * float(self.latent_scale)
        zt = self.schedule.add_noise(z0, eps, t)
        condition = batch["c"].to(self.device) * float(self.mask_latent_scale)
        kwargs = {}
        if self.settings.model.position_embedding != "none":
            kwargs = {"start": batch["start"].to(self.device), "extent": batch["extent"].to(self.device)}
        with self.autocast():
            prediction = model(zt, t, labels, condition=condition, **kwargs)
        return torch.nn.functional.mse_loss(prediction.float(), eps)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.ema is None:
            return self._validate_with(self.conditioned)
        if self._eval_copy is None:
            trainable = copy.deepcopy(self.denoiser)
            if self.conditioned.encoder is not None:
                self._eval_copy = ConditionedDenoiser(self.conditioned.denoiser, self.conditioning, trainable)
            else:
                self._eval_copy = ConditionedDenoiser(trainable, self.conditioning, None)
        self.ema.copy_to(self._eval_copy.encoder if self._eval_copy.encoder is not None else self._eval_copy.denoiser)
        return self._validate_with(self._eval_copy)

    def _validate_with(self, model: torch.nn.Module) -> dict[str, float]:
        # The parent validates self.denoiser (or its EMA copy); point it at the conditioned model.
        saved_denoiser, saved_ema = self.denoiser, self.ema
        self.denoiser, self.ema = model, None
        try:
            return DenoiserTrainer.validate(self)
        finally:
            self.denoiser, self.ema = saved_denoiser, saved_ema


# --------------------------------------------------------------------------- bundle


def synthesis_model_card(model_id: str, bundle_description: dict[str, Any]) -> str:
    d = bundle_description
    cond = d["conditioning"]
    dn = d["denoiser"]["config"]
    mask = d["mask_autoencoder"]["config"]
    training = d.get("training", {})
    name = ConditioningConfig.from_dict(cond).label + (" (latent concatenation)" if cond["mechanism"] == "concat"
                                                       else " (structural encoder)")
    data = training.get("synthesis", {}).get("data", {})
    number = lambda value: f"{value:.4g}" if isinstance(value, (int, float)) else str(value)  # noqa: E731
    return f"""# {model_id}

BrainLDM lesion synthesis model (thesis §4.3): a 2-channel (brain, lesion) mask, encoded by its own
KL autoencoder, conditions a latent diffusion model so that a tumour appears where the lesion mask
says, in a brain shaped like the brain mask. Configuration {name}.

**Research use only. Synthetic images are not patient data; not for diagnosis or treatment decisions.**

## Networks
- Image first stage: {d['autoencoder']['config']['kind'].upper()} autoencoder, channels {d['autoencoder']['config']['channels']}, latent scale {d['latent_scale']:.6g}.
- Mask first stage: KL autoencoder, channels {mask['channels']}, {mask['latent_channels']} latent channels, mask latent scale {d['mask_latent_scale']:.6g}.
- Denoiser: {dn['spatial_dims']}D U-Net, channels {dn['channels']}, condition channels {dn['condition_channels']}{' (frozen; a structural encoder injects the mask at every resolution)' if cond['mechanism'] == 'structural' else ''}.
- Training windows: {d.get('patch_size')} image voxels.

## Training
- Configuration: {training.get('config_name', '?')}; synthesis network {training.get('synthesis', {}).get('step', '?')} steps, best validation noise MSE {number(training.get('synthesis', {}).get('best_val_loss'))}.
- Mask autoencoder: {training.get('mask_autoencoder', {}).get('step', '?')} steps, validation lesion Dice {number(training.get('mask_autoencoder', {}).get('val_lesion_dice'))}.
- Data: {data.get('n_train', '?')} training subjects from `{Path(str(data.get('data_dir', '?'))).name}`.

## Limitations
- Lesions look like the training tumours; their appearance at sizes never seen in training is extrapolated.
- Slices are synthesised one by one (2D): a lesion spanning several slices may vary from slice to slice.
"""


def export_synthesis_bundle(run: str | Path, out: str | Path, model_id: str | None = None,
                            checkpoint: str = "best", overwrite: bool = False,
                            inference: dict[str, Any] | None = None) -> Path:
    """A :class:`~brainldm.nets.synthesis_bundle.SynthesisBundle` from a finished synthesis run
    (the ``<run>/synthesis`` folder or the run folder holding it)."""
    import time

    from brainldm.nets.synthesis_bundle import SynthesisBundle
    from brainldm.train.denoiser import FIRST_STAGE_FILE
    from brainldm.train.export import _check_finished, resolve_checkpoint

    run = Path(run).expanduser()
    if (run / "synthesis").is_dir():
        run = run / "synthesis"
    status = _check_finished(run, allow_unfinished=False)
    state = load_checkpoint(resolve_checkpoint(run, checkpoint))
    if state.get("stage") != "synthesis":
        raise BrainLDMError(f"{run} is not a synthesis run (stage {state.get('stage')!r}).")
    config = state["config"]
    extra = state.get("extra", {})
    conditioning = ConditioningConfig.from_dict(config["synthesis"]["conditioning"])
    image = FirstStageSource.read(run / FIRST_STAGE_FILE)
    mask = FirstStageSource.read(run / MASK_FIRST_STAGE_FILE)
    autoencoder = build_autoencoder(image.config)
    autoencoder.load_state_dict(image.weights)
    mask_autoencoder = build_autoencoder(mask.config)
    mask_autoencoder.load_state_dict(mask.weights)
    if conditioning.mechanism == "structural":
        backbone = BackboneSource.read(run / BACKBONE_FILE)
        denoiser_config = backbone.config
        denoiser = build_denoiser(denoiser_config)
        denoiser.load_state_dict(backbone.weights)
        encoder = StructuralEncoder(denoiser_config, conditioning)
        encoder.load_state_dict(_checkpoint_weights(state, "structural_encoder"))
        model = ConditionedDenoiser(denoiser, conditioning, encoder)
    else:
        denoiser_config = DenoiserConfig.from_dict(config["synthesis"]["denoiser"]["model"])
        denoiser = build_denoiser(denoiser_config)
        denoiser.load_state_dict(_checkpoint_weights(state, "denoiser"))
        model = ConditionedDenoiser(denoiser, conditioning, None)
    mask_summary: dict[str, Any] = {"origin": mask.origin}
    mask_run = Path(mask.origin[4:]) if mask.origin.startswith("run ") else None
    if mask_run is not None and mask_run.is_dir():
        metrics = [r for r in RunDir(mask_run).read_metrics() if r.get("split") == "val"]
        if metrics:
            mask_summary.update({"step": metrics[-1]["step"], "val_lesion_dice": metrics[-1].get("val_lesion_dice"),
                                 "val_lesions_kept": metrics[-1].get("val_lesions_kept")})
    data = dict(state.get("data", {}))
    best = state["early_stopping"]
    digest = hashlib.sha256(json.dumps([image.fingerprint(), mask.fingerprint(), int(state["step"])]).encode())
    model_id = model_id or (f"brainldm-synth-{image.config.spatial_dims}d-{conditioning.label}-"
                            f"{time.strftime('%Y%m%d')}-{digest.hexdigest()[:8]}")
    training = {
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config_name": config.get("name"),
        "checkpoint": checkpoint,
        "synthesis": {"run": str(run), "step": int(state["step"]), "seconds": float(state.get("seconds", 0.0)),
                      "state": status.get("state"),
                      "best_val_loss": best["best"] if best["best_step"] >= 0 else None,
                      "best_step": best["best_step"], "config": config["synthesis"],
                      "data": {k: data.get(k) for k in ("data_dir", "n_train", "n_val", "test", "skipped")}},
        "mask_autoencoder": mask_summary,
        "autoencoder": {"origin": image.origin},
        "first_stage_fingerprint": image.fingerprint(),
    }
    bundle = SynthesisBundle(
        autoencoder=autoencoder, mask_autoencoder=mask_autoencoder, model=model,
        autoencoder_config=image.config, mask_autoencoder_config=mask.config, denoiser_config=denoiser_config,
        conditioning_config=conditioning, preprocess_config=image.preprocess,
        latent_scale=float(extra["latent_scale"]), mask_latent_scale=float(extra["mask_latent_scale"]),
        schedule_config=dict(config["synthesis"]["denoiser"]["schedule"]), model_id=model_id,
        patch_size=tuple(int(s) for s in config["synthesis"]["denoiser"]["patch_size"]),
        inference=dict(inference or {"steps": 50, "guidance": 0.0, "mask_guidance": 0.0}), training=training,
    )
    bundle.model_card = synthesis_model_card(model_id, bundle.describe())
    return bundle.save(out, overwrite=overwrite)


# --------------------------------------------------------------------------- the whole stage


def _init_parts(init: Path | None) -> dict[str, Any]:
    """What ``--init`` provides: a detection bundle gives the image autoencoder and the G4 denoiser;
    a synthesis bundle all networks (fine-tuning)."""
    from brainldm.nets.synthesis_bundle import (
        DENOISER_FILE,
        ENCODER_FILE,
        SynthesisBundle,
        is_synthesis_bundle,
    )
    from brainldm.train.export import is_bundle

    if init is None:
        return {}
    if is_synthesis_bundle(init):
        description = SynthesisBundle.verify(init)
        structural = description["conditioning"].get("mechanism") == "structural"
        image = FirstStageSource(AutoencoderConfig.from_dict(description["autoencoder"]["config"]),
                                 torch.load(init / "autoencoder.pt", map_location="cpu", weights_only=True),
                                 PreprocessConfig.from_dict(description["preprocess"]), f"bundle {init}")
        trainable = torch.load(init / (ENCODER_FILE if structural else DENOISER_FILE), map_location="cpu",
                               weights_only=True)
        return {"image": image, "mask": read_mask_first_stage(init).weights, "trainable": trainable,
                "backbone": init if structural else None, "mechanism": description["conditioning"]["mechanism"]}
    if is_bundle(init):
        return {"image_path": init, "backbone": init}
    raise BrainLDMError(f"--init {init} is not a model bundle: give a detection bundle (its autoencoder and, for G4, "
                        "its denoiser are used) or a synthesis bundle (fine-tuning).")


def train_synthesis(
    config,
    data_dir: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    init: str | Path | None = None,
    autoencoder: str | Path | None = None,
    overrides=(),
    show_progress: bool = True,
    export: bool = True,
):
    """Train the lesion synthesis models (see the module docstring) and export ``<run>/bundle``.

    ``config``: a synthesis preset (``synth-2d``, ``thesis-synth-2d``, ``tiny-synth``), a YAML
    file or dict with a ``synthesis`` section. ``autoencoder``: an image first stage to use
    instead of training one (autoencoder run or model bundle). ``init``: a detection bundle (its
    image autoencoder, and for G4 its denoiser as the frozen one, as in the thesis) or a synthesis
    bundle (fine-tune). On ``resume`` finished sub-stages are not trained again. Returns the
    synthesis sub-stage's TrainingResult (``.bundle`` set when exported).
    """
    from brainldm.train.denoiser import DenoiserTrainer as BaseDenoiserTrainer
    from brainldm.train.stages import StagedRun

    staged = StagedRun(config, run_dir, resume, overrides, show_progress, export, require=_require_synthesis)
    cfg = staged.config
    parts = _init_parts(Path(init).expanduser() if init is not None else None)
    if parts.get("mechanism") not in (None, cfg.synthesis.conditioning.mechanism):
        raise SettingsError(f"--init {init} is a {parts['mechanism']} model; the configuration asks for "
                            f"{cfg.synthesis.conditioning.mechanism}.")
    with staged:
        # 1. image first stage
        given = Path(autoencoder).expanduser() if autoencoder is not None else parts.get("image_path")
        image_path = staged.first_stage(data_dir, given=given, source=parts.get("image"))
        if not isinstance(image_path, Path):
            return image_path
        # 2. the frozen denoiser of G4
        backbone = None
        if cfg.synthesis.conditioning.mechanism == "structural":
            backbone = parts.get("backbone")
            if backbone is None:
                backbone = staged.folder("denoiser")
                stopped = staged.train_unless_finished(
                    lambda options: BaseDenoiserTrainer(cfg, data_dir, backbone, autoencoder=image_path, **options),
                    backbone)
                if stopped is not None:
                    return stopped
        # 3. mask autoencoder
        mask_run = staged.folder("mask_autoencoder")
        stopped = staged.train_unless_finished(
            lambda options: MaskAutoencoderTrainer(cfg, data_dir, mask_run, init_weights=parts.get("mask"), **options),
            mask_run)
        if stopped is not None:
            return stopped
        # 4. conditioned denoiser / structural encoder
        synth_run = staged.folder("synthesis")
        trainer = SynthesisTrainer(cfg, data_dir, synth_run, autoencoder=image_path, mask_autoencoder=mask_run,
                                   backbone=backbone, init_weights=parts.get("trainable"),
                                   **staged.trainer_options(synth_run))
        result = staged.train(trainer, last=True)
        return staged.export(result, synth_run, lambda run, out: export_synthesis_bundle(run, out, overwrite=True),
                             "synthesis model bundle")


__all__ = [
    "MaskAutoencoderTrainer",
    "MaskPatchSampler",
    "PairedLatentSampler",
    "SynthesisTrainer",
    "export_synthesis_bundle",
    "lesion_dice",
    "lesion_weighted_l1",
    "read_backbone",
    "read_mask_first_stage",
    "train_synthesis",
]
