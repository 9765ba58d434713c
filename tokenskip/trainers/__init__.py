"""LoRA training pipelines (TokenSkip controllable CoT, Query-OPT, early exit)."""
