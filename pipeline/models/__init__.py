"""STORM model parts: SigLIP encoder, Mamba temporal encoder, token reduction, projector, LLM."""
