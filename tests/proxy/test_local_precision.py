"""A local model served in bfloat16 with int8 weights answers as the float32 one does on a
fixed prompt (greedy), through the gateway."""

import openai
import pytest

from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

COUNT_TO_TEN = "Count from 1 to 10, separated by commas."


@pytest.fixture(scope="module")
def client(tmp_path_factory, smol):
    config = {"model_list": [
        {"model_name": "lowbit", "local": {"model": "smollm2", "dtype": "bfloat16", "weights": "int8"}},
    ]}  # fmt: skip
    ledger = tmp_path_factory.mktemp("ledger") / "ledger.sqlite"
    settings = Settings(ledger_url=f"sqlite:///{ledger}")
    with serve(create_app(settings, parse_config(config, settings))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)


def test_bfloat16_with_int8_weights_answers_as_float32_does(client, smol):
    ids = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": COUNT_TO_TEN}], add_generation_prompt=True,
        return_tensors="pt", return_dict=False,
    )  # fmt: skip
    out = smol.model.generate(ids, max_new_tokens=16, do_sample=False)
    reference = smol.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    r = client.chat.completions.create(
        model="lowbit", max_tokens=16, messages=[{"role": "user", "content": COUNT_TO_TEN}]
    )
    answer = r.choices[0].message.content
    assert answer[:20] == reference[:20], (answer, reference)  # "1, 2, 3, 4, 5, 6, 7,"
