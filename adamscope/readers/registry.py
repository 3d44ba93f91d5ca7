"""Format detection: `detect(path)` tries each reader's probe; `open_checkpoint` builds the reader.

Readers register by appending to READERS (order matters only when two probes could both accept a
path; the torch-file readers accept files only, most other families are folders).
"""

from __future__ import annotations

import os
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.errors import CorruptCheckpointError, UnsupportedFormatError
from adamscope.readers.base import Reader

READERS: list[type[Reader]] = []
# file names that are checkpoints when they are files (an empty or cut-off one is corrupt, not foreign)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar", ".safetensors", ".distcp")
_ZIP_MAGIC = b"PK\x03\x04"


def register(reader: type[Reader], *, first: bool = False) -> type[Reader]:
    """Adds a reader class to the detection list (at the front with first=True)."""
    if reader not in READERS:
        if first:
            READERS.insert(0, reader)
        else:
            READERS.append(reader)
    return reader


def _register_builtin() -> None:
    from adamscope.readers.dcp import DCPReader
    from adamscope.readers.dcp_safetensors import HFStorageReader
    from adamscope.readers.deepspeed import DeepSpeedReader, DeepSpeedUniversalReader
    from adamscope.readers.hf_trainer import HFTrainerReader
    from adamscope.readers.lightning import LightningReader
    from adamscope.readers.megatron import MegatronDistReader
    from adamscope.readers.megatron_legacy import MegatronLegacyReader
    from adamscope.readers.nanogpt import NanoGPTReader
    from adamscope.readers.orbax import OrbaxReader
    from adamscope.readers.safetensors_optim import SafetensorsOptimReader
    from adamscope.readers.torch_optim import TorchOptimReader

    # Folder layouts that may also hold trainer_state.json (HF + DeepSpeed/FSDP) or `latest`
    # (Lightning + DeepSpeed) come before the readers that would otherwise claim them.
    for reader in (
        DeepSpeedReader,
        DeepSpeedUniversalReader,
        MegatronDistReader,  # a DCP folder with common.pt + metadata.json: before DCPReader
        MegatronLegacyReader,
        DCPReader,
        HFStorageReader,
        OrbaxReader,
        NanoGPTReader,
        LightningReader,
        HFTrainerReader,
        TorchOptimReader,
        SafetensorsOptimReader,
    ):
        register(reader)


_register_builtin()


def detect(path: str | os.PathLike[str]) -> type[Reader]:
    """The reader class whose probe accepts `path`.

    Raises:
        UnsupportedFormatError: no reader matches; the message says what was found.
    """
    path = Path(path)
    if not path.exists():
        raise UnsupportedFormatError(f"{path}: no such file or directory")
    if not path.is_dir():  # a FIFO or device would block or never end: refused before any open
        from adamscope.readers import guard

        guard.regular_file(path, what="checkpoint file")
        _check_whole(path)
    for reader in READERS:
        if reader.probe(path):
            return reader
    raise UnsupportedFormatError(f"{path}: no reader recognises it ({describe_found(path)})")


def _check_whole(path: Path) -> None:
    """Raises CorruptCheckpointError for a checkpoint file that is empty or a cut-off zip file."""
    from adamscope.readers.torchzip import is_zip

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CorruptCheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        if path.suffix in CHECKPOINT_SUFFIXES:
            raise CorruptCheckpointError(f"{path}: empty file (0 bytes): the save did not finish")
        raise UnsupportedFormatError(f"{path}: empty file (0 bytes)")
    if path.suffix == ".safetensors":
        from adamscope.readers import safetensors_io

        safetensors_io.header(path)  # header and data not cut short, entries well-formed
    if head == _ZIP_MAGIC and not is_zip(path):
        raise CorruptCheckpointError(
            f"{path}: truncated zip file ({size} bytes, no central directory at the end): the "
            "save did not finish or the copy was cut short"
        )


def open_checkpoint(path: str | os.PathLike[str], options: ReaderOptions | None = None) -> Reader:
    """Detects the format of `path` and returns its reader (nothing heavy is read yet)."""
    reader = detect(path)
    return reader(Path(path), options=options or ReaderOptions())


def describe_found(path: Path) -> str:
    """A short description of what is at `path`, for 'unsupported' messages."""
    from adamscope.readers.torchzip import is_legacy_torch

    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        more = f", ... ({len(names)} entries)" if len(names) > 8 else ""
        return f"a folder holding {', '.join(names[:8]) or 'nothing'}{more}"
    from adamscope.readers.torchzip import peek_torch

    tree = peek_torch(path)
    if isinstance(tree, dict) and tree and all(hasattr(v, "numel") for v in tree.values()):
        return (
            f"a model state_dict of {len(tree)} tensors and no optimizer state: adamscope needs the "
            "optimizer's exp_avg/exp_avg_sq (torch.save(optimizer.state_dict()) or a training checkpoint)"
        )
    if isinstance(tree, dict):
        keys = [str(k) for k in tree]
        more = ", ..." if len(keys) > 12 else ""
        return f"a torch.save file with top-level keys {', '.join(keys[:12])}{more}"
    if tree is not None:
        return f"a torch.save file holding a {type(tree).__name__}"
    if is_legacy_torch(path):
        return "a legacy (pre-1.6, non-zip) torch.save file; re-save it in the zip format"
    with open(path, "rb") as f:
        head = f.read(8)
    return f"a file of {path.stat().st_size} bytes starting with {head!r}"
