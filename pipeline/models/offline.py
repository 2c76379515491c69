"""`temporal.mode=offline`: one bidirectional scan over a whole source, fed chunk by chunk.

The paper's bidirectional layer on a sequence x of L tokens is

    h = LayerNorm(x);   x' = x + (fwd(h) + flip(bwd(flip(h)))) / 2

with both mixers starting from a zero state. A source arrives as chunks x_0 .. x_{n-1}
(their concatenation is x), so the same layer is computed layer by layer:

    1. forward:  for c = 0 .. n-1, y_c, s = fwd(norm(x_c), s)           (state s carried)
    2. backward: for c = n-1 .. 0, b_c, s = bwd(flip(norm(x_c)), s)     (state carried in reverse)
                 x'_c = x_c + (y_c + flip(b_c)) / 2

A mixer's state is its conv_state and ssm_state, so carrying it is exactly continuing the
scan (the causal conv included): the result equals one pass over the whole concatenated
sequence, to float tolerance. Then the next layer, and the final norm per chunk.

Memory: layer l's input for the whole source plus layer l+1's forward halves, i.e. two
copies of the source's (L, d_model) activations at the peak (with an adapter, TemporalEncoder: two
copies at its width plus each chunk's input, kept for the residual). `ActivationStore` keeps them
in memory up to a configured size and writes the rest to disk (safetensors files in a
private folder it deletes), so the host holds at most that size plus one chunk's working
set, whatever the length of the source.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline.errors import VidstormError
from pipeline.models.scan import SCAN_IMPLS
from pipeline.models.temporal import TemporalEncoder

Key = tuple[int, int]  # (layer, chunk)


class SpillError(VidstormError):
    """The spill folder cannot be created or written."""


class ActivationStore:
    """Per-chunk tensors keyed (layer, chunk): in memory up to `memory_bytes`, on disk past it.

    Spilled tensors go to a private folder made (on the first spill) inside `spill_dir`,
    named by this store, never by a user, and removed by close(). Files registered with
    adopt() belong to the caller: read, never deleted.
    """

    def __init__(self, memory_bytes: int, spill_dir: str | Path | None = None):
        if memory_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {memory_bytes}")
        self.memory_bytes = memory_bytes
        self.spill_parent = Path(spill_dir) if spill_dir else Path(tempfile.gettempdir())
        self.folder: Path | None = None
        self._memory: dict[Key, torch.Tensor] = {}
        self._files: dict[Key, tuple[Path, bool]] = {}  # key -> (path, owned)
        self.held = 0  # bytes in memory now
        self.peak = 0  # most bytes ever held in memory at once
        self.files_written = 0
        self.bytes_written = 0

    def put(self, key: Key, tensor: torch.Tensor) -> None:
        self.discard(key)
        tensor = tensor.detach().to("cpu")
        size = tensor.numel() * tensor.element_size()
        if not tensor.is_contiguous() or tensor.untyped_storage().nbytes() != size:
            tensor = tensor.contiguous().clone()  # never keep a larger buffer alive through a view
        if self.held + size <= self.memory_bytes:
            self._memory[key] = tensor
            self.held += size
            self.peak = max(self.peak, self.held)
            return
        path = self._spill_folder() / f"layer{key[0]}-chunk{key[1]}.safetensors"
        try:
            save_file({"x": tensor}, str(path))
        except OSError as err:
            raise SpillError(f"cannot write offline activations to {path.parent} ({err.strerror or err}); "
                             "free disk space or set temporal.offline_spill_dir to another folder") from None
        self._files[key] = (path, True)
        self.files_written += 1
        self.bytes_written += size

    def adopt(self, key: Key, path: str | Path) -> None:
        """A tensor already saved (under the name "x") by the caller, read from there when needed."""
        self.discard(key)
        self._files[key] = (Path(path), False)

    def get(self, key: Key) -> torch.Tensor:
        if key in self._memory:
            return self._memory[key]
        return load_file(str(self._files[key][0]))["x"]

    def pop(self, key: Key) -> torch.Tensor:
        tensor = self.get(key)
        self.discard(key)
        return tensor

    def discard(self, key: Key) -> None:
        tensor = self._memory.pop(key, None)
        if tensor is not None:
            self.held -= tensor.numel() * tensor.element_size()
        path, owned = self._files.pop(key, (None, False))
        if owned:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._memory.clear()
        self._files.clear()
        self.held = 0
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _spill_folder(self) -> Path:
        if self.folder is None:
            try:
                self.spill_parent.mkdir(parents=True, exist_ok=True)
                self.folder = Path(tempfile.mkdtemp(prefix="offline-", dir=self.spill_parent))
            except OSError as err:
                raise SpillError(f"cannot create an offline spill folder in {self.spill_parent} "
                                 f"({err.strerror or err}); set temporal.offline_spill_dir to a writable folder"
                                 ) from None
        return self.folder


@torch.inference_mode()
def project_chunk(encoder: TemporalEncoder, tokens: torch.Tensor) -> torch.Tensor:
    """A chunk's SigLIP grid (T, H, W, C) -> the first layer's input (T, h, w, d_model), on the host."""
    return encoder.project(tokens[None].to(encoder.device))[0].cpu()


def save_projected(path: str | Path, x: torch.Tensor, meta: dict) -> None:
    """One chunk's projected tokens (T, h, w, D) + a JSON-able `meta`, written atomically
    (a reader sees the old file or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t, h, w, d = x.shape
    header = {"shape": json.dumps([t, h, w, d]), "meta": json.dumps(meta)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({"x": x.detach().to("cpu").reshape(1, t * h * w, d).contiguous()}, str(tmp), metadata=header)
    os.replace(tmp, path)


def read_projected_header(path: str | Path) -> tuple[tuple[int, int, int, int], dict]:
    """((T, h, w, D), meta) of a file save_projected wrote, without reading its tensor."""
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return tuple(json.loads(header["shape"])), json.loads(header["meta"])


class OfflineScan:
    """One source through a bidirectional TemporalEncoder as a whole (module docstring).

        scan = OfflineScan(encoder, memory_bytes, spill_dir)
        for grid in grids: scan.add(grid)        # SigLIP grids (T, H, W, C), chunk by chunk
        for out in scan.outputs(): ...           # (T, h, w, d_model) per chunk, in order
        scan.close()                             # (or use it as a context manager)
    """

    def __init__(self, encoder: TemporalEncoder, memory_bytes: int, spill_dir: str | Path | None = None,
                 on_step: Callable[[], None] | None = None):
        if not encoder.bidirectional:
            raise ValueError("the offline scan needs a bidirectional temporal encoder (mode offline)")
        self.encoder = encoder
        self.store = ActivationStore(memory_bytes, spill_dir)
        self.shapes: list[tuple[int, int, int]] = []  # (T, h, w) of each chunk
        self.on_step = on_step or (lambda: None)  # called after each chunk of each pass (a heartbeat)
        self.device = encoder.device

    def __enter__(self) -> "OfflineScan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    def add(self, tokens: torch.Tensor) -> None:
        """The next chunk's SigLIP grid (T, H, W, C)."""
        self.add_projected(project_chunk(self.encoder, tokens))

    def add_projected(self, x: torch.Tensor) -> None:
        """The next chunk, already projected: (T, h, w, d_model)."""
        t, h, w, d = x.shape
        self.store.put((0, len(self.shapes)), x.reshape(1, t * h * w, d))
        self.shapes.append((t, h, w))

    def add_file(self, path: str | Path) -> None:
        """The next chunk from a file save_projected wrote (read when the scan needs it, never deleted)."""
        (t, h, w, _), _ = read_projected_header(path)
        self.store.adopt((0, len(self.shapes)), path)
        self.shapes.append((t, h, w))

    def outputs(self) -> Iterator[torch.Tensor]:
        """Runs every layer over the whole source, then yields each chunk's output (T, h, w, d_model)."""
        adapter = self.encoder.down is not None
        with torch.inference_mode():
            if adapter:  # keep each chunk's input for the residual; the layers read it through Down
                for chunk, (_, h, w) in enumerate(self.shapes):
                    x = self.store.pop((0, chunk)).to(self.device)
                    self.store.put((-1, chunk), x)
                    self.store.put((0, chunk), self.encoder.adapter_in(x, h * w))
                    self.on_step()
            for index, layer in enumerate(self.encoder.layers):
                self._layer(index, layer)
        top = len(self.encoder.layers)
        for chunk, (t, h, w) in enumerate(self.shapes):
            with torch.inference_mode():
                residual = self.store.pop((-1, chunk)).to(self.device) if adapter else None
                out = self.encoder.adapter_out(residual, self.store.pop((top, chunk)).to(self.device))
                out = out.reshape(t, h, w, -1)
            yield out

    def _layer(self, index: int, layer) -> None:
        """Layer `index`: its input for every chunk -> layer index+1's input for every chunk."""
        scan = SCAN_IMPLS[self.encoder.scan_impl]
        n_chunks = len(self.shapes)
        # 1. forward over all chunks, state carried; keep each chunk's forward half
        state = layer.fwd.zero_state(1, self.device)
        for chunk in range(n_chunks):
            _, rows, cols = self.shapes[chunk]
            mixed = layer.mixer_input(self.store.get((index, chunk)).to(self.device), rows * cols)  # (1, L_c, D)
            out_fwd, state = layer.fwd(mixed, state, scan)
            self.store.put((index + 1, chunk), out_fwd)
            self.on_step()
        # 2. backward over all chunks in reverse, state carried; combine as the layer does
        state = layer.bwd.zero_state(1, self.device)
        for chunk in reversed(range(n_chunks)):
            x = self.store.pop((index, chunk)).to(self.device)
            _, rows, cols = self.shapes[chunk]
            out_bwd, state = layer.bwd(layer.mixer_input(x, rows * cols).flip(1), state, scan)
            out_fwd = self.store.get((index + 1, chunk)).to(self.device)
            self.store.put((index + 1, chunk), layer.combine(x, out_fwd, out_bwd.flip(1)))
            self.on_step()
