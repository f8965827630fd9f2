"""ONNX export of a folded model: one self-contained file per segment, each checked and run once.

Segment k's graph (DESIGN section 5): static shapes except the batch axis; text runs at max_len tokens.
  segment 0   inputs pixels (B, C, H, W) float32, or input_ids and attention_mask (B, T) int64
  later       inputs hidden (B, T, C) float32 (+ attention_mask for text)
  every one   outputs hidden_out (B, T, C) and logits (B, classes), both float32
The hidden output is named hidden_out because an ONNX graph cannot use one name for an input and an
output; the runtime feeds segment k's hidden_out to segment k+1's hidden.

The dynamo exporter builds opset 18 and converts down with the onnx C API. When that fails it logs a
warning and keeps opset 18, and some conversions give nodes opset 17 does not allow (Split with
num_outputs). edge_model.fold writes its modules around both (slices, sum / T instead of mean); every
file is still loaded with onnx.checker, its opset compared, and run with ONNX Runtime.
"""
import hashlib
from pathlib import Path

import torch

from edge_model.models.text import AdaptiveTextEncoder
from edge_runtime.errors import EdgeError

OPSET = 17   # TensorRT 8.5 (JetPack 5 on Xavier) parses up to opset 17
OUTPUTS = ["hidden_out", "logits"]


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


def verify(path: Path, names: list, args: tuple, expected: tuple, opset: int) -> dict:
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
    outputs = sess.run(OUTPUTS, {n: a.numpy() for n, a in zip(names, args)})
    error = max(float(abs(torch.from_numpy(o) - e).max()) for o, e in zip(outputs, expected))
    return {"inputs": io_spec(model.graph.input), "outputs": io_spec(model.graph.output), "ort_max_abs": error}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_segments(folded, out_dir, example, opset: int = OPSET) -> list:
    """Write segment_0.onnx ... into out_dir, one self-contained file per segment of `folded`.

    Args:
        folded: a FoldedModel (edge_model.fold).
        out_dir: the directory to write to (created if missing).
        example: images (B, C, H, W), or (input_ids, attention_mask) of shape (B, max_len) for text.
        opset: the ai.onnx opset the files must declare.
    Returns:
        Per segment: index, exit depth, file, bytes, sha256, inputs and outputs (name, shape, dtype),
        params (read by the segment), and ort_max_abs (ONNX Runtime against the folded torch segment
        on the example, the larger over both outputs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, mask = example_inputs(folded, example)
    text = mask is not None
    batch = torch.export.Dim("batch", min=1)
    records, h = [], x
    for k, depth in enumerate(folded.exits):
        seg, names = folded.segment(k), input_names(k, text)
        args = (h, mask) if text else (h,)
        with torch.no_grad():
            expected = seg(*args)
        path = out / f"segment_{k}.onnx"
        with quiet_export():
            torch.onnx.export(seg, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=names, output_names=OUTPUTS,
                              dynamic_shapes=tuple({0: batch} for _ in args))
        checked = verify(path, names, args, expected, opset)
        records.append({"index": k, "exit": depth, "file": path.name, "bytes": path.stat().st_size,
                        "sha256": sha256(path), **checked, "params": folded.segment_params(k)})
        h = expected[0]
    return records
