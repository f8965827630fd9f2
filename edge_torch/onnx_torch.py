"""The engine directory's ONNX graphs run as torch code: the torch-CUDA backend's interpreter, so that it runs
the folded segments every other backend runs, with no second copy of the model's code.

A graph is compiled once, at construction, into a list of closures over one list of values. Each value
lives in one of three places, decided there from what it depends on: constants (initializers, Constant
nodes and what only they feed) are folded on the CPU and moved to the device once; host values (Shape and
the shape arithmetic it feeds) are CPU tensors recomputed per call from the input shapes alone; the rest,
whatever reads a graph input's data, is on the device. So a call never reads a device tensor on the host
(no .item(), .tolist(), .cpu() or bool() on one) and torch.cuda.CUDAGraph can capture it: shape arguments
(Reshape, Expand, Slice, Tile, Split, Squeeze, Unsqueeze, TopK, ConstantOfShape, Range, Reduce axes) must
be constants or host values, and a graph whose shapes come from tensor data is refused at construction.
A host value that a device op reads as data (a float made from a shape) is copied to the device once per
set of input shapes and cached: run a graph once at the captured shapes before capturing it.

half=True: float initializers, constants and inputs are float16 on the device (finite values beyond its
range clamped to +-65504, as TensorRT does, so an attention mask's -3.4e38 stays finite and 0 * mask stays
0), Cast to float gives float16, float outputs are float16. Softmax, LogSoftmax, ReduceSum and ReduceMean
accumulate in float32 and cast back; LayerNormalization stays float16 and relies on torch's kernel, which
keeps mean and variance in float32 for float16 input. Shape arithmetic stays on the host in its own types.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from edge_runtime.core.errors import EdgeError, Exit
from edge_runtime.core.lazy import lazy_import

# onnx.TensorProto data types (FLOAT = 1, ...) as torch dtypes
DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
          9: torch.bool, 10: torch.float16, 11: torch.float64}
FP16_MAX = 65504.0          # the largest finite float16
CONST, HOST, DEV = 0, 1, 2  # where a value lives (module docstring)
SIG, NONE, JUNK = 0, 1, 2   # fixed slots: this call's input shapes, an absent optional input, an unused output
MULTI = ("Split", "TopK")   # ops that return a tuple


class Unsupported(Exception):
    """A node this interpreter cannot run as the graph asks (raised at construction)."""


def _ax(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints(v) -> list:
    """A shape argument as Python ints: constants come as lists already, host values as CPU tensors."""
    return v if type(v) is list else v.tolist()


def _tensor(onnx, proto) -> torch.Tensor:
    """An onnx TensorProto as a CPU tensor (copied: numpy_helper may hand back read-only memory)."""
    if proto.data_type not in DTYPES:
        raise Unsupported(f"tensor '{proto.name}' has ONNX data type {proto.data_type}")
    return torch.from_numpy(onnx.numpy_helper.to_array(proto).copy())


# Op builders: (attributes, context) -> a function of the node's inputs, absent optional ones as None. The
# context says whether the node runs on the device, the half flag and how many outputs the node names.

def _fixed(fn):
    return lambda a, c: fn


def _constant(a, c):
    for key, dtype in (("value", None), ("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            value = a[key] if dtype is None else torch.tensor(a[key], dtype=dtype)
            return lambda: value
    raise Unsupported(f"a Constant given as {', '.join(a) or 'nothing'}")


def _softmax(fn):
    def build(a, c):
        axis = a.get("axis", -1)
        return lambda x: fn(x, axis, dtype=torch.float32).to(x.dtype) if x.dtype == torch.float16 else fn(x, axis)
    return build


def _reduce(fn, accumulate: bool):
    def build(a, c):
        keep, noop = bool(a.get("keepdims", 1)), a.get("noop_with_empty_axes", 0)

        def run(x, axes=None):   # axes: an attribute up to opset 17 (ReduceSum: an input from 13)
            axes = a.get("axes") if axes is None else _ints(axes)
            if not axes and noop:
                return x
            dims = tuple(_ax(v, x.dim()) for v in (axes or range(x.dim())))
            if not accumulate:
                return fn(x, dims, keep)
            acc = torch.float32 if x.dtype == torch.float16 else x.dtype   # int32 sums stay int32, as in ONNX
            return fn(x, dims, keep, dtype=acc).to(x.dtype)
        return run
    return build


def _conv(a, c):
    auto, group = a.get("auto_pad", b"NOTSET").decode(), a.get("group", 1)
    convs = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

    def run(x, w, b=None):
        n = w.dim() - 2
        strides, dil = a.get("strides", [1] * n), a.get("dilations", [1] * n)
        if auto in ("SAME_UPPER", "SAME_LOWER"):   # output = ceil(input / stride); the odd pad at the end (UPPER)
            size = x.shape[2:]
            total = [max((-(-size[i] // strides[i]) - 1) * strides[i] + (w.shape[2 + i] - 1) * dil[i] + 1 - size[i],
                         0) for i in range(n)]
            lo = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in total]
            hi = [t - l for t, l in zip(total, lo)]
        else:
            pads = a.get("pads", [0] * 2 * n) if auto == "NOTSET" else [0] * 2 * n   # VALID: none
            lo, hi = list(pads[:n]), list(pads[n:])
        if lo != hi:   # torch pads both sides alike: pad first (F.pad lists the last dim first)
            x = F.pad(x, [p for i in reversed(range(n)) for p in (lo[i], hi[i])])
            lo = [0] * n
        return convs[n](x, w, b, strides, lo, dil, group)
    return run


def _gemm(a, c):
    alpha, beta, ta, tb = a.get("alpha", 1.0), a.get("beta", 1.0), a.get("transA", 0), a.get("transB", 0)

    def run(x, w, bias=None):
        x, w = (x.t() if ta else x), (w.t() if tb else w)
        if bias is None:
            return torch.mm(x, w) * alpha if alpha != 1.0 else torch.mm(x, w)
        return torch.addmm(bias, x, w, beta=beta, alpha=alpha)
    return run


def _layer_norm(a, c):
    if c["outputs"] > 1:
        raise Unsupported("only the first output (Y) is supported, not Mean or InvStdDev")
    axis, eps = a.get("axis", -1), a.get("epsilon", 1e-5)

    def run(x, scale, bias=None):
        shape = x.shape[_ax(axis, x.dim()):]
        if scale.shape == shape and (bias is None or bias.shape == shape):
            return F.layer_norm(x, shape, scale, bias, eps)
        y = F.layer_norm(x, shape, None, None, eps) * scale   # scale and bias broadcast to the normalised shape
        return y if bias is None else y + bias
    return run


def _reshape(a, c):
    allowzero = a.get("allowzero", 0)

    def run(x, shape):
        dims = _ints(shape)
        if not allowzero:   # a 0 copies the input's dim
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)
    return run


def _slice(a, c):
    def run(x, starts, ends, axes=None, steps=None):
        starts, ends = _ints(starts), _ints(ends)
        axes = range(len(starts)) if axes is None else _ints(axes)
        steps = [1] * len(starts) if steps is None else _ints(steps)
        index = [slice(None)] * x.dim()
        for s, e, ax, st in zip(starts, ends, axes, steps):
            ax = _ax(ax, x.dim())
            dim = x.shape[ax]
            s, e = (s + dim if s < 0 else s), (e + dim if e < 0 else e)
            if st > 0:
                index[ax] = slice(min(max(s, 0), dim), min(max(e, 0), dim), st)
            else:   # torch slices forwards only: flip the axis and slice the mirrored range
                s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
                x, index[ax] = x.flip(ax), slice(dim - 1 - s, dim - 1 - e, -st)
        return x[tuple(index)]
    return run


def _gather(a, c):
    axis = a.get("axis", 0)

    def run(x, idx):
        ax = _ax(axis, x.dim())
        idx = torch.where(idx < 0, idx + x.shape[ax], idx)   # negative indices count from the end
        return torch.index_select(x, ax, idx.reshape(-1)).reshape(x.shape[:ax] + idx.shape + x.shape[ax + 1:])
    return run


def _cast(a, c):
    to = DTYPES.get(a["to"])
    if to is None:
        raise Unsupported(f"Cast to ONNX data type {a['to']}")
    to = torch.float16 if to == torch.float32 and c["device"] and c["half"] else to
    return lambda x: x.to(to)


def _const_of_shape(a, c):
    value = a.get("value", torch.zeros(1))
    fill = value.reshape(-1)[0].item()    # an attribute: a host tensor, read once here
    return lambda shape: torch.full(_ints(shape), fill, dtype=value.dtype)


def _split(a, c):
    axis, n = a.get("axis", 0), c["outputs"]

    def run(x, split=None):
        sizes = a.get("split") if split is None else _ints(split)
        return torch.split(x, sizes or -(-x.shape[axis] // n), axis)   # none: equal parts, the last smaller
    return run


def _unsqueeze(a, c):
    def run(x, axes=None):
        axes = a["axes"] if axes is None else _ints(axes)
        for ax in sorted(_ax(v, x.dim() + len(axes)) for v in axes):
            x = x.unsqueeze(ax)
        return x
    return run


def _squeeze(a, c):
    def run(x, axes=None):
        axes = a.get("axes") if axes is None else _ints(axes)
        return x.squeeze() if axes is None else x.squeeze(tuple(_ax(v, x.dim()) for v in axes))
    return run


def _shape(a, c):
    part = slice(a.get("start", 0), a.get("end"))   # Python's slice clamps as the opset 15 spec does
    return lambda x: torch.tensor(x.shape[part], dtype=torch.int64)


def _flatten(a, c):
    axis = a.get("axis", 1)

    def run(x):
        ax = _ax(axis, x.dim())
        return x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))
    return run


def _topk(a, c):
    axis, largest, ordered = a.get("axis", -1), bool(a.get("largest", 1)), bool(a.get("sorted", 1))
    return lambda x, k: torch.topk(x, _ints(k)[0], _ax(axis, x.dim()), largest, ordered)


ELEMENTWISE = {
    "Sqrt": torch.sqrt, "Erf": torch.erf, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Relu": torch.relu,
    "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Abs": torch.abs, "Reciprocal": torch.reciprocal,
    "Not": torch.logical_not, "Identity": lambda x: x, "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
    "Div": lambda x, y: torch.div(x, y, rounding_mode=None if x.is_floating_point() else "trunc"),
    "Pow": lambda x, y: torch.pow(x, y).to(x.dtype), "MatMul": torch.matmul, "Equal": torch.eq,
    "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le, "GreaterOrEqual": torch.ge,
    "And": torch.logical_and, "Or": torch.logical_or, "Where": torch.where,
    "Clip": lambda x, lo=None, hi=None: torch.clamp(x, lo, hi),
    "Range": lambda s, l, d: torch.arange(s.item(), l.item(), d.item(), dtype=s.dtype),   # host values only
}
# op type -> (builder, the input positions that are shape arguments: constants or host values, never data)
OPS = {name: (_fixed(fn), (0, 1, 2) if name == "Range" else ()) for name, fn in ELEMENTWISE.items()}
OPS.update({
    "Conv": (_conv, ()), "Gemm": (_gemm, ()), "LayerNormalization": (_layer_norm, ()),
    "Softmax": (_softmax(torch.softmax), ()), "LogSoftmax": (_softmax(torch.log_softmax), ()),
    "ReduceSum": (_reduce(torch.sum, True), (1,)), "ReduceMean": (_reduce(torch.mean, True), (1,)),
    "ReduceMax": (_reduce(torch.amax, False), (1,)), "ReduceMin": (_reduce(torch.amin, False), (1,)),
    "Reshape": (_reshape, (1,)), "Slice": (_slice, (1, 2, 3, 4)), "Shape": (_shape, ()), "Gather": (_gather, ()),
    "Transpose": (lambda a, c: lambda x: x.permute(a.get("perm") or list(reversed(range(x.dim())))), ()),
    "Concat": (lambda a, c: lambda *xs: torch.cat(xs, a["axis"]), ()), "Constant": (_constant, ()),
    "ConstantOfShape": (_const_of_shape, (0,)), "Cast": (_cast, ()), "Unsqueeze": (_unsqueeze, (1,)),
    "Squeeze": (_squeeze, (1,)), "Split": (_split, (1,)), "Flatten": (_flatten, ()), "TopK": (_topk, (1,)),
    "Expand": (lambda a, c: lambda x, s: x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(s)))), (1,)),
    "Tile": (lambda a, c: lambda x, reps: x.repeat(_ints(reps)), (1,)),
})


class TorchGraph:
    """One ONNX graph as a torch callable on `device`.

    Args:
        path: a self-contained .onnx file (opset 13-18, ai.onnx ops).
        device: a torch device string ("cpu", "cuda:0").
        half: float weights, inputs and outputs in float16 (module docstring).
    """

    def __init__(self, path, device="cpu", half=False):
        onnx = lazy_import("onnx", extra="runtime", why="the torch-CUDA backend")
        self.path, self.device, self.half = Path(path), torch.device(device), bool(half)
        name = self.path.name
        if not self.path.is_file():
            raise EdgeError(f"{name} | no such file ({self.path})", Exit.NOT_FOUND)
        try:
            model = onnx.load(str(self.path))
        except Exception as err:   # DecodeError, ValueError, ... on a damaged file
            raise EdgeError(f"{name} | onnx cannot read it ({str(err).splitlines()[0]})", Exit.CORRUPT) from None
        opset = {o.domain or "ai.onnx": o.version for o in model.opset_import}.get("ai.onnx", 0)
        if not 13 <= opset <= 18:
            raise EdgeError(f"{name} | opset {opset} (the torch backend reads opsets 13-18)", Exit.BAD_INPUT)
        for node in model.graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
                op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                raise EdgeError(f"{name} | op {op} is not supported by the torch backend "
                                f"(supported: {', '.join(sorted(OPS))})", Exit.BAD_INPUT)
        try:
            self._compile(onnx, model.graph)
        except Unsupported as err:
            raise EdgeError(f"{name} | {err}", Exit.BAD_INPUT) from None

    def _compile(self, onnx, graph) -> None:
        consts = {t.name: _tensor(onnx, t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in consts]
        self.output_names = [o.name for o in graph.output]
        place = dict.fromkeys(self.input_names, DEV)
        place.update(dict.fromkeys(consts, CONST))
        slots = {}   # (value name, "dev", "host" or "ints": a constant shape as a list) -> index in the values

        def slot(value: str, where: str) -> int:
            return slots.setdefault((value, where), len(slots) + 3)   # after SIG, NONE, JUNK

        plan = []    # the nodes that run per call: (function, input slots, output slots, output names, tuple?)
        for node in graph.node:
            label = f"node {node.name or node.op_type} ({node.op_type})"
            outputs = list(node.output)
            while outputs and not outputs[-1]:
                outputs.pop()
            missing = [v for v in node.input if v and v not in place]
            if missing:
                raise Unsupported(f"{label} reads '{missing[0]}', which nothing before it defines")
            build, shape_args = OPS[node.op_type]
            out = max([place[v] for v in node.input if v], default=CONST)
            out = min(out, HOST) if node.op_type == "Shape" else out   # a shape is host metadata
            data = [v for i, v in enumerate(node.input) if v and i in shape_args and place[v] == DEV]
            if data:
                raise Unsupported(f"{label}: '{data[0]}' is a shape argument computed from tensor data "
                                  f"(the torch backend takes shapes from constants and shapes only)")
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: _tensor(onnx, v) if isinstance(v, onnx.TensorProto) else v for k, v in attrs.items()}
            try:
                fn = build(attrs, dict(device=out == DEV, half=self.half, outputs=len(outputs)))
            except (Unsupported, KeyError) as err:   # KeyError: a required attribute is missing
                raise Unsupported(f"{label}: {err}") from None
            multi = node.op_type in MULTI
            if out == CONST:   # fold it now, on the CPU
                got = fn(*[consts[v] if v else None for v in node.input])
                consts.update(zip(outputs, got if multi else [got]))
                place.update(dict.fromkeys(outputs, CONST))
                continue
            ins = []
            for i, v in enumerate(node.input):
                if i in shape_args:
                    where = "ints" if place.get(v) == CONST else "host"
                else:   # (Shape, a host op, reads a device tensor)
                    where = "dev" if out == DEV or place.get(v) == DEV else "host"
                ins.append(slot(v, where) if v else NONE)
            outs = [slot(o, "dev" if out == DEV else "host") if o else JUNK for o in outputs]
            place.update((o, out) for o in outputs if o)
            plan.append((fn, ins, outs, outputs, multi))
        undefined = [o for o in self.output_names if o not in place]
        if undefined:
            raise Unsupported(f"output '{undefined[0]}' is not computed by any node")

        self._inputs = [(slot(n, "dev"), n) for n in self.input_names]
        self._outputs = [(n, slot(n, "dev")) for n in self.output_names]
        lifts = [(v, i) for (v, where), i in slots.items() if where == "dev" and place[v] == HOST]
        self._lifted, self._any_lift = {}, bool(lifts)
        # Constants: the device copy made once, host tensors as they are, 1-D integer shapes as Python lists.
        self._template = [None] * (len(slots) + 3)
        for (v, where), i in slots.items():
            if place[v] == CONST:
                t = consts[v]
                as_list = where == "ints" and t.dim() == 1 and t.dtype in (torch.int64, torch.int32)
                self._template[i] = self._to_device(t) if where == "dev" else t.tolist() if as_list else t
        # Each per-call value is dropped after its last reader, so memory is reused within a call (a capture).
        keep = {i for _, i in self._outputs} | {i for (v, _), i in slots.items() if place[v] == CONST}
        last = {i: k for k, (_, ins, _, _, _) in enumerate(plan) for i in ins if i > JUNK and i not in keep}
        self._steps = []
        for k, (fn, ins, outs, names, multi) in enumerate(plan):
            self._steps.append(_step(fn, ins, outs, multi, [i for i in set(ins) if last.get(i) == k]))
            # a host value a device op reads: lifted after the node that makes it, cached per input shapes
            self._steps += [self._lift_step(slots[v, "host"], i) for v, i in lifts if v in names]

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.half and t.dtype == torch.float32:   # clamp to float16's range, keep infinities
            t = torch.where(torch.isfinite(t), t.clamp(-FP16_MAX, FP16_MAX), t).half()
        return t.to(self.device)

    def _lift_step(self, src: int, dst: int):
        cache = self._lifted

        def lift(env):
            key = (dst, env[SIG])
            if key not in cache:
                if len(cache) > 256:   # a bound, for callers whose batch sizes never repeat
                    cache.clear()
                cache[key] = self._to_device(env[src])
            env[dst] = cache[key]
        return lift

    def __call__(self, feed: dict) -> dict:
        """The graph's outputs for `feed`.

        Args:
            feed: {input name: torch.Tensor on the device}; float32 inputs are cast when half=True.
        Returns:
            {output name: tensor on the device}.
        """
        env = list(self._template)
        for i, name in self._inputs:
            x = feed[name]
            env[i] = x.to(torch.float16) if self.half and x.dtype == torch.float32 else x
        if self._any_lift:
            env[SIG] = tuple(tuple(feed[n].shape) for n in self.input_names)
        for step in self._steps:
            step(env)
        return {name: env[i] for name, i in self._outputs}

    def run_into(self, feed: dict, out: dict) -> None:
        """As __call__, but copies each output named in `out` into its preallocated tensor there (static
        buffers for CUDA-graph capture); outputs not named in `out` are dropped."""
        got = self(feed)
        for name, buf in out.items():
            buf.copy_(got[name])


def _step(fn, ins: list, outs: list, multi: bool, dead: list):
    """One node as a closure over the value list: run it, store its outputs, let go of what it read last."""
    o = outs[0]

    def step(env):
        got = fn(*[env[i] for i in ins])
        if multi:
            for i, v in zip(outs, got):
                env[i] = v
        else:
            env[o] = got
        for i in dead:
            env[i] = None
    return step
