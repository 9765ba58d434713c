"""The local runtime: serves HF models in-process (engine = requests + step loop, runner = model)."""
