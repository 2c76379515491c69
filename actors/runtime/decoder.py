"""Decoders: sources -> FrameChunks on {p}:frames, their position kept in Redis."""

from __future__ import annotations

from pipeline.messages import EndMarker
from pipeline.queue import retrying
from pipeline.reuse import gate, reference_from_text, reference_to_text
from pipeline.types import FrameChunk

from actors.runtime.stage import Stage


class DecoderStage(Stage):
    """Reads sources into FrameChunks. Progress is kept in Redis, so a restarted decoder
    continues after the last chunk it published."""

    role = "decoders"

    def __init__(self, cfg, redis_url, name, image_size: int, pad_multiple: int):
        super().__init__(cfg, redis_url, name)
        self.image_size, self.pad_multiple = image_size, pad_multiple

    def decode(self, job: dict) -> str:
        from pipeline.decode import Source, SourceError, VideoDecoder, check_offline_source

        source = Source(job["source"], job["stream_id"], job["live"])
        key = self.keys.decoded(source.stream_id)
        progress = {k.decode(): v.decode() for k, v in retrying(lambda: self.r.hgetall(key)).items()}
        if progress.get("finished"):
            return "finished earlier"
        next_seq = int(progress.get("next_chunk_seq", 0))
        video_seconds = float(progress.get("video_seconds", 0.0))
        d = self.cfg.decode
        decoder = VideoDecoder.for_config(
            source, d, self.image_size, self.pad_multiple,
            start_at=float(progress.get("t_end", 0.0)) if next_seq and not source.live else 0.0,
            first_chunk_seq=next_seq,
        )
        status, error = "done", ""
        try:
            check_offline_source(source, self.cfg.temporal.mode)
            reference = reference_from_text(progress.get("gate_ref"))
            for chunk in decoder.chunks():
                self.wait_for_room(self.keys.frames)
                if self.stopping():  # shut down mid-stream: the position stays, no end marker
                    return "stopped"
                video_seconds += chunk.t_end - chunk.t_start
                # static-frame reuse: only the frames that changed travel on to SigLIP; the reference
                # is saved with the position, so a restarted decoder decides as this one would have
                mask, reference = gate(chunk.frames, reference, self.cfg.encoder.static_threshold)
                self._publish(chunk.gated(mask), key, video_seconds, decoder.duration, reference)
                next_seq = chunk.chunk_seq + 1
        except SourceError as err:
            status, error = "failed", str(err)
        except Exception as err:  # one bad source must not stop the others
            status, error = "failed", f"{source.uri}: internal error: {type(err).__name__}: {str(err).splitlines()[0]}"
        info = {**job, "video_seconds": video_seconds, "chunks": next_seq}
        marker = EndMarker(source.stream_id, next_seq - 1, status, error, info).to_bytes()

        def finish():
            pipe = self.r.pipeline(transaction=True)
            self.q.publish(self.keys.frames, marker, pipe)
            pipe.hset(key, "finished", "1")
            pipe.execute()

        retrying(finish)
        return status

    def _publish(self, chunk: FrameChunk, key: str, video_seconds: float, duration: float | None,
                 reference) -> None:
        payload = chunk.to_bytes()
        position = {"next_chunk_seq": chunk.chunk_seq + 1, "t_end": chunk.t_end, "video_seconds": video_seconds}
        if reference is not None:
            position["gate_ref"] = reference_to_text(reference)

        def run():
            pipe = self.r.pipeline(transaction=True)
            self.q.publish(self.keys.frames, payload, pipe)
            pipe.hset(key, mapping=position)
            pipe.hset(self.keys.ingest(chunk.stream_id),
                      mapping={"decoded_s": chunk.t_end, "duration": "" if duration is None else duration})
            pipe.execute()

        retrying(run)
