"""An error that ends a run reaches the user and run.json with its type and message, also from the decode thread."""

import json
from pathlib import Path

import pytest

from paravideo.errors import describe_error
from paravideo.generate import generate


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("error, shown", [(RuntimeError(), "RuntimeError (raised without a message)"),
                                          (ValueError("bad latent frame"), "ValueError: bad latent frame")])
def test_decode_failure_names_its_cause(make_config, monkeypatch, background, error, shown):
    from paravideo.io.vae_stream import StreamingDecoder

    def broken(self, latents):
        raise error

    monkeypatch.setattr(StreamingDecoder, "decode", broken)
    config = make_config(output={"background_decode": background})
    with pytest.raises(BaseException) as info:
        generate(config)
    assert shown in describe_error(info.value)
    data = json.loads((Path(config.output.dir) / "run.json").read_text())
    assert data["complete"] is False and shown in data["error"]
