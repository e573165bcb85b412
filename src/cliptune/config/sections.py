"""The experiment's sections as dataclasses, the named model presets and the closed value sets."""

from __future__ import annotations

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
    init_temperature: float = 0.07
    learnable_temperature: bool = True
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
    grad_accum_steps: int = 1
    precision: str = "auto"  # auto (bf16 where supported, else fp16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    all_captions: bool = False  # every caption each epoch instead of one random per image
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
}


def model_preset(name: str) -> ModelConfig:
    """Return a fresh copy of the preset `name` (`tiny`, `small`, `vit-b-32`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return replace(PRESETS[name])
