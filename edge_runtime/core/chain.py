"""The chain-wiring rule, defined once: what each segment reads and what the controller gets back.

Segment 0 reads the model's inputs (`pixels`, or `input_ids` and `attention_mask`). Segment k + 1 reads
segment k's `hidden_out` as `hidden`; its other inputs (the text models' `attention_mask`) pass through
unchanged from segment 0's feed. Every segment also outputs its exit's `logits` and `conf`, and segment 0
the controller's `features`: the few floats per row that leave the executor (HOST).
"""
HIDDEN_IN, HIDDEN_OUT = "hidden", "hidden_out"
HOST = ("logits", "conf", "features")


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


def host_outputs(outputs: list) -> tuple:
    """The names among a segment's manifest `outputs` that the controller reads."""
    names = [o["name"] for o in outputs]
    return tuple(n for n in HOST if n in names)
