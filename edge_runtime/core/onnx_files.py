"""Small helpers on ONNX files that both sides share (the exporter and the ORT build), so neither imports
the other. They take and return onnx ModelProtos; this module itself imports nothing from onnx."""


def drop_value_info(model):
    """`model` (an onnx ModelProto) without graph.value_info, the shapes inferred for its intermediate
    tensors. ONNX Runtime infers them again at load; given them, its allocation planner held more
    activation memory per run (fmnist-vit's 2-layer segment at batch 64: 17.5 MB with, 12.5 MB without),
    which a chain of segment sessions pays on top of one static graph (benchmarks/memory.py)."""
    del model.graph.value_info[:]
    return model

