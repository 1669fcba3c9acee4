"""Request models and the pure helpers between HTTP and the routers (no Ray)."""

import pytest
from pydantic import ValidationError

from index.errors import ConfigError, InputError
from serve.protocol import ChatMessage, RouteRequest, parse_model, scoring_text


def _messages(*pairs):
    return [ChatMessage(role=role, content=content) for role, content in pairs]


def test_scoring_text_takes_recent_user_turns_oldest_first():
    messages = _messages(("system", "be brief"), ("user", "first"), ("assistant", "a1"), ("user", "second"),
                         ("assistant", None), ("user", [{"type": "text", "text": "third"}, {"type": "image_url", "image_url": {"url": "x"}}]))
    assert scoring_text(messages, user_turns=1, max_chars=100) == "third"
    assert scoring_text(messages, user_turns=2, max_chars=100) == "second\n\nthird"
    assert scoring_text(messages, user_turns=9, max_chars=100) == "first\n\nsecond\n\nthird"
    assert scoring_text(messages, user_turns=9, max_chars=5) == "third"  # the most recent text is kept


def test_no_user_text_is_an_input_error():
    with pytest.raises(InputError, match="no user message"):
        scoring_text(_messages(("system", "hi"), ("user", "   ")), user_turns=3, max_chars=100)


@pytest.mark.parametrize("model, expected", [
    ("turnout", ("mf", None)),
    ("router-sw_ranking", ("sw_ranking", None)),
    ("router-mf-0.11593", ("mf", 0.11593)),
    ("router-random-1", ("random", 1.0)),
])
def test_parse_model(model, expected):
    assert parse_model(model, "mf") == expected


@pytest.mark.parametrize("model, fragment", [
    ("gpt-4", "model must be 'turnout'"),
    ("router-mf-high", "is not a number"),
    ("router-mf-1.5", "threshold must be in [0, 1]"),
    ("router-mf-nan", "threshold must be in [0, 1]"),
])
def test_bad_model_names(model, fragment):
    with pytest.raises(ConfigError) as info:
        parse_model(model, "mf")
    assert fragment in str(info.value)


@pytest.mark.parametrize("body, fragment", [
    ({}, "exactly one of 'messages' or 'prompt'"),
    ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "exactly one"),
    ({"messages": []}, "messages must not be empty"),
    ({"prompt": "  "}, "prompt must not be empty"),
    ({"prompt": "a", "threshold": 1.2}, "threshold must be in [0, 1]"),
    ({"prompt": "a", "strong_ratio": -0.1}, "strong_ratio must be in [0, 1]"),
    ({"prompt": "a", "threshold": 0.2, "strong_ratio": 0.3}, "at most one"),
    ({"messages": [{"role": "user", "content": 7}]}, "content must be a string or a list of content parts, got int"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "'text' is not a string"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role must be one of"),
    ({"prompt": "a", "colour": "red"}, "Extra inputs are not permitted"),
])
def test_route_request_validation(body, fragment):
    with pytest.raises(ValidationError) as info:
        RouteRequest.model_validate(body)
    assert fragment in str(info.value)
