"""The chain-wiring rule, defined once: what each segment reads and what the controller gets back.

Segment 0 reads the model's inputs (`pixels`, or `input_ids` and `attention_mask`). Segment k + 1 reads
segment k's `hidden_out` as `hidden`; its other inputs (the text models' `attention_mask`) pass through
unchanged from segment 0's feed, which is checked once against the manifest (check_feed). Every segment
also outputs its exit's `logits`, what leaves the executor for the controller (HOST); after segment 0 its
`hidden_out` leaves too, once, for the controller's features (edge_runtime.core.features.from_segment_0).
"""
import numpy as np

from edge_runtime.core.errors import EdgeError, Exit

HIDDEN_IN, HIDDEN_OUT = "hidden", "hidden_out"
HOST = ("logits",)


def carried_names(inputs: list) -> tuple:
    """The inputs that pass through the chain untouched: what segments 1.. read besides `hidden`.

    Args:
        inputs: every segment's manifest `inputs` ([{name, shape, dtype}]), in chain order.
    """
    names = []
    for seg in inputs[1:]:
        names += [i["name"] for i in seg if i["name"] != HIDDEN_IN and i["name"] not in names]
    return tuple(names)


def next_feed(inputs: list, hidden, carried: dict) -> dict:
    """The feed of a segment whose manifest `inputs` are given: `hidden` from the segment before it,
    the rest from `carried` (segment 0's pass-through inputs, already compacted with the batch)."""
    return {i["name"]: hidden if i["name"] == HIDDEN_IN else carried[i["name"]] for i in inputs}


def host_outputs(outputs: list, k: int) -> tuple:
    """The names among segment k's manifest `outputs` that the controller reads."""
    names = [o["name"] for o in outputs]
    return tuple(n for n in HOST + ((HIDDEN_OUT,) if k == 0 else ()) if n in names)


def check_feed(name: str, spec, feed: dict) -> None:
    """Inputs against the graph's spec: names, array type, dtype, rank, fixed dims, one batch size, finite.

    Args:
        name: the graph's name, for messages.
        spec: its GraphSpec (inputs: [{name, shape, dtype}]; named axes are free but must agree).
        feed: {input name: numpy array}.
    """
    expected = [i["name"] for i in spec.inputs]
    for key in feed:
        if key not in expected:
            raise EdgeError(f"input '{key}' | not an input of {name} (it takes: {', '.join(expected)})",
                            Exit.BAD_INPUT)
    axes = {}   # axis name -> (size, input that set it)
    for item in spec.inputs:
        key, want = item["name"], item["shape"]
        if key not in feed:
            raise EdgeError(f"input '{key}' | missing ({name} takes: {', '.join(expected)})", Exit.BAD_INPUT)
        x = feed[key]
        if not isinstance(x, np.ndarray):
            raise EdgeError(f"input '{key}' | a {type(x).__name__}, expected a numpy array", Exit.BAD_INPUT)
        if x.dtype.name != item["dtype"]:
            raise EdgeError(f"input '{key}' | dtype {x.dtype.name}, expected {item['dtype']}", Exit.BAD_INPUT)
        shown = "(" + ", ".join(str(d) for d in want) + ")"
        if x.ndim != len(want) or any(isinstance(d, int) and d != n for d, n in zip(want, x.shape)):
            raise EdgeError(f"input '{key}' | shape {tuple(x.shape)}, expected {shown}", Exit.BAD_INPUT)
        for d, n in zip(want, x.shape):
            if isinstance(d, int):
                continue
            if n < 1:
                raise EdgeError(f"input '{key}' | axis {d} is empty (shape {tuple(x.shape)})", Exit.BAD_INPUT)
            seen = axes.setdefault(d, (n, key))
            if seen[0] != n:
                raise EdgeError(f"input '{key}' | {d} {n}, but '{seen[1]}' has {d} {seen[0]}", Exit.BAD_INPUT)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise EdgeError(f"input '{key}' | holds NaN or infinite values", Exit.BAD_INPUT)
