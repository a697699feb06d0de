"""Generate footprints from an exported detgan model with ONNX Runtime only (no torch).

detgan export RUN/ --format onnx -o footprint.onnx
python examples/onnx_infer.py footprint.onnx --energy 30 -n 1000
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--energy", type=float, default=30.0, help="primary energy in EeV")
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads  # 1 is best for small batches on busy machines
    sess = ort.InferenceSession(args.model, opts, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    latent = int(meta["latent_dim"])
    print("model:", json.loads(meta["info"]).get("name"), "latent", latent)

    rng = np.random.default_rng(args.seed)  # the caller owns the random numbers
    z = rng.standard_normal((args.n, latent), dtype=np.float32)
    energy = np.full(args.n, args.energy, dtype=np.float32)
    (events,) = sess.run(["events"], {"z": z, "condition": energy})
    print("events", events.shape, "mean total signal", float(events.sum(axis=(1, 2)).mean()))


if __name__ == "__main__":
    main()
