"""Temporal owners: each stream's chunks in order through the Mamba temporal encoder and pooling."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

from pipeline.errors import VidstormError
from pipeline.messages import ChunkInfo, EndMarker, Pooled, Tokens, parse
from pipeline.queue import retrying

from actors.runtime.stage import Stage


class TemporalStage(Stage):
    """Owns streams: applies each stream's chunks in chunk_seq order (reorder buffer),
    runs the temporal encoder and pooling, checkpoints the state with every chunk.
    In offline mode it keeps each chunk on disk and scans the whole file at its end."""

    role = "temporal"

    def __init__(self, cfg, redis_url, name, index: int, data_dir: str | None = None):
        super().__init__(cfg, redis_url, name)
        import tempfile

        from pipeline.build import build_processor

        self.index = index
        self.processor = build_processor(cfg, log=None, parts=("temporal",))
        self.buffers: dict[str, dict[int, tuple]] = {}  # stream -> chunk_seq -> (msg, ChunkInfo, grids, mask)
        self.ends: dict[str, tuple] = {}  # stream -> (msg, EndMarker)
        self.states: dict = {}
        self.offline = cfg.temporal.mode == "offline"
        default_spill = Path(data_dir) / "spill" if data_dir else Path(tempfile.gettempdir()) / "vidstorm-spill"
        self.spill_dir = Path(cfg.temporal.offline_spill_dir or default_spill)
        self._beat = 0.0

    def _streams(self) -> list[str]:
        return sorted(m.decode() for m in self.r.smembers(self.keys.owner(self.index)))

    def _state(self, stream_id: str):
        from pipeline.processor import StreamState

        if stream_id not in self.states:
            blob = self.r.get(self.keys.state(stream_id))
            self.states[stream_id] = StreamState.from_bytes(blob) if blob else StreamState(stream_id)
        return self.states[stream_id]

    def tick(self) -> None:
        streams = self._streams()
        if not streams:
            time.sleep(0.2)
            return
        for msg in self.q.consume([self.keys.tokens(s) for s in streams], count=4, block_ms=200):
            try:
                m = parse(msg.data, Tokens, EndMarker)
            except ValueError as err:
                if self._applied_already(msg):  # a garbled copy of a chunk applied before: nothing to redo
                    self.q.ack(msg)
                    continue
                print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                continue
            stream_id = m.stream_id if isinstance(m, EndMarker) else m.info.stream_id
            if isinstance(m, Tokens) and m.info.thumbnail_error:  # garbage in one field: the chunk still counts
                print(f"{self.name}: {stream_id!r} chunk {m.info.chunk_seq}: dropping its thumbnail: "
                      f"{m.info.thumbnail_error}", flush=True)
            state = self._state(stream_id)
            if isinstance(m, EndMarker):
                self.ends[stream_id] = (msg, m)
            elif m.info.chunk_seq < state.next_chunk_seq:
                self.q.ack(msg)  # already applied before a restart: a duplicate
            else:
                try:
                    grids = m.grids()
                except ValueError as err:
                    print(f"{self.name}: skipping malformed message {msg.id!r} on {msg.stream}: {err}", flush=True)
                    continue
                self.buffers.setdefault(stream_id, {})[m.info.chunk_seq] = (msg, m.info, grids, m.encode_mask)
        for stream_id in list(self.buffers) + list(self.ends):
            self._drain(stream_id)

    def _applied_already(self, msg) -> bool:
        """A tokens message that does not parse but whose header names a chunk of this stream already
        applied (a redelivered duplicate) is acked as any duplicate is, not left to the dead-letter queue."""
        from pipeline.types import unpack

        try:
            meta, _ = unpack(msg.data)
            stream_id, seq = meta["stream_id"], meta["chunk_seq"]
            if meta.get("type") != Tokens.TYPE or not isinstance(seq, int) or msg.stream != self.keys.tokens(stream_id):
                return False
        except (ValueError, KeyError, TypeError):
            return False
        return seq < self._state(stream_id).next_chunk_seq

    def _drain(self, stream_id: str) -> None:
        state = self._state(stream_id)
        buffer = self.buffers.get(stream_id, {})
        while state.next_chunk_seq in buffer:
            msg, info, tokens, mask = buffer[state.next_chunk_seq]
            from pipeline.processor import encoded_count

            info = replace(info, frames_encoded=encoded_count(mask, info.n_valid))
            if self.offline:  # on disk before the ack: the whole-file scan at the end reads it
                from pipeline.models.offline import save_projected
                from pipeline.reuse import advance

                steps, last_grid = advance(tokens, mask, state.last_grid)
                save_projected(self._offline_input(stream_id, info.chunk_seq), steps, info.header())
                outputs, temporal_state = [], None
            else:
                pooled, temporal_state, last_grid = self.processor.temporal_projected(tokens, mask, state)
                outputs = [(self.keys.pooled, Pooled.of(info, pooled).to_bytes())]
            # The state moves on only once the handoff has committed: if it raises, the chunk is
            # still pending in Redis and in the buffer, and is applied again from the old state.
            advanced = replace(state, temporal=temporal_state, last_grid=last_grid,
                               next_chunk_seq=info.chunk_seq + 1)
            blob = advanced.to_bytes()
            if outputs:
                self.wait_for_room(self.keys.pooled)
            self.handoff(msg, outputs, extra=lambda pipe, k=self.keys.state(stream_id), b=blob: pipe.set(k, b))
            buffer.pop(info.chunk_seq)
            self.states[stream_id] = state = advanced
        end = self.ends.get(stream_id)
        if end and end[1].last_chunk_seq < state.next_chunk_seq:
            marker = self._offline_outputs(stream_id, end) if self.offline else end[0].data
            msg, _ = self.ends.pop(stream_id)

            def over(pipe):  # the stream is over for this owner: stop listening to it, in the same transaction
                pipe.srem(self.keys.owner(self.index), stream_id)
                pipe.delete(self.keys.offline(stream_id))

            self.handoff(msg, [(self.keys.pooled, marker)], extra=over)
            self.buffers.pop(stream_id, None)
            self.states.pop(stream_id, None)
            if self.offline:
                shutil.rmtree(self._offline_input(stream_id, 0).parent, ignore_errors=True)

    # --- offline mode ---

    def _offline_input(self, stream_id: str, chunk_seq: int) -> Path:
        """Where a chunk's projected tokens wait for the end of its file (one folder per stream and prefix)."""
        import hashlib

        from pipeline.names import check_name

        prefix = hashlib.sha256(self.keys.p.encode()).hexdigest()[:8]
        folder = self.spill_dir / f"{check_name(stream_id, 'stream id')}.{prefix}.inputs"
        return folder / f"chunk-{chunk_seq:08d}.safetensors"

    def _offline_outputs(self, stream_id: str, end: tuple) -> bytes:
        """The whole file's scan; each chunk's pooled tokens handed on in order, each in one transaction
        with the count handed on (a new owner hands on only the rest). Returns the end marker to pass on."""
        from pipeline.models.offline import read_projected_header

        msg, marker = end
        key = self.keys.offline(stream_id)
        emitted = int(retrying(lambda: self.r.get(key)) or 0)
        paths = [self._offline_input(stream_id, seq) for seq in range(marker.last_chunk_seq + 1)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            error = (f"{marker.job.get('source', stream_id)}: the offline scan's buffered chunks are gone "
                     f"({missing[0]} is missing; the temporal owner moved to a machine without them): "
                     "ingest the file again, with temporal.offline_spill_dir on storage every worker shares")
            return marker.failed(emitted - 1, error).to_bytes()
        t = self.cfg.temporal
        handed = emitted
        try:
            with self.processor.offline_scan(t.offline_spill_mb, self.spill_dir, on_step=self._heartbeat) as scan:
                for path in paths:
                    scan.add_file(path)
                for seq, pooled in enumerate(self.processor.offline_pooled(scan)):
                    if seq < emitted:
                        continue  # handed on before a restart
                    info = ChunkInfo.from_header(read_projected_header(paths[seq])[1])
                    self.wait_for_room(self.keys.pooled)
                    self.handoff([], [(self.keys.pooled, Pooled.of(info, pooled).to_bytes())],
                                 extra=lambda pipe, n=seq + 1: pipe.set(key, n))
                    handed = seq + 1
        except VidstormError as err:  # e.g. a spill folder that cannot be written: the stream fails, in one line
            return marker.failed(handed - 1, str(err)).to_bytes()
        return msg.data

    def _heartbeat(self) -> None:
        """A long whole-file scan hands nothing on: show the supervisor it is alive (not stalled)."""
        now = time.monotonic()
        if now - self._beat > 1.0:
            self._beat = now
            retrying(lambda: self.r.hincrby(self.keys.progress, f"{self.name}:offline-scan", 1))
