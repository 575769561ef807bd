"""Text modality: causal language models with chat templates."""
