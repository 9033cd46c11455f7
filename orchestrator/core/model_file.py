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
    "mlpackage": "a Core ML model package (.mlpackage folder: ML program spec and weights)",
    "pt2": "a torch.export program (torch.export.save, .pt2): the export torch-input passes take",
    "tflite": "a LiteRT / TensorFlow Lite flatbuffer (.tflite)",
    "pte": "an ExecuTorch program (.pte)",
    "huggingface": "a Hugging Face model folder (save_pretrained): config, weights, tokenizer",
}


@dataclass(frozen=True)
class ModelFile:
    """A model: its primary file, its format, its precision, and any companion files."""

    path: Path  # the primary file (.onnx, .xml, .ort, .pt2, .tflite, .pte)
    format: str  # one of FORMATS
    precision: str = "fp32"  # fp32 | fp16 | bf16 | int8 | int8_bf16 (int8, float layers bf16)
    extra: tuple[Path, ...] = field(default=())  # companion files (the IR's .bin, configs)

    def files(self) -> list[Path]:
        """Every file the model consists of."""
        if self.path.is_dir():  # a package folder (Core ML's .mlpackage): every file in it
            out = sorted(p for p in self.path.rglob("*") if p.is_file())
        else:
            out = [self.path]
        if self.format == "openvino_ir":
            out.append(self.path.with_suffix(".bin"))
        out.extend(self.extra)
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files() if p.exists())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks; of a folder, over its files' relative paths
    and contents in sorted order."""
    if path.is_dir():
        tree = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            tree.update(p.relative_to(path).as_posix().encode() + b"\0")
            tree.update(sha256_file(p).encode() + b"\n")
        return tree.hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
