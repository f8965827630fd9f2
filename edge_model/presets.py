"""Named model + training specs (timm's builders): one table, one `create_model`."""
from dataclasses import asdict, fields

from edge_model.models.text import AdaptiveTextEncoder, TextConfig
from edge_model.models.vit import AdaptiveViT, ViTConfig
from edge_runtime.core.errors import EdgeError

ARCHS = {"vit": (AdaptiveViT, ViTConfig), "text": (AdaptiveTextEncoder, TextConfig)}

# model: config fields of the architecture; train: TrainConfig fields (edge_model/train.py); predictor:
# LightGBM parameters over edge_model.controller.predictor.PARAMS; tolerance: the accuracy the controller's
# chosen knob may lose against full depth (controller/report.py, 0.3 points unless given).
# The text presets keep the predictor's larger trees: a MiniLM segment runs for milliseconds, so walking
# 343 trees costs nothing that shows, and on tweets they cut 45.8 % of the FLOPs where PARAMS' small trees
# cut 43.8 % (both -0.3 points or better, eval-controller).
TEXT_PREDICTOR = dict(num_leaves=31, learning_rate=0.05)
PRESETS = {
    # tests: an 8x8-digit ViT that trains in seconds
    "digits-vit-tiny": dict(
        arch="vit", dataset="digits",
        model=dict(img_size=8, patch=2, stem="conv", dim=32, depth=4, heads=2, exits=(1, 2, 3, 4)),
        train=dict(epochs=15, batch_size=64, lr=3e-3, warmup_epochs=1.0, augment=False)),
    # make demo: trains in a few minutes on 2 cores
    "fmnist-vit-demo": dict(
        arch="vit", dataset="fashion-mnist",
        model=dict(dim=64, depth=6, heads=4, mlp_ratio=2.0, exits=(1, 2, 3, 4, 5, 6)),
        train=dict(epochs=3, batch_size=128, lr=2e-3, warmup_epochs=0.5, augment=False)),
    # the benchmark model: depth 12, exits after layer 1 and then every two layers. The conv stem
    # gives the tokens local structure. Shallow exits weigh by depth in the loss ("depth"): with uniform
    # weights the first block learns for its own exit (87.7 % test at exit 1 against 89.5 % at full depth
    # after 10 epochs); weighted by depth it serves the deep path (86.5 % against 90.2 % after 12 epochs).
    # No augmentation: in this budget shifts and flips slow learning more than they regularise
    # (after one epoch 79.5 % without against 72.5 % with, on validation).
    "fmnist-vit": dict(
        arch="vit", dataset="fashion-mnist",
        model=dict(dim=64, depth=12, heads=4, mlp_ratio=2.0, exits=(1, 2, 4, 6, 8, 10, 12)),
        train=dict(epochs=12, batch_size=128, lr=2e-3, warmup_epochs=1.0, augment=False,
                   exit_weights="depth")),
    # MiniLM-L6 fine-tuned, an exit after every layer
    "tweets-minilm": dict(
        arch="text", dataset="tweets", pretrained="minilm",
        model=dict(classes=3, max_len=64), tolerance=0.005,
        train=dict(epochs=1, batch_size=32, lr=6e-5, weight_decay=0.01, warmup_epochs=0.1,
                   freeze_embeddings=True),
        predictor=TEXT_PREDICTOR),
    "tweets-binary-minilm": dict(
        arch="text", dataset="tweets-binary", pretrained="minilm",
        model=dict(classes=2, max_len=64),
        train=dict(epochs=2, batch_size=32, lr=6e-5, weight_decay=0.01, warmup_epochs=0.1,
                   freeze_embeddings=True),
        predictor=TEXT_PREDICTOR),
    "bbc-minilm": dict(
        arch="text", dataset="bbc-news", pretrained="minilm",
        model=dict(classes=5, max_len=256),
        train=dict(epochs=4, batch_size=16, lr=8e-5, weight_decay=0.01, warmup_epochs=0.2,
                   freeze_embeddings=True),
        predictor=TEXT_PREDICTOR),
}


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise EdgeError(f"preset '{name}' | unknown (known: {', '.join(PRESETS)})")
    return PRESETS[name]


def model_config(arch: str, values: dict):
    """An architecture's config from a dict, naming the first unknown field instead of a TypeError."""
    if arch not in ARCHS:
        raise EdgeError(f"config | unknown architecture '{arch}' (known: {', '.join(ARCHS)})")
    cls = ARCHS[arch][1]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise EdgeError(f"config | unknown {arch} field '{unknown[0]}'")
    values = dict(values)
    if isinstance(values.get("exits"), list):
        values["exits"] = tuple(values["exits"])   # JSON lists back to the dataclass's tuple
    return cls(**values)


def build_model(arch: str, cfg):
    return ARCHS[arch][0](cfg)


def create_model(name: str, pretrained: bool = True, **overrides):
    """The preset's model (MiniLM weights loaded for text presets unless pretrained=False)."""
    spec = get_preset(name)
    cfg = model_config(spec["arch"], {**spec["model"], **overrides})
    model = build_model(spec["arch"], cfg)
    if pretrained and spec.get("pretrained") == "minilm":
        model.load_minilm()
    return model


def config_dict(cfg) -> dict:
    d = asdict(cfg)
    d["exits"] = list(d["exits"])
    return d
