"""A model on disk in one of the formats passes produce and targets load."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

# format name -> what the primary file is
FORMATS = {
    "onnx": "a self-contained ONNX file (.onnx)",
    "openvino_ir": "OpenVINO IR (.xml with its .bin beside it)",
    "ort": "ONNX Runtime Mobile format (.ort)",
    "tvm": "an Apache TVM Relax executable exported as a shared library (.so)",
    "pt2": "a torch.export program (torch.export.save, .pt2): the export torch-input passes take",
    "tflite": "a LiteRT / TensorFlow Lite flatbuffer (.tflite)",
    "pte": "an ExecuTorch program (.pte)",
}


@dataclass(frozen=True)
class ModelFile:
    """A model: its primary file, its format, its precision, and any companion files."""

    path: Path  # the primary file (.onnx, .xml, .ort, .pt2, .tflite, .pte)
    format: str  # one of FORMATS
    precision: str = "fp32"  # fp32 | fp16 | int8 (the weights' numeric format)
    extra: tuple[Path, ...] = field(default=())  # companion files (the IR's .bin, configs)

    def files(self) -> list[Path]:
        """Every file the model consists of."""
        out = [self.path]
        if self.format == "openvino_ir":
            out.append(self.path.with_suffix(".bin"))
        out.extend(self.extra)
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files() if p.exists())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
