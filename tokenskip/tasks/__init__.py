"""Task code shared by evaluation and training: data sets, prompts and answer extraction."""
