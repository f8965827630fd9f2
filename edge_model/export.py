"""ONNX export of a folded model: one self-contained file per segment, each checked and run once.

Segment k's graph (DESIGN section 5): static shapes except the batch axis; text runs at max_len tokens.
  segment 0   inputs pixels (B, C, H, W) float32, or input_ids and attention_mask (B, T) int64
  later       inputs hidden (B, T, C) float32 (+ attention_mask for text)
  every one   outputs hidden_out (B, T, C) and its exit's logits (B, classes), float32
The controller's features (confidence, input statistics, the projected pooled vector) are computed by
the device's C kernels from these outputs (edge_runtime._kernels): in the graphs they cost 61 us of
segment 0's 308 and 15 us of every later segment's 202 (ONNX Runtime, 1 thread, fmnist-vit-demo, one
tiny op after another), in C about a microsecond.
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
from pathlib import Path

import torch

from edge_model.models.text import AdaptiveTextEncoder
from edge_runtime.core.onnx_files import drop_value_info, lowest_ir
from edge_runtime.core.errors import EdgeError

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
    return example_inputs_of(folded.backbone, example)


def example_inputs_of(backbone, example) -> tuple:
    """example_inputs for an (unfolded or folded) backbone."""
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


class DepthGraph(torch.nn.Module):
    """The folded model from its inputs to exit k, with no other exit head: what fixed:D and full run.
    The segments compute every exit head and the controller's features on the way; a mode that reads no
    intermediate exit pays for none of them here (DESIGN section 5)."""

    def __init__(self, folded, k: int, start: int = 0):
        """start 0: from the model's inputs; 1: from segment 0's hidden_out (the rest of a oneshot chain)."""
        super().__init__()
        self.backbone, self.k, self.start = folded.backbone, k, start

    def forward(self, x, mask=None):
        b = self.backbone
        bias, keep = b.attention_inputs(mask)
        h = b.embed(x) if self.start == 0 else x
        for j in range(self.start, self.k + 1):   # python ints: the loop unrolls at export
            h = b.run_segment(h, j, bias)
        return b.exit_logits(h, self.k, keep)


class PlainGraph(torch.nn.Module):
    """The unfolded model at full depth, as a user exports it without this product: the baseline."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, mask=None):
        return self.model(x, mask)


def export_graph(module, args: tuple, path: Path, names: list, outputs: list, opset: int,
                 dynamo: bool = True) -> dict:
    """One module as one self-contained ONNX file, dynamic batch axis, checked and run once (verify).
    dynamo=False: the TorchScript exporter (the plain baseline: the unfolded model's ops do not all come
    down to opset 17 through the dynamo exporter). Returns file, bytes, sha256, inputs, outputs and
    ort_max_abs."""
    import onnx
    with torch.no_grad():
        expected = module(*args)
    expected = expected if isinstance(expected, tuple) else (expected,)
    with quiet_export():
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                              input_names=names, output_names=outputs,
                              dynamic_shapes=tuple({0: batch} for _ in args))
        else:
            torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=outputs, dynamic_axes={n: {0: "batch"} for n in names + outputs})
    onnx.save(lowest_ir(drop_value_info(onnx.load(str(path))), opset), str(path))
    checked = verify(path, names, outputs, args, expected, opset)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), **checked,
            "expected": expected}


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
        on the example, the largest over its outputs).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x, mask = example_inputs(folded, example)
    text = mask is not None
    records, h = [], x
    for k, depth in enumerate(folded.exits):
        args = (h, mask) if text else (h,)
        rec = export_graph(folded.segment(k), args, out / f"segment_{k}.onnx", input_names(k, text), OUTPUTS, opset)
        h = rec.pop("expected")[0]
        records.append({"index": k, "exit": depth, **rec, "params": folded.segment_params(k)})
    return records


def export_chains(folded, out_dir, example, opset: int = OPSET) -> list:
    """The chain graphs: chain_0_K.onnx runs the model's inputs to exit K (fixed and full), chain_1_K.onnx
    segment 0's hidden_out to exit K (the rest of a oneshot chain), each with exit K's head only.
    Returns per graph: from (0 or 1), to (K), and export_graph's record."""
    out = Path(out_dir)
    x, mask = example_inputs(folded, example)
    text = mask is not None
    with torch.no_grad():
        h0 = folded.segment(0)(x, mask)[0]
    records = []
    for start, first in ((0, x), (1, h0)):
        names = input_names(start, text)
        args = (first, mask) if text else (first,)
        for k in range(start, len(folded.exits)):
            rec = export_graph(DepthGraph(folded, k, start), args, out / f"chain_{start}_{k}.onnx", names,
                               ["logits"], opset)
            rec.pop("expected")
            records.append({"from": start, "to": k, **rec})
    return records


def export_plain(model, path: Path, example, opset: int = OPSET) -> dict:
    """The unfolded model's full depth as one plain graph (inputs -> logits), as a user exports it without
    this product (the TorchScript exporter, opset 17): what edge-infer bench measures every mode against.
    Not part of what the device needs."""
    x, mask = example_inputs_of(model, example)
    text = mask is not None
    rec = export_graph(PlainGraph(model).eval(), (x, mask) if text else (x,), path, input_names(0, text),
                       ["logits"], opset, dynamo=False)
    rec.pop("expected")
    return rec
