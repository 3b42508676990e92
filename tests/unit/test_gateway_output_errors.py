"""A miner's error document is answered as OpenAI would: the request's fault → 400 naming `param`."""

from __future__ import annotations

import pytest

from node.content.documents import OutputDocument, OutputError
from node.gateway.errors import InvalidRequest, UpstreamError
from node.gateway.records import Submission, VerifiedResult
from node.gateway.responses import output_error


def _result(code: str, message: str) -> VerifiedResult:
    sub = Submission(
        chain_id=31337, hub="0x" + "11" * 20, request_id=9, infer_tx="0x01", assignees=(),
        input_cid="bafkrei", input_digest=b"\0" * 32, model="m",
    )  # fmt: skip
    doc = OutputDocument.for_error(
        request_id=9, input_cid="bafkrei", model="m", system_fingerprint="fp", created=0,
        error=OutputError(code=code, message=message), object="chat.completion",
    )  # fmt: skip
    return VerifiedResult(sub, doc, b"", "bafkrei", None, None, None)


@pytest.mark.parametrize(
    ("code", "message", "param"),
    [
        (
            "unsupported_parameter",
            "reasoning_effort: this model is not a reasoning model",
            "reasoning_effort",
        ),
        ("invalid_request", "params.response_format: cannot be enforced", "response_format"),
        ("invalid_request", "messages[2].content: too long", "messages[2].content"),
        ("context_length_exceeded", "the prompt and max_tokens do not fit the model's context", None),
        ("input_too_large", "the input document is over the limit", None),
    ],
)
def test_request_faults_are_400_with_param(code: str, message: str, param: str | None) -> None:
    err = output_error(_result(code, message))
    assert isinstance(err, InvalidRequest) and err.status == 400
    assert err.code == code and err.param == param


def test_engine_faults_stay_502() -> None:
    err = output_error(_result("input_unprocessable", "the engine could not process this input"))
    assert isinstance(err, UpstreamError) and not isinstance(err, InvalidRequest)
