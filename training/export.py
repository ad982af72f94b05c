"""The `onnx` stage of `rpe-pad train`: IRPRN's two halves as ONNX, checked against PyTorch.

- ``irprn/encoder.onnx``: ``images [B, 3, S, S]`` in [0, 1] -> ``features [B, C, h, w]``;
- ``irprn/pair_head.onnx``: ``query, gallery [B, C, h, w]`` -> ``q [B, stages, 4]``,
  ``t [B, stages, 3]``.

Both with a dynamic batch axis. The check runs ONNX Runtime on the CPU (CUDA's TF32
convolutions differ by about 4e-3, over the tolerance; the service's sessions use CUDA where
present) against PyTorch on random inputs and on real views (``images``), batch sizes 1 and 5, and
refuses the export when any output differs by more than ``TOLERANCE`` (1e-4), relative to
the output's magnitude where that exceeds 1 (``check_parity``).
PyTorch's TorchScript-based exporter is used (the dynamo exporter needs onnxscript); its
deprecation warning is silenced here on purpose.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
import torch

from models import onnx_runtime as rt
from models.bundle import FILES, REPORTS, WORK_FILES
from models.hashing import sha256_file
from models.irprn import IRPRN, load_irprn, to_input

TOLERANCE = 1e-4
OPSET = 17


class ExportError(RuntimeError):
    """The exported graph disagrees with PyTorch."""


def export_irprn(net: IRPRN, out_dir: Path, suffix: str = "") -> tuple[Path, Path]:
    """Write ``encoder{suffix}.onnx`` and ``pair_head{suffix}.onnx`` (the bundle's names,
    ``FILES``) into ``out_dir``."""
    net = net.eval()
    size = net.cfg.input_size
    out_dir.mkdir(parents=True, exist_ok=True)
    enc_path, head_path = (out_dir / f"{name.stem}{suffix}{name.suffix}"
                           for name in (PurePosixPath(FILES["encoder"]), PurePosixPath(FILES["pair_head"])))
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        f = net.encoder(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.encoder, (x,), str(enc_path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        torch.onnx.export(net.head, (f, f.flip(0)), str(head_path), dynamo=False, opset_version=OPSET,
                          input_names=["query", "gallery"], output_names=["q", "t"],
                          dynamic_axes={"query": {0: "batch"}, "gallery": {0: "batch"}, "q": {0: "batch"}, "t": {0: "batch"}})
    for path in (enc_path, head_path):
        onnx.checker.check_model(onnx.load(str(path)))
    return enc_path, head_path


@torch.no_grad()
def check_parity(net: IRPRN, enc_path: Path, head_path: Path, images: torch.Tensor | None = None,
                 device: str = "cpu") -> dict:
    """Max |ONNX Runtime - PyTorch| per output on random and real inputs; raises ExportError
    when any difference, scaled by its output's magnitude (``max(1, max |PyTorch|)``: the
    encoder's activations reach tens, where float32 sums in another order differ by more
    than 1e-4 absolute), is above ``TOLERANCE``. The pose outputs are below 1 in size, so
    for them the check is absolute."""
    net = net.eval()
    size = net.cfg.input_size
    enc, head = rt.session(enc_path, device), rt.session(head_path, device)
    gen = torch.Generator().manual_seed(0)
    inputs = {"random_b1": torch.rand(1, 3, size, size, generator=gen), "random_b5": torch.rand(5, 3, size, size, generator=gen)}
    if images is not None and len(images):
        inputs["real"] = to_input(images[:5], size)
    diffs: dict[str, float] = {}
    scaled: dict[str, float] = {}

    def compare(key: str, onnx_out: np.ndarray, torch_out: torch.Tensor) -> None:
        ref = torch_out.numpy()
        diffs[key] = float(np.abs(onnx_out - ref).max())
        scaled[key] = diffs[key] / max(1.0, float(np.abs(ref).max()))

    for name, x in inputs.items():
        f_torch = net.encoder(x)
        compare(f"{name}/features", rt.run(enc, images=x.numpy())[0], f_torch)
        g = f_torch.roll(1, dims=0)
        q_t, t_t = net.head(f_torch, g)
        q_o, t_o = rt.run(head, query=f_torch.numpy(), gallery=g.numpy())
        compare(f"{name}/q", q_o, q_t)
        compare(f"{name}/t", t_o, t_t)
    worst = max(scaled.values())
    result = {"max_abs_diff": max(diffs.values()), "max_scaled_diff": worst, "per_output": diffs,
              "providers": enc.get_providers(), "tolerance": TOLERANCE}
    if not worst <= TOLERANCE:
        raise ExportError(f"ONNX Runtime and PyTorch differ by {worst:.3g} (scaled) > {TOLERANCE}: {json.dumps(diffs)}")
    return result


def _graph_key(work: Path) -> dict:
    """What ties the exported graphs in the work folder ``work`` to the weights they were
    checked against."""
    return {"weights_sha256": sha256_file(work / WORK_FILES["irprn_weights"]),
            "encoder_sha256": sha256_file(work / FILES["encoder"]),
            "pair_head_sha256": sha256_file(work / FILES["pair_head"])}


def graphs_current(work: Path) -> bool:
    """True when both graphs of the work folder ``work`` exist and its ONNX key
    (``WORK_FILES["onnx_key"]``) ties them to the current weights."""
    try:
        saved = json.loads((work / WORK_FILES["onnx_key"]).read_text())
        return (work / FILES["encoder"]).is_file() and (work / FILES["pair_head"]).is_file() \
            and saved == _graph_key(work)
    except (OSError, ValueError):
        return False


def run_onnx_stage(category, out_dir: Path, progress: bool = True) -> dict:
    start = time.perf_counter()
    weights = out_dir / WORK_FILES["irprn_weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: run the irprn stage first")
    previous = out_dir / REPORTS["onnx"]
    if previous.is_file() and graphs_current(out_dir):
        return {**json.loads(previous.read_text()), "skipped": True}
    irprn_dir = weights.parent
    net, _ = load_irprn(irprn_dir)
    # Export next to the weights under temporary names; only graphs that pass the parity
    # check replace the served ones, and the manifest ties them to these weights.
    tmp_enc, tmp_head = export_irprn(net, irprn_dir, suffix=".tmp")
    images = torch.stack([v.image for v in category.train[:5]])
    try:
        # On the CPU provider wherever the build runs: the check is of the graph, and ONNX
        # Runtime's CUDA provider computes in TF32 on recent GPUs (about 4e-3 off, beyond TOLERANCE).
        parity = check_parity(net, tmp_enc, tmp_head, images)
    except ExportError:
        tmp_enc.unlink(missing_ok=True)
        tmp_head.unlink(missing_ok=True)
        raise
    enc_path, head_path = tmp_enc.replace(out_dir / FILES["encoder"]), tmp_head.replace(out_dir / FILES["pair_head"])
    (out_dir / WORK_FILES["onnx_key"]).write_text(json.dumps(_graph_key(out_dir)) + "\n")
    report = {"category": category.name, "encoder_bytes": enc_path.stat().st_size, "pair_head_bytes": head_path.stat().st_size,
              **parity, "seconds": round(time.perf_counter() - start, 1)}
    previous.parent.mkdir(parents=True, exist_ok=True)
    previous.write_text(json.dumps(report, indent=2) + "\n")
    return report
