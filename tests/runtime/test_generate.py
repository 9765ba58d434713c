"""The local generator on the real embedded model: a sample stopped early when told."""

from tokenskip.runtime.generate import LocalGenerator, Prompt


def test_stop_when_ends_a_sample_early_and_keeps_its_text():
    generator = LocalGenerator("smollm2", batch_size=2)
    prompt = Prompt(({"role": "user", "content": "Write a short poem about the sea."},))
    seen: list[str] = []

    def stop_when(text: str) -> bool:
        seen.append(text)
        return len(text) >= 64

    try:
        [plain] = generator.generate([prompt], 96)
        [cut] = generator.generate([prompt], 96, stop_when=stop_when)
    finally:
        generator.close()
    assert len(plain.text) > 128 and seen  # long enough to be cut, and the check ran
    assert not cut.finished and cut.output_tokens < plain.output_tokens
    assert plain.text.startswith(cut.text) and len(cut.text) >= 64
