"""Small helpers on ONNX files that both sides share (the exporter and the ORT build), so neither imports
the other. They take and return onnx ModelProtos; this module itself imports nothing from onnx."""


def drop_value_info(model):
    """`model` (an onnx ModelProto) without graph.value_info, the shapes inferred for its intermediate
    tensors. ONNX Runtime infers them again at load; given them, its allocation planner held more
    activation memory per run (fmnist-vit's 2-layer segment at batch 64: 17.5 MB with, 12.5 MB without),
    which a chain of segment sessions pays on top of one static graph (benchmarks/memory.py)."""
    del model.graph.value_info[:]
    return model



# The IR version each ai.onnx opset was released with (onnx's Versioning.md), and the first onnxruntime
# that reads each IR version (its release notes). The exporter stamps the files with the lowest IR their
# opset allows, so an older runtime on the device reads them: JetPack 5's onnxruntime-gpu 1.16 reads IR 9
# at most, and the dynamo exporter writes IR 10.
IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}
ORT_READS_IR = {7: (1, 6), 8: (1, 10), 9: (1, 15), 10: (1, 18)}
ORT_READS_OPSET = {13: (1, 6), 14: (1, 8), 15: (1, 10), 16: (1, 11), 17: (1, 12), 18: (1, 14), 19: (1, 15),
                   20: (1, 17), 21: (1, 18)}


def lowest_ir(model, opset: int):
    """`model` stamped with the IR version of `opset` when it declares a newer one (the graph uses nothing
    newer: the exporter's checker run on the result says so)."""
    want = IR_FOR_OPSET.get(opset)
    if want is not None and model.ir_version > want:
        model.ir_version = want
    return model


def ort_reads(ir_version: int, opset: int) -> str:
    """The oldest onnxruntime ("major.minor") that loads files of `ir_version` and runs ai.onnx `opset`."""
    if ir_version not in ORT_READS_IR or opset not in ORT_READS_OPSET:
        raise ValueError(f"IR {ir_version}, opset {opset} | not in edge_runtime.core.onnx_files' tables")
    return "%d.%d" % max(ORT_READS_IR[ir_version], ORT_READS_OPSET[opset])
