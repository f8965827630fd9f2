"""Multi-exit training with dual-path distillation. Runs alone or under torchrun (DDP) unchanged,
on the GPU when there is one (under torchrun: GPU LOCAL_RANK, one per process), else on the CPU.

loss = CE(final exit) + sum over shallow exits k of w_k [(1 - a) CE(exit k) + a T^2 KL(final/T || exit k/T)]
The full-depth path is the teacher (detached), so the shallow exits learn from it, not it from them.
w_k sums to 1: uniform, or proportional to the exit's depth ("depth"), which leaves the first layers to
serve the deep path rather than their own exit (each head still trains at full speed under AdamW).
"""
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from edge_model.checkpoint import param_digest, save_checkpoint, write_json
from edge_model.data import load_dataset
from edge_model.inputs import augment, copy_tokenizer, make_inputs, make_preprocess
from edge_model.presets import create_model, get_preset
from edge_runtime.core.errors import EdgeError


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    # what to train, and where it goes
    preset: str = "digits-vit-tiny"
    out: str = ""                 # default: checkpoints/<preset>
    data_dir: str = ""            # Fashion-MNIST IDX files, when not from the Debian package
    seed: int = 0
    # optimisation: AdamW, linear warm-up, cosine decay to min_lr_ratio * lr
    epochs: float = 10.0
    batch_size: int = 128         # per process
    lr: float = 2e-3
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05    # tensors of rank >= 2 only (nanoGPT's configure_optimizers)
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    # exits: "multi" trains every exit with distillation; "final" trains the last exit alone (the baseline)
    exit_loss: str = "multi"
    distill_alpha: float = 0.5
    distill_temp: float = 2.0
    exit_weights: str = "uniform"  # shallow exits' share of the loss: "uniform" or "depth" (see above)
    # data and machine
    augment: bool = True          # images: random shift by 2 px and horizontal flip
    freeze_embeddings: bool = False   # text: keep the 30522 x 384 word embeddings fixed (12M fewer to update)
    threads: int = 0              # torch intra-op threads; 0 = torch's default
    device: str = "auto"          # where training runs (not the edge device): "auto" (cuda if any), "cpu", "cuda"
    max_minutes: float = 0.0      # stop early after this long (0 = run every epoch)

    def __post_init__(self):
        if self.exit_loss not in ("multi", "final"):
            raise EdgeError(f"exit_loss '{self.exit_loss}' | expected 'multi' or 'final'")
        if self.exit_weights not in ("uniform", "depth"):
            raise EdgeError(f"exit_weights '{self.exit_weights}' | expected 'uniform' or 'depth'")
        if self.device not in DEVICES:
            raise EdgeError(f"device '{self.device}' | expected 'auto', 'cpu' or 'cuda'")
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise EdgeError("train config | epochs, batch_size and lr must be positive")


def config_from(preset: str, **overrides) -> TrainConfig:
    """Preset defaults, then explicit overrides (None means 'not given')."""
    spec = get_preset(preset)
    known = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in overrides.items() if v is not None and k in known}
    return TrainConfig(**{**spec["train"], "preset": preset, **given})


def shallow_weights(exits, how: str) -> list:
    """Loss weights of the shallow exits (every exit but the last), summing to 1."""
    shallow = list(exits)[:-1]
    raw = [float(d) for d in shallow] if how == "depth" else [1.0] * len(shallow)
    return [w / sum(raw) for w in raw]


def multi_exit_loss(outs: list, y, cfg: TrainConfig, weights=None):
    """weights: the shallow exits' weights (shallow_weights); uniform when None."""
    final = outs[-1]
    loss = F.cross_entropy(final, y, label_smoothing=cfg.label_smoothing)
    if cfg.exit_loss == "final" or len(outs) == 1:
        return loss
    T, a = cfg.distill_temp, cfg.distill_alpha
    teacher = F.log_softmax(final.detach() / T, -1)
    weights = weights or shallow_weights(range(len(outs)), "uniform")
    shallow = [w * ((1 - a) * F.cross_entropy(o, y, label_smoothing=cfg.label_smoothing)
                    + a * T * T * F.kl_div(F.log_softmax(o / T, -1), teacher, log_target=True,
                                           reduction="batchmean"))
               for w, o in zip(weights, outs[:-1])]
    return loss + sum(shallow)


class ExitsForward(nn.Module):
    """What DDP wraps: every exit (multi) or the last exit alone (final), as a list."""

    def __init__(self, model, all_exits: bool):
        super().__init__()
        self.model, self.all_exits = model, all_exits

    def forward(self, x, mask):
        return self.model.forward_exits(x, mask) if self.all_exits else [self.model(x, mask)]


def pick_device(requested: str, cuda_available: bool, local_rank=None, gpu_count=None) -> tuple:
    """(torch device, DDP backend) for cfg.device: "cuda:LOCAL_RANK" under torchrun (one GPU per process),
    "cuda" alone, with nccl; "cpu" with gloo. gpu_count (when known) catches more processes than GPUs."""
    if requested not in DEVICES:
        raise EdgeError(f"device '{requested}' | expected 'auto', 'cpu' or 'cuda'")
    if requested == "cpu" or (requested == "auto" and not cuda_available):
        return "cpu", "gloo"
    if not cuda_available:
        raise EdgeError("device 'cuda' | torch sees no CUDA GPU here; use --device cpu (or auto)")
    if local_rank is None:
        return "cuda", "nccl"
    if gpu_count is not None and local_rank >= gpu_count:
        raise EdgeError(f"LOCAL_RANK {local_rank} | only {gpu_count} CUDA GPU(s) visible: "
                        "start at most one process per GPU (torchrun --nproc-per-node)")
    return f"cuda:{local_rank}", "nccl"


def setup_distributed(backend: str = "gloo"):
    """(rank, world size). torchrun sets WORLD_SIZE; backend from pick_device (gloo on CPU, nccl on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist
    dist.init_process_group(backend)
    return dist.get_rank(), world


def to_device(t, device: str):
    """A batch tensor on `device`; None (an image batch's mask) stays None, and on the CPU it is `t` itself.
    For CUDA the host copy is pinned first so the transfer can run asynchronously (non_blocking)."""
    if t is None or device == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def optimizer_for(model, cfg: TrainConfig):
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def lr_at(step: int, total: int, warmup: int, cfg: TrainConfig) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    from edge_model.evaluate import collect_exits, exit_accuracy
    from edge_model.models.text import minilm_dir
    local_rank = int(os.environ["LOCAL_RANK"]) if "LOCAL_RANK" in os.environ else None   # set by torchrun
    device, backend = pick_device(cfg.device, torch.cuda.is_available(), local_rank, torch.cuda.device_count())
    if device.startswith("cuda:"):
        torch.cuda.set_device(device)   # before the process group: nccl binds each rank to this GPU
    rank, world = setup_distributed(backend)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = get_preset(cfg.preset)
    out = Path(cfg.out or f"checkpoints/{cfg.preset}")
    torch.manual_seed(cfg.seed)   # the same init on every rank (DDP also broadcasts rank 0's)
    model = create_model(cfg.preset)
    if cfg.freeze_embeddings and hasattr(model, "embed_tokens"):
        model.embed_tokens.weight.requires_grad_(False)
    data = load_dataset(spec["dataset"], cfg.data_dir or None)
    pre = make_preprocess(data, model.cfg)
    tok = minilm_dir() / "tokenizer.json" if pre["kind"] == "text" else None
    train_in, val_in = make_inputs(data, "train", pre, tok), make_inputs(data, "val", pre, tok)

    weights = shallow_weights(model.exits, cfg.exit_weights)
    # built (and seeded) on the CPU, then moved, so every device starts from the same weights; moved before
    # DDP wraps it and before the optimizer sees its parameters
    model.to(device)
    net = ExitsForward(model, cfg.exit_loss == "multi")
    if world > 1:
        ids = None if device == "cpu" else [torch.cuda.current_device()]   # the GPU set above, LOCAL_RANK's
        net = nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=cfg.exit_loss == "final")
    sampler = DistributedSampler(range(len(train_in)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    steps_per_epoch = len(sampler) // cfg.batch_size
    total, warmup = int(cfg.epochs * steps_per_epoch), int(cfg.warmup_epochs * steps_per_epoch)
    opt = optimizer_for(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    is_main = rank == 0
    if is_main:
        print(f"train {cfg.preset}: {model.num_params() / 1e6:.2f}M params, exits {list(model.exits)}, "
              f"{len(train_in)} train / {len(val_in)} val, {total} steps, world {world}, device {device}",
              flush=True)
    log, step, start = [], 0, time.time()
    for epoch in range(math.ceil(cfg.epochs)):
        sampler.set_epoch(epoch)
        batches = train_in.batches(list(sampler), cfg.batch_size, gen)
        model.train()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}", disable=not (progress and is_main),
                   mininterval=2.0, leave=False)
        loss_sum, seen = 0.0, 0
        for idx in bar:
            if step >= total:
                break
            x, mask, y = train_in.batch(idx)
            if cfg.augment and pre["kind"] == "image":
                x = augment(x, gen)   # on the CPU, with the CPU generator: the same shifts on every device
            x, mask, y = to_device(x, device), to_device(mask, device), to_device(y, device)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, cfg)
            loss = multi_exit_loss(net(x, mask), y, cfg, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step, loss_sum, seen = step + 1, loss_sum + loss.item(), seen + 1
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}", refresh=False)
        bar.close()
        elapsed = time.time() - start
        if is_main:
            val_acc = exit_accuracy(collect_exits(model, val_in, device=device)["logits"], val_in.y.numpy())
            log.append({"epoch": epoch + 1, "step": step, "loss": loss_sum / max(seen, 1),
                        "val_exit_accuracy": val_acc, "elapsed_s": round(elapsed, 1)})
            print(f"epoch {epoch + 1}: loss {loss_sum / max(seen, 1):.4f}  val acc by exit "
                  + " ".join(f"{a * 100:.1f}" for a in val_acc) + f"  ({elapsed / 60:.1f} min)", flush=True)
        if stop_now(cfg, elapsed, world, device) or step >= total:
            break

    model.cpu()   # the digest hashes host bytes and safetensors writes CPU tensors only (no-op on the CPU)
    digest = param_digest(model)
    print(f"rank {rank} param sha256 {digest}", flush=True)
    if is_main:
        task = {"dataset": data.name, "kind": data.kind, "labels": data.labels, "preprocess": pre, "split_seed": 0}
        save_checkpoint(out, model, spec["arch"], task,
                        {"preset": cfg.preset, "train": asdict(cfg), "param_sha256": digest})
        if tok is not None:
            copy_tokenizer(tok.parent, out)
        write_json(out / "train_log.json", {"preset": cfg.preset, "world_size": world, "device": device,
                                            "epochs": log, "train_seconds": round(time.time() - start, 1),
                                            "param_sha256": digest})
        print(f"checkpoint written to {out}", flush=True)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    return out


def stop_now(cfg: TrainConfig, elapsed: float, world: int, device: str = "cpu") -> bool:
    """The time budget, decided by rank 0 so every rank stops after the same epoch."""
    # on the training device: nccl broadcasts CUDA tensors only
    flag = torch.tensor([1.0 if cfg.max_minutes and elapsed > cfg.max_minutes * 60 else 0.0], device=device)
    if world > 1:
        import torch.distributed as dist
        dist.broadcast(flag, 0)
    return bool(flag.item())
