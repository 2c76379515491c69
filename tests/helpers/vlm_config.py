"""Config overrides the VLM-base tests share (tests/conftest.py builds the tiny VLMs: `tiny_vlms`)."""


def vlm_overrides(folder, *extra) -> list[str]:
    """configs/test.yaml settings on a VLM base (fp32 end to end, so tensors compare exactly)."""
    return [f"encoder.model={folder}", f"summarizer.model={folder}", "summarizer.system_prompt=''",
            "encoder.output_dtype=fp32", "encoder.device=cpu", "encoder.dtype=fp32", "summarizer.device=cpu",
            "summarizer.dtype=fp32", "summarizer.max_new_tokens=6", "decode.chunk_frames=8", "temporal.n_layers=2",
            "temporal.d_state=8", "temporal.expand=1", "summary.window_seconds=16", *extra]
