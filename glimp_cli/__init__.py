"""glimp: a small and a large GGUF model sharing one chain of thought (GlimpRouter)."""

__version__ = "0.1.0"
