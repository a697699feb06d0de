"""Fast inference: generator pipelines in physical units, folded graphs, precision, CUDA graphs.

A :class:`GeneratorPipeline` is the whole generation step as one ``nn.Module``: condition in
physical units → label preprocessing → network → inverse output preprocessing → event in
physical units. Bench (:mod:`detgan.bench`) times it and export (:mod:`detgan.export`) writes it
to ONNX, so both see exactly what a user runs. :func:`optimise` applies the CPU fast path
(batch-norm folding, transposed → ordinary convolutions, channels-last, optionally
``torch.compile``); :func:`precision` and :class:`CudaGraphPipeline` are the GPU options.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from detgan.utils import DetganError

__all__ = [
    "GeneratorPipeline",
    "RefinerPipeline",
    "transform_module",
    "load_pipeline",
    "default_pipelines",
    "fold_batchnorm",
    "optimise",
    "PRECISIONS",
    "precision",
    "CudaGraphPipeline",
    "accuracy_check",
]

PRECISIONS = ("float32", "tf32", "bf16")


# ------------------------------------------------------------------ transforms as modules
class _Affine(nn.Module):
    """y = x·scale + shift with buffers (standardise and its inverse)."""

    def __init__(self, scale: Tensor, shift: Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.float().clone())
        self.register_buffer("shift", shift.float().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class _Elementwise(nn.Module):
    """A fixed elementwise function (log, power, Box-Cox) with its constants baked in."""

    def __init__(self, fn: Callable[[Tensor], Tensor], label: str) -> None:
        super().__init__()
        self.fn, self.label = fn, label

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def _log_module(t: Any, inverse: bool) -> nn.Module:
    off, base = float(t.offset), float(t.base)
    ln_base = float(torch.log(torch.tensor(base, dtype=torch.float64)))
    if inverse:
        return _Elementwise(lambda y: torch.exp(y * ln_base) - off, f"{base}**y - {off}")
    return _Elementwise(lambda x: torch.log(x + off) / ln_base, f"log_{base}(x + {off})")


def _boxcox_module(t: Any, inverse: bool) -> nn.Module:
    lam, s = float(t.lam), float(t.shift)
    if abs(lam) < 1e-8:
        fwd, inv = (lambda x: torch.log(x + s)), (lambda y: torch.exp(y) - s)
    else:
        fwd = lambda x: (torch.pow(x + s, lam) - 1.0) / lam  # noqa: E731
        inv = lambda y: torch.pow(torch.clamp(lam * y + 1.0, min=0.0), 1.0 / lam) - s  # noqa: E731
    return _Elementwise(inv if inverse else fwd, f"boxcox(lam={lam}, shift={s}, inverse={inverse})")


def transform_module(t: Any, inverse: bool = False) -> nn.Module:
    """The :mod:`detgan.transforms` object ``t`` (or its inverse) as a traceable module.

    Elementwise, any shape (N, ...) → (N, ...). Constants become buffers or baked floats so the
    module runs on any device, inside CUDA graphs and in ONNX; the input checks of the
    transforms (which synchronise) are left out. Raises :class:`DetganError` for unknown kinds.
    """
    name = getattr(t, "name", None)
    if name == "identity":
        return nn.Identity()
    if name == "standardise":
        mean, std = t._params(torch.zeros(()))
        if inverse:
            return _Affine(std, mean)
        return _Affine(1.0 / std, -mean / std)
    if name == "log":
        return _log_module(t, inverse)
    if name == "boxcox":
        return _boxcox_module(t, inverse)
    if name == "chain":
        parts = [transform_module(p, inverse) for p in t.parts]
        return nn.Sequential(*(reversed(parts) if inverse else parts))
    raise DetganError(f"transform '{name}' cannot be compiled into a pipeline; update detgan")


# ------------------------------------------------------------------------------ pipeline
class GeneratorPipeline(nn.Module):
    """One generation step in physical units: (z (N, l), condition (N,) or (N, k)) → (N, ...).

    x = T_out⁻¹(g(z, T_label(condition))), with T the run's fitted preprocessing. ``info``
    records what the pipeline is (name, kind, condition units) for tables and exports.
    """

    def __init__(
        self,
        generator: nn.Module,
        latent_dim: int,
        label: nn.Module,
        output: nn.Module,
        info: dict[str, Any],
    ) -> None:
        super().__init__()
        self.generator, self.label, self.output = generator, label, output
        self.latent_dim = int(latent_dim)
        self.info = dict(info)

    @property
    def name(self) -> str:
        return str(self.info.get("name", "generator"))

    def forward(self, z: Tensor, condition: Tensor) -> Tensor:
        return self.output(self.generator(z, self.label(condition)))

    def sample_conditions(self, n: int, generator: torch.Generator) -> Tensor:
        """Conditions (n,) in physical units drawn log-uniformly in ``info['condition_range']``."""
        lo, hi = self.info.get("condition_range", (1.0, 100.0))
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        lo_t = torch.tensor(float(lo), dtype=torch.float64).log()
        hi_t = torch.tensor(float(hi), dtype=torch.float64).log()
        return torch.exp(lo_t + u * (hi_t - lo_t)).float()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.generator.parameters())


class RefinerPipeline(GeneratorPipeline):
    """A trace refiner in physical units: (z (N, 0) unused, traces s (N, n, n, T) VEM) → refined
    traces (N, n, n, T) VEM, via u = log10(1 + s), ψ(u), s' = 10^u' − 1 (refiner.py units).

    It has no noise (``latent_dim`` 0); the "condition" is the simulated trace. Sample traces
    for timing have ``info['active']`` of the stations with signal (exponential pulses).
    """

    def __init__(self, refiner: nn.Module, info: dict[str, Any]) -> None:
        ln10 = 2.302585092994046
        label = _Elementwise(lambda s: torch.log1p(s) / ln10, "log10(1 + s)")
        output = _Elementwise(lambda u: torch.expm1(u * ln10), "10**u - 1")
        super().__init__(refiner, 0, label, output, info)

    def forward(self, z: Tensor, condition: Tensor) -> Tensor:
        return self.output(self.generator(self.label(condition)))

    def sample_conditions(self, n: int, generator: torch.Generator) -> Tensor:
        n_side, bins = self.info.get("shape", (9, 80))
        active = torch.rand(n, n_side, n_side, 1, generator=generator) < self.info.get(
            "active", 0.2
        )
        t = torch.arange(bins, dtype=torch.float32)
        start = torch.randint(0, bins // 4, (n, n_side, n_side, 1), generator=generator)
        amp = 10 * torch.rand(n, n_side, n_side, 1, generator=generator)
        pulse = amp * torch.exp(-(t - start).clamp(min=0) / 8.0) * (t >= start)
        return pulse * active


def default_refiner() -> RefinerPipeline | None:
    """The [E18] Table 3 refiner with random weights, or None while it is not installed."""
    try:
        from detgan.models.refiner import Refiner, RefinerModelConfig
    except ImportError:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        refiner = Refiner(RefinerModelConfig(station_mask=True)).eval()
    info = {
        "name": "refiner",
        "kind": "refiner",
        "condition": "simulated traces (VEM)",
        "output": "refined traces (N, 9, 9, 80), VEM",
        "weights": "random (seed 0)",
        "shape": (9, 80),
        "active": 0.2,
        "max_batch_cpu": 100,
        "check_events": 16,
    }
    return RefinerPipeline(refiner, info)


def load_pipeline(run_dir: str | os.PathLike) -> GeneratorPipeline:
    """The generator of a training run directory as a CPU :class:`GeneratorPipeline`.

    The run's stored configuration says which model it is; footprint runs are rebuilt with
    :func:`detgan.studies.footprint.load_footprint_model` (EMA weights when kept).
    """
    from detgan.studies.footprint import load_footprint_model

    model = load_footprint_model(run_dir, "cpu")
    arch = model.setup.model.architecture
    info = {
        "name": f"footprint-{arch}",
        "kind": "generator",
        "run_dir": str(run_dir),
        "condition": "primary energy (EeV)",
        "condition_range": (1.0, 100.0),
        "output": "footprint (N, 9, 9), data units",
        "step": model.step,
    }
    return GeneratorPipeline(
        model.generator.eval(),
        _noise_dim(model.generator, model.setup),
        transform_module(model.transforms["label"]),
        transform_module(model.transforms["footprint"], inverse=True),
        info,
    )


def _noise_dim(generator: nn.Module, cfg: Any) -> int:
    """Noise input length: the generator's ``noise_dim`` when it has one, else the latent size."""
    cfg = getattr(cfg, "model", cfg)
    return int(getattr(generator, "noise_dim", getattr(cfg, "latent_dim", 0)))


def _randomise(module: nn.Module) -> nn.Module:
    """Draw biases and batch-norm statistics too, so an untrained network's output is not
    all zero (a fresh Table 1 generator ends in ReLU of negative values) and folding is tested."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.8, 1.2)
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1)
    return module


def default_pipelines() -> list[GeneratorPipeline]:
    """Freshly initialised default generators (speed does not depend on the weights).

    The footprint models use the paper architecture (Table 1 of [E18]) and the dense design of
    the ``quick`` preset, with plausible fixed preprocessing (label: standardised log10 E).
    """
    from detgan.models.footprint import build_footprint_models
    from detgan.studies.footprint import footprint_preset
    from detgan.transforms import Chain, Log, Standardise

    label = Chain(Log(offset=0.0), Standardise(scalar=True))
    label.parts[1].mean, label.parts[1].std = torch.tensor(1.3), torch.tensor(0.5)
    scale = Standardise(scalar=True, center=False)
    scale.mean, scale.std = torch.tensor(0.0), torch.tensor(1.0)
    out = []
    for preset in ("paper-journal", "quick"):
        cfg = footprint_preset(preset).model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            gen = _randomise(build_footprint_models(cfg, threshold=0.2)["generator"]).eval()
        info = {
            "name": f"footprint-{cfg.architecture}",
            "kind": "generator",
            "preset": preset,
            "condition": "primary energy (EeV)",
            "condition_range": (1.0, 100.0),
            "output": "footprint (N, 9, 9), data units",
            "weights": "random (seed 0)",
        }
        out.append(
            GeneratorPipeline(
                gen,
                _noise_dim(gen, cfg),
                transform_module(label),
                transform_module(scale, inverse=True),
                info,
            )
        )
    refiner = default_refiner()
    return out + ([refiner] if refiner is not None else [])


# ------------------------------------------------------------------------- graph rewrites
def _deconv_as_conv(ct: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None) -> nn.Conv2d:
    """ConvTranspose2d(stride 1, padding 0) [+ eval BatchNorm2d] → one equivalent Conv2d.

    A stride-1 transposed convolution equals a convolution with padding k − 1 and the kernel
    flipped and in/out swapped; batch norm y = (x − μ)·γ/√(σ² + ε) + β folds into it.
    """
    w = ct.weight.detach().flip(2, 3).transpose(0, 1)
    b = ct.bias.detach() if ct.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    w, b = _fold_bn(w, b, bn)
    kh, kw = ct.kernel_size
    conv = nn.Conv2d(w.shape[1], w.shape[0], (kh, kw), padding=(kh - 1, kw - 1))
    conv = conv.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    return conv


def _fold_bn(w: Tensor, b: Tensor, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    if bn is None:
        return w, b
    scale = bn.running_var.rsqrt() if bn.eps == 0 else (bn.running_var + bn.eps).rsqrt()
    if bn.affine:
        scale = scale * bn.weight.detach()
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(scale)
    return w * scale.reshape(-1, 1, 1, 1), (b - bn.running_mean) * scale + shift


def _foldable(ct: nn.Module) -> bool:
    return (
        isinstance(ct, nn.ConvTranspose2d)
        and ct.stride == (1, 1)
        and ct.padding == (0, 0)
        and ct.output_padding == (0, 0)
        and ct.dilation == (1, 1)
        and ct.groups == 1
    )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every foldable ConvTranspose2d [→ BatchNorm2d]
    pair inside an ``nn.Sequential`` replaced by one Conv2d; outputs agree to float rounding.
    """
    module = copy.deepcopy(module).eval()
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        layers, out, i = list(seq), [], 0
        while i < len(layers):
            layer = layers[i]
            bn = layers[i + 1] if i + 1 < len(layers) else None
            bn = bn if isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats else None
            if _foldable(layer):
                out.append(_deconv_as_conv(layer, bn))
                i += 2 if bn is not None else 1
            else:
                out.append(layer)
                i += 1
        for k in list(seq._modules):
            del seq._modules[k]
        for k, layer in enumerate(out):
            seq.add_module(str(k), layer)
    return module


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in module.modules())


def optimise(
    pipeline: GeneratorPipeline,
    device: torch.device | str = "cpu",
    *,
    fold: bool = True,
    channels_last: bool | None = None,
    compile: bool = False,
) -> GeneratorPipeline:
    """The inference fast path: a copy in eval mode, frozen, on ``device``.

    ``fold``: batch norm and transposed convolutions folded (:func:`fold_batchnorm`);
    ``channels_last`` (default: on for convolutional generators): NHWC weights, the layout
    oneDNN/cuDNN run fastest; ``compile``: ``torch.compile`` (costs seconds up front).
    """
    device = torch.device(device)
    out = copy.deepcopy(pipeline).eval()
    if fold:
        out.generator = fold_batchnorm(out.generator)
    if channels_last is None:
        channels_last = _has_conv(out.generator)
    out = out.to(device)
    if channels_last:
        out.generator = out.generator.to(memory_format=torch.channels_last)
    out.requires_grad_(False)
    out.info = {
        **pipeline.info,
        "fold": fold,
        "channels_last": bool(channels_last),
        "compile": compile,
    }
    if compile:
        out.generator = torch.compile(out.generator, dynamic=False)
    return out


# --------------------------------------------------------------------------- precision
@contextlib.contextmanager
def precision(name: str, device: torch.device | str) -> Iterator[None]:
    """Arithmetic precision for the enclosed code: ``float32`` (strict), ``tf32`` (CUDA
    matmul/conv with TF32 tensor cores) or ``bf16`` (autocast to bfloat16, CPU or CUDA)."""
    device = torch.device(device)
    if name not in PRECISIONS:
        raise DetganError(f"unknown precision '{name}'; choose one of {', '.join(PRECISIONS)}")
    if name == "tf32" and device.type != "cuda":
        raise DetganError("precision tf32 needs a CUDA device; use float32 or bf16 on the CPU")
    cuda = device.type == "cuda"
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        if name == "bf16":
            with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclasses.dataclass
class CudaGraphPipeline:
    """A pipeline captured as a CUDA graph for one batch size (small batches: launch-bound).

    ``__call__(z (B, l), condition (B,))`` copies into static buffers, replays the graph and
    returns a copy of the static output. Needs CUDA; capture happens on construction.
    """

    pipeline: GeneratorPipeline
    batch: int
    precision_name: str = "float32"

    def __post_init__(self) -> None:
        device = next(self.pipeline.parameters()).device
        if device.type != "cuda":
            raise DetganError("CUDA graphs need the pipeline on a CUDA device; drop --cuda-graphs")
        self.z = torch.zeros(self.batch, self.pipeline.latent_dim, device=device)
        self.c = torch.ones(self.batch, device=device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm-up: cuDNN autotuning and lazy allocations
                with precision(self.precision_name, device):
                    self.pipeline(self.z, self.c)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            with precision(self.precision_name, device):
                self.out = self.pipeline(self.z, self.c)

    def __call__(self, z: Tensor, condition: Tensor) -> Tensor:
        self.z.copy_(z, non_blocking=True)
        self.c.copy_(condition, non_blocking=True)
        self.graph.replay()
        return self.out.clone()


def accuracy_check(
    reference: GeneratorPipeline,
    fast: GeneratorPipeline | Callable,
    precision_name: str = "float32",
    n: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Compare ``fast`` (any precision) with the float32 ``reference`` on ``n`` events.

    Returns ``max_abs`` max |Δx|, ``rel_max`` = max |Δx| / max |x_ref| and ``rel_sum`` the
    largest relative difference of the per-event sum (e.g. the total signal).
    """
    device = torch.device(device)
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn(n, reference.latent_dim, generator=rng)
    c = reference.sample_conditions(n, rng)
    with torch.inference_mode():
        ref = reference.to("cpu").eval()(z, c).double()
        with precision(precision_name, device):
            got = fast(z.to(device), c.to(device)).float().cpu().double()
    diff = (got - ref).abs()
    sums = ref.flatten(1).sum(1)
    scale = ref.abs().max().clamp_min(1e-30)
    rel_sum = (got.flatten(1).sum(1) - sums).abs() / sums.abs().clamp_min(float(scale) * 1e-3)
    return {
        "max_abs": float(diff.max()),
        "rel_max": float(diff.max() / scale),
        "rel_sum": float(rel_sum.max()),
        "n": n,
        "precision": precision_name,
    }
