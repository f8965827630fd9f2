"""ONNX export of a folded model: one self-contained file per segment, each checked and run once.

Segment k's graph (DESIGN section 5): static shapes except the batch axis; text runs at max_len tokens.
  segment 0   inputs pixels (B, C, H, W) float32, or input_ids and attention_mask (B, T) int64
  later       inputs hidden (B, T, C) float32 (+ attention_mask for text)
  every one   outputs hidden_out (B, T, C), logits (B, classes) and conf (B, 3): the controller's view of
              the exit (edge_runtime.core.features.confidence), all float32
  segment 0   also outputs features (B, 6 + P): the predictor's input (edge_runtime.core.features)
The controller's features are computed in the graphs because on the device each numpy call between two
segment runs costs microseconds (caches cold after the segment): in the graph they cost nearly nothing.
The hidden output is named hidden_out because an ONNX graph cannot use one name for an input and an
output; the runtime feeds segment k's hidden_out to segment k+1's hidden.

The dynamo exporter builds opset 18 and converts down with the onnx C API. When that fails it logs a
warning and keeps opset 18, and some conversions give nodes opset 17 does not allow (Split with
num_outputs). edge_model.fold writes its modules around both (slices, sum / T instead of mean); every
file is still loaded with onnx.checker, its opset compared, and run with ONNX Runtime. Files are saved
without value_info (edge_runtime.core.onnx_files.drop_value_info: less activation memory per segment run)
and with the lowest IR version their opset allows (lowest_ir: the device's older onnxruntime reads them).
"""
import hashlib
import math
from pathlib import Path

import torch

from edge_model.models.text import AdaptiveTextEncoder
from edge_runtime.core.onnx_files import drop_value_info, lowest_ir
from edge_runtime.core.errors import EdgeError

OPSET = 17   # TensorRT 8.5 (JetPack 5 on Xavier) parses up to opset 17


def output_names(k: int) -> list:
    return ["hidden_out", "logits", "conf"] + (["features"] if k == 0 else [])


def mean_last(x):
    """Mean over the last axis written sum / n: ReduceMean's axes became an input in opset 18, and the
    exporter's down-conversion to 17 fails on it (edge_model.fold)."""
    return x.sum(-1) / x.shape[-1]


def confidence(logits):
    """(B, 3) max probability, top-1 minus top-2 margin, entropy / log(classes): the torch twin of
    edge_runtime.core.features.confidence, tested equal."""
    log_p = torch.log_softmax(logits, -1)
    p = log_p.exp()
    top2 = torch.topk(p, 2, dim=-1).values
    entropy = -(p * log_p).sum(-1) / math.log(logits.shape[-1])
    return torch.stack([top2[:, 0], top2[:, 0] - top2[:, 1], entropy], -1)


class ControllerOutputs(torch.nn.Module):
    """Segment k of a folded model with the controller's inputs as extra graph outputs."""

    def __init__(self, segment, k: int, projection, text: bool, max_len: int = 0):
        """Args:
            segment: folded.segment(k).
            projection: edge_runtime.core.engine_dir.Projection (weight (C, P), bias (P,), eps) for segment 0.
            text: inputs are (input_ids, attention_mask); max_len scales the token count.
        """
        super().__init__()
        self.segment, self.k, self.text, self.max_len = segment, k, text, max_len
        if k == 0:
            self.register_buffer("weight", torch.from_numpy(projection.weight))
            self.register_buffer("bias", torch.from_numpy(projection.bias))
            self.eps = projection.eps

    def input_stats(self, x, mask):
        """(B, 3): edge_runtime.core.features.image_stats of the pixels, or text_stats of the mask."""
        if self.text:
            count = mask.float().sum(-1, keepdim=True) / self.max_len
            return torch.cat([count, torch.zeros_like(count), torch.zeros_like(count)], -1)
        flat = x.flatten(1)
        mean = mean_last(flat)
        std = mean_last((flat - mean[:, None]) ** 2).sqrt()
        dx = mean_last((x[..., 1:] - x[..., :-1]).abs().flatten(1))
        dy = mean_last((x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1))
        return torch.stack([mean, std, dx + dy], -1)

    def projected(self, h, mask):
        """(B, P): edge_runtime.core.engine_dir.Projection of segment 0's hidden output."""
        if mask is None:
            pooled = h.sum(1) / h.shape[1]
        else:
            keep = mask.float()[:, :, None]
            pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        pooled = pooled - mean_last(pooled)[:, None]
        pooled = pooled / (mean_last(pooled * pooled)[:, None] + self.eps).sqrt()
        return pooled @ self.weight + self.bias

    def forward(self, x, mask=None):
        h, logits = self.segment(x, mask)
        conf = confidence(logits)
        if self.k:
            return h, logits, conf
        return h, logits, conf, torch.cat([self.input_stats(x, mask), conf, self.projected(h, mask)], -1)


def input_names(k: int, text: bool) -> list:
    first = ["input_ids"] if text else ["pixels"]
    return (first if k == 0 else ["hidden"]) + (["attention_mask"] if text else [])


def quiet_export():
    """The dynamo exporter prints progress and logs its opset conversion and optional-package notes."""
    import contextlib
    import io
    import logging
    import warnings
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    return stack


def example_inputs(folded, example) -> tuple:
    """(x, mask or None) from `example`: images (B, C, H, W), or (input_ids, attention_mask) for text."""
    backbone = folded.backbone
    if isinstance(backbone, AdaptiveTextEncoder):
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise EdgeError("example | a text model exports from (input_ids, attention_mask)")
        x, mask = (torch.as_tensor(t).long() for t in example)
        if x.ndim != 2 or x.shape != mask.shape or x.shape[1] != backbone.cfg.max_len:
            raise EdgeError(f"example | input_ids {tuple(x.shape)} and attention_mask {tuple(mask.shape)} must "
                            f"both be (batch, {backbone.cfg.max_len}): the graphs are static at max_len")
    else:
        x, mask, c = torch.as_tensor(example).float(), None, backbone.cfg
        if x.ndim != 4 or tuple(x.shape[1:]) != (c.in_chans, c.img_size, c.img_size):
            raise EdgeError(f"example | images {tuple(x.shape)}, expected (batch, {c.in_chans}, "
                            f"{c.img_size}, {c.img_size})")
    if x.shape[0] < 2:
        # torch.export specialises a size-1 axis to the constant 1: trace the batch axis with two rows
        x, mask = torch.cat([x, x]), None if mask is None else torch.cat([mask, mask])
    return x, mask


def io_spec(values) -> list:
    """name, shape (the batch axis as its name) and dtype of ONNX graph inputs or outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype
    return [{"name": v.name,
             "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
             "dtype": tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name} for v in values]


def verify(path: Path, names: list, outputs: list, args: tuple, expected: tuple, opset: int) -> dict:
    """Check the file as ONNX, then run it with ONNX Runtime on `args`: its I/O spec and the error."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    got = {o.domain: o.version for o in model.opset_import}.get("", None)
    if got != opset:
        raise RuntimeError(f"{path.name} | opset {got}, asked for {opset} (the exporter's down-conversion "
                           "failed: change the torch code that lowers to the offending node)")
    inputs = [v.name for v in model.graph.input]
    if inputs != names:
        raise RuntimeError(f"{path.name} | inputs {inputs}, expected {names}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(outputs, {n: a.numpy() for n, a in zip(names, args)})
    error = max(float(abs(torch.from_numpy(o) - e).max()) for o, e in zip(got, expected))
    return {"inputs": io_spec(model.graph.input), "outputs": io_spec(model.graph.output), "ort_max_abs": error}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_segments(folded, out_dir, example, projection, opset: int = OPSET) -> list:
    """Write segment_0.onnx ... into out_dir, one self-contained file per segment of `folded`.

    Args:
        folded: a FoldedModel (edge_model.fold).
        out_dir: the directory to write to (created if missing).
        example: images (B, C, H, W), or (input_ids, attention_mask) of shape (B, max_len) for text.
        projection: the controller's feature projection (edge_runtime.core.engine_dir.Projection).
        opset: the ai.onnx opset the files must declare.
    Returns:
        Per segment: index, exit depth, file, bytes, sha256, inputs and outputs (name, shape, dtype),
        params (read by the segment), and ort_max_abs (ONNX Runtime against the folded torch segment
        on the example, the largest over its outputs).
    """
    import onnx
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, mask = example_inputs(folded, example)
    text = mask is not None
    batch = torch.export.Dim("batch", min=1)
    records, h = [], x
    max_len = getattr(folded.backbone.cfg, "max_len", 0)
    for k, depth in enumerate(folded.exits):
        seg = ControllerOutputs(folded.segment(k), k, projection, text, max_len)
        names, outputs = input_names(k, text), output_names(k)
        args = (h, mask) if text else (h,)
        with torch.no_grad():
            expected = seg(*args)
        path = out / f"segment_{k}.onnx"
        with quiet_export():
            torch.onnx.export(seg, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=names, output_names=outputs,
                              dynamic_shapes=tuple({0: batch} for _ in args))
        onnx.save(lowest_ir(drop_value_info(onnx.load(str(path))), opset), str(path))
        checked = verify(path, names, outputs, args, expected, opset)
        records.append({"index": k, "exit": depth, "file": path.name, "bytes": path.stat().st_size,
                        "sha256": sha256(path), **checked, "params": folded.segment_params(k)})
        h = expected[0]
    return records
