"""The experiment's sections as dataclasses, the named model presets, the closed value sets,
and `validate`: the value ranges and cross-field constraints of a whole config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from cliptune.errors import ConfigError


@dataclass
class DataConfig:
    """Where the image-caption pairs come from and how they are split and loaded."""

    source: str = "auto"  # auto | shapes | flickr30k | folder | webdataset
    # local copy (flickr30k layout), a folder dataset, or (webdataset) the training shards'
    # brace pattern or the folder make_shards wrote (its manifest.json names every split)
    data_dir: str | None = None
    format: str = "auto"  # folder format: auto | kaggle | captions_txt | tsv | coco
    split_file: str | None = None  # JSON {"train": [...], ...}, Karpathy's json or txt trio
    split_seed: int = 0  # decides the random split; independent of the run's seed
    cache_dir: str | None = None  # None: $CLIPTUNE_CACHE or ~/.cache/cliptune
    kaggle_handle: str = "hsankesara/flickr-image-dataset/versions/1"
    download_timeout: float = 5.0  # seconds for the `auto` reachability probe
    val_size: float | None = None  # >= 1: images, < 1: fraction; None: per-source default
    test_size: float | None = None
    shapes_images: int = 6000
    max_samples: int | None = None  # cap on training images (quick runs)
    max_eval_samples: int | None = None  # cap on val and test images
    augment: bool = True
    # training crops (with augment): area fraction kept, None = the dataset's own (Shapes
    # 0.9-1: its captions state sizes and positions; others 0.5-1), and aspect-ratio range
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    num_workers: int | str = "auto"  # reader processes; auto: 0 on CPU, a few for a GPU
    # webdataset shards (docs/DATASETS.md): validation and test shard patterns (default: the
    # manifest.json next to the training shards), samples per epoch (default: the manifest's
    # training count), caption field, shuffles, resampling and the JPEG decode device
    val_shards: str | None = None
    test_shards: str | None = None
    epoch_samples: int | None = None
    caption_field: str = "auto"  # auto (json "captions" list, else txt) | txt | a json key
    shuffle_buffer: int = 1000  # samples held by each worker's shuffle buffer
    resampled: bool = False  # draw shards with replacement (webdataset's ResampledShards)
    decode_device: str = "auto"  # auto | cpu | cuda (batched nvJPEG on the training GPU)


@dataclass
class ModelConfig:
    """Architecture of both towers. See `PRESETS` for named configurations."""

    preset: str | None = None
    embed_dim: int = 128
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    context_length: int = 32
    vocab_size: int = 4096
    pad_token_id: int = 0
    mlp_ratio: float = 4.0
    activation: str = "gelu"  # gelu | quick_gelu
    dropout: float = 0.0
    patch_dropout: float = 0.0  # fraction of image patch tokens dropped in training (FLIP)
    init_temperature: float = 0.07
    learnable_temperature: bool = True
    # SigLIP's learnable logit bias (OpenCLIP's `init_logit_bias`): its initial value, None
    # for OpenCLIP's -10 under train.loss=siglip. The softmax loss has no bias.
    init_logit_bias: float | None = None
    grad_checkpointing: bool = False


@dataclass
class TrainConfig:
    """Optimisation, precision, evaluation and checkpointing of one run."""

    epochs: int = 10
    batch_size: int = 128  # GLOBAL batch: split evenly over the ranks of a torchrun job
    eval_batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_fraction: float = 0.05  # of all optimizer steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    grad_accum_steps: int = 1  # batches per optimizer step
    # true: the grad_accum_steps batches of a step are ONE contrastive batch (GradCache: every
    # pair sees the others' negatives); false: the mean of each batch's own loss
    accum_features: bool = False
    unmasked_epochs: int = 0  # the last k epochs train without patch dropout
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    all_captions: bool = False  # every caption each epoch instead of one random per image
    loss: str = "clip"  # clip (softmax InfoNCE) | siglip (pairwise sigmoid + learnable bias)
    hard_negative_weight: float = 0.0
    hard_negative_k: int = 5
    hard_negative_margin: float = 0.2
    best_metric: str = "rsum"  # any key of the val metrics; loss-like keys are minimised
    early_stopping_patience: int = 0  # epochs without improvement; 0 disables
    checkpoint_every: int = 0  # also keep epoch_<n>.pt every k epochs; 0 disables
    checkpoint_every_steps: int = 0  # also write last.pt every k optimizer steps mid-epoch
    keep_checkpoints: int = 3  # how many epoch_<n>.pt to keep
    save_checkpoints: bool = True
    save_last: bool = True  # last.pt for resuming (HPO trials, which never resume, skip it)
    log_every: int = 10  # optimizer steps between TensorBoard scalar writes
    figure_images: int = 4  # val images in the per-epoch retrieval figure

    def masks_patches(self, epoch: int) -> bool:
        """Whether epoch `epoch` (1-based) trains with patch dropout (`model.patch_dropout`):
        every epoch but the last `unmasked_epochs`."""
        return epoch <= self.epochs - self.unmasked_epochs


@dataclass
class RunConfig:
    """Everything that defines one training run."""

    name: str = "default"
    seed: int = 0
    runs_dir: str = "runs"
    checkpoints_dir: str = "checkpoints"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, ModelConfig] = {
    # CPU-sized: seconds per epoch on Shapes, about 2M parameters.
    "tiny": ModelConfig(preset="tiny"),
    # GPU-sized: about 30M parameters.
    "small": ModelConfig(
        preset="small",
        embed_dim=256,
        image_size=128,
        patch_size=16,
        vision_width=384,
        vision_layers=8,
        vision_heads=6,
        text_width=384,
        text_layers=8,
        text_heads=6,
        context_length=64,
        vocab_size=16384,
    ),
    # The paper's ViT-B/32 (Radford et al. 2021).
    "vit-b-32": ModelConfig(
        preset="vit-b-32",
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        vision_heads=12,
        text_width=512,
        text_layers=12,
        text_heads=8,
        context_length=77,
        vocab_size=49408,
        activation="quick_gelu",
    ),
}

CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("auto", "shapes", "flickr30k", "folder", "webdataset"),
    "data.decode_device": ("auto", "cpu", "cuda"),
    "data.format": ("auto", "kaggle", "captions_txt", "tsv", "coco"),
    "model.activation": ("gelu", "quick_gelu"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "train.loss": ("clip", "siglip"),
}

SIGLIP_INIT_LOGIT_BIAS = -10.0  # OpenCLIP's `--siglip` and the paper's initial bias


def model_preset(name: str) -> ModelConfig:
    """Return a fresh copy of the preset `name` (`tiny`, `small`, `vit-b-32`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name])


def model_config_for(config: RunConfig) -> ModelConfig:
    """The architecture a run's CLIP is built from: `config.model`, with SigLIP's logit bias
    (`model.init_logit_bias`, default -10) when `train.loss` is siglip.

    Derived rather than stored so one saved config rebuilds the model, whichever loss a
    search space picks for a trial.
    """
    if config.train.loss != "siglip" or config.model.init_logit_bias is not None:
        return config.model
    return replace(config.model, init_logit_bias=SIGLIP_INIT_LOGIT_BIAS)


def validate(config: RunConfig) -> None:
    """Check value ranges and cross-field constraints; raise `ConfigError` on the first fault."""
    m, t, d = config.model, config.train, config.data

    def positive(key: str, value: float) -> None:
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{key} must be positive, got {value}")

    for name in (
        "embed_dim", "image_size", "patch_size", "vision_width", "vision_layers",
        "vision_heads", "text_width", "text_layers", "text_heads", "context_length",
        "vocab_size", "mlp_ratio", "init_temperature",
    ):
        positive(f"model.{name}", getattr(m, name))
    for tower in ("vision", "text"):
        width, heads = getattr(m, f"{tower}_width"), getattr(m, f"{tower}_heads")
        if width % heads:
            raise ConfigError(
                f"model.{tower}_heads={heads} must divide model.{tower}_width={width}"
            )
    if m.image_size % m.patch_size:
        raise ConfigError(
            f"model.patch_size={m.patch_size} must divide model.image_size={m.image_size}"
        )
    if m.context_length < 3:
        raise ConfigError("model.context_length must be at least 3 (start, a token, end)")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if not 0 <= m.patch_dropout < 1:
        raise ConfigError(f"model.patch_dropout must be in [0, 1) (the fraction of patch "
                          f"tokens dropped in training; FLIP uses 0.5-0.75), got {m.patch_dropout}")
    if t.unmasked_epochs < 0:
        raise ConfigError(f"train.unmasked_epochs must be >= 0 (the last epochs trained "
                          f"without patch dropout), got {t.unmasked_epochs}")
    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "grad_accum_steps"):
        positive(f"train.{name}", getattr(t, name))
    if t.batch_size < 2:
        raise ConfigError("train.batch_size must be at least 2 (contrastive loss needs negatives)")
    if not 0 <= t.warmup_fraction < 1:
        raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    if t.weight_decay < 0 or t.grad_clip < 0:
        raise ConfigError("train.weight_decay and train.grad_clip must be >= 0")
    for name, value in (("val_size", d.val_size), ("test_size", d.test_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"data.{name} must be positive (images, or a fraction < 1)")
    for name in ("max_samples", "max_eval_samples"):
        value = getattr(d, name)
        if value is not None and value < 2:
            raise ConfigError(f"data.{name} must be at least 2, got {value}")
    if d.crop_scale is not None and not 0 < d.crop_scale[0] <= d.crop_scale[1] <= 1:
        raise ConfigError(f"data.crop_scale must be [min, max] with 0 < min <= max <= 1 (the "
                          f"area fraction a training crop keeps), got {list(d.crop_scale)}")
    if not 0 < d.crop_ratio[0] <= d.crop_ratio[1]:
        raise ConfigError(f"data.crop_ratio must be [min, max] with 0 < min <= max (a training "
                          f"crop's width / height), got {list(d.crop_ratio)}")
    if d.num_workers != "auto" and not (isinstance(d.num_workers, int) and d.num_workers >= 0):
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0, got {d.num_workers!r}")
    if d.epoch_samples is not None and d.epoch_samples < 2:
        raise ConfigError(f"data.epoch_samples must be at least 2, got {d.epoch_samples}")
    if d.shuffle_buffer < 1:
        raise ConfigError(f"data.shuffle_buffer must be at least 1, got {d.shuffle_buffer}")
    if t.checkpoint_every_steps < 0:
        raise ConfigError("train.checkpoint_every_steps must be >= 0 (0: only at epoch ends)")
    if m.init_logit_bias is not None:
        if not math.isfinite(m.init_logit_bias):
            raise ConfigError(f"model.init_logit_bias must be finite, got {m.init_logit_bias}")
        if t.loss != "siglip":
            raise ConfigError(
                "model.init_logit_bias is the logit bias of train.loss=siglip; the softmax "
                "loss (train.loss=clip) cancels any bias: remove the key or set train.loss=siglip"
            )
    if t.loss == "siglip" and t.hard_negative_weight > 0:
        raise ConfigError(
            "train.hard_negative_weight works with train.loss=clip only: SigLIP's sigmoid already "
            "weighs each negative pair by how close it scores; set train.hard_negative_weight=0 "
            "or train.loss=clip"
        )
