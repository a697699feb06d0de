"""ONNX export of generator pipelines (network + pre/post-processing) and the ONNX Runtime check.

The exported graph is :class:`detgan.fastpath.GeneratorPipeline`: inputs ``z`` (N, l) float32
standard normals and ``condition`` (N,) float32 in physical units (EeV for footprints); output
``events`` (N, ...) float32 in physical units. N is dynamic. The noise is an input so that the
caller owns the random numbers (reproducible, any RNG); see ``docs/deployment.md``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detgan import __version__
from detgan.utils import DetganError, atomic_output

__all__ = ["export_onnx", "onnx_metadata", "check_onnx", "export_run", "OPSET"]

OPSET = 17


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DetganError(
            "ONNX export needs the onnx package; pip install 'detgan[onnx]'"
        ) from None


def onnx_metadata(pipe: nn.Module) -> dict[str, str]:
    """String metadata stored in the model: what it is, input/output meaning, provenance."""
    info = {k: v for k, v in getattr(pipe, "info", {}).items() if k != "condition_range"}
    return {
        "producer": f"detgan {__version__}",
        "latent_dim": str(pipe.latent_dim),
        "inputs": "z (N, latent_dim) float32 ~ N(0, 1); condition (N,) float32",
        "info": json.dumps(info, default=str, sort_keys=True),
    }


def _log_ndtr_symbolic(g: Any, x: Any) -> Any:
    """ONNX for log Φ(x) = log(½(1 + erf(x/√2))), clamped away from log 0.

    Accurate to float32 rounding for x > −4; below, Φ is under 3·10⁻⁵ and the result only
    feeds saturated sigmoids (the gate noise of the dense generator), so the decision agrees.
    """
    half = g.op("Constant", value_t=torch.tensor(0.5))
    one = g.op("Constant", value_t=torch.tensor(1.0))
    tiny = g.op("Constant", value_t=torch.tensor(1e-30))
    inv_sqrt2 = g.op("Constant", value_t=torch.tensor(0.7071067811865476))
    cdf = g.op("Mul", half, g.op("Add", one, g.op("Erf", g.op("Mul", x, inv_sqrt2))))
    return g.op("Log", g.op("Max", cdf, tiny))


def _register_symbolics(opset: int) -> None:
    torch.onnx.register_custom_op_symbolic("aten::special_log_ndtr", _log_ndtr_symbolic, opset)


def export_onnx(
    pipe: nn.Module, path: str | os.PathLike, *, opset: int = OPSET, overwrite: bool = True
) -> Path:
    """Write ``pipe`` (a CPU float32 pipeline, eval mode) to ``path`` as ONNX with a dynamic
    batch dimension; the file appears only when complete. Returns the path."""
    _require_onnx()
    import onnx

    pipe = pipe.eval().to("cpu")
    z = torch.randn(2, pipe.latent_dim)
    c = torch.full((2,), 10.0)
    _register_symbolics(opset)
    with atomic_output(path, overwrite=overwrite) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                pipe,
                (z, c),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["z", "condition"],
                output_names=["events"],
                dynamic_axes={"z": {0: "batch"}, "condition": {0: "batch"}, "events": {0: "batch"}},
            )
        except Exception as exc:  # noqa: BLE001 - the exporter raises many kinds
            raise DetganError(
                f"ONNX export of '{getattr(pipe, 'name', 'model')}' failed "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                "report this model to the detgan developers"
            ) from None
        model = onnx.load(str(tmp))
        for key, value in onnx_metadata(pipe).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return Path(path)


def check_onnx(
    path: str | os.PathLike,
    pipe: nn.Module,
    n: int = 1000,
    seed: int = 0,
    rtol: float = 1e-5,
    threads: int = 1,
) -> dict[str, Any]:
    """Run the ONNX model in ONNX Runtime and the pipeline in PyTorch on the same ``n`` events.

    Agreement means |x_ort − x_torch| ≤ rtol·(|x_torch| + max|x_torch|) elementwise, i.e. within
    ``rtol`` relative to each value or, for values near zero (ReLU outputs), to the largest.
    Returns ``ok``, ``max_abs``, ``max_rel`` (max |Δ| / max |x|) and ``n``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise DetganError("the check needs onnxruntime; pip install 'detgan[onnx]'") from None
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, pipe.latent_dim, generator=rng)
    c = pipe.sample_conditions(n, rng)
    with torch.inference_mode():
        ref = pipe.eval().to("cpu")(z, c).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"z": z.numpy(), "condition": c.numpy()})[0]
    if got.shape != ref.shape:
        return {"ok": False, "n": n, "shape": list(got.shape), "expected": list(ref.shape)}
    diff = np.abs(got.astype(np.float64) - ref)
    scale = float(np.abs(ref).max()) or 1.0
    ok = bool(np.all(diff <= rtol * (np.abs(ref) + scale)))
    return {
        "ok": ok,
        "n": n,
        "max_abs": float(diff.max()),
        "max_rel": float(diff.max() / scale),
        "rtol": rtol,
    }


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    verify: bool = True,
    n_check: int = 1000,
) -> dict[str, Any]:
    """Export the generator of ``run_dir`` to ``out`` (ONNX); with ``verify`` compare ONNX
    Runtime with PyTorch on ``n_check`` events and refuse (delete ``out``) on disagreement."""
    from detgan.fastpath import load_pipeline
    from detgan.utils import check_output_path

    check_output_path(out, overwrite)
    pipe = load_pipeline(run_dir)
    path = export_onnx(pipe, out, overwrite=overwrite)
    result: dict[str, Any] = {"path": str(path), "name": pipe.name, "latent_dim": pipe.latent_dim}
    if verify:
        check = check_onnx(path, pipe, n_check)
        result["check"] = check
        if not check["ok"]:
            path.unlink(missing_ok=True)
            raise DetganError(
                f"ONNX Runtime disagrees with PyTorch (max relative difference "
                f"{check.get('max_rel', float('nan')):.2g}); no file was written"
            )
    return result
