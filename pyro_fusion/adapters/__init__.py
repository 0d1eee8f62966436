"""Adapters: read a model family's trained guides as :class:`~pyro_fusion.Components` and write fused ones back."""
