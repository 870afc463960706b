"""Export a quantized checkpoint to ONNX (QDQ) and compare onnxruntime with the fake-quantized model.

python scripts/onnx_check.py --checkpoint run/students/real/quantized.pt --dataset cifar10_npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch.utils.data import DataLoader, Subset

from dfq.evaluate import load_export
from dfq.quant.export import encodings_path
from dfq.quant.onnx_export import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model", default=None, help="model config option (default: from the export)")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--opset", type=int, default=21)
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-graph-optimization", action="store_true", help="run the graph as exported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or json.loads(encodings_path(args.checkpoint).read_text())["model"]
    network, test = load_export(args.checkpoint, model, args.dataset)
    test = Subset(test, range(min(args.max_samples, len(test))))
    x, y = next(iter(DataLoader(test, batch_size=len(test))))
    path = export_onnx(
        network, x[:2], Path(args.checkpoint).with_suffix(f".opset{args.opset}.onnx"), args.opset
    )
    kinds = [node.op_type for node in onnx.load(str(path)).graph.node]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    if args.no_graph_optimization:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options)
    ours = np.concatenate([session.run(None, {"input": b.numpy()})[0] for b in x.split(250)])
    with torch.no_grad():
        reference = torch.cat([network(b) for b in x.split(250)]).numpy()
    report = {
        "onnx": str(path),
        "opset": args.opset,
        "quantize_linear_nodes": kinds.count("QuantizeLinear"),
        "images": len(y),
        "graph_optimization": not args.no_graph_optimization,
        "max_abs_logit_difference": float(np.abs(ours - reference).max()),
        "mean_abs_logit_difference": float(np.abs(ours - reference).mean()),
        "argmax_agreement": float((ours.argmax(1) == reference.argmax(1)).mean()),
        "onnxruntime_top1": float(100.0 * (ours.argmax(1) == y.numpy()).mean()),
        "torch_top1": float(100.0 * (reference.argmax(1) == y.numpy()).mean()),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
