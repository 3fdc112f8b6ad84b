"""The request body the real Gemini API accepts, for the fake to be as strict as it is.

Contract: :func:`check_request(body, model)` returns None for a body the real
``streamGenerateContent`` would take, or the ``(message)`` of the 400 INVALID_ARGUMENT it
would answer with instead.

The API parses the body as protobuf JSON: a field it does not know is an error,
worded ``Invalid JSON payload received. Unknown name "x" at 'generation_config': Cannot
find field.`` (the path in the proto's snake_case; at the top level there is no ``at``
part). Either spelling of a name (camelCase or snake_case) is accepted, as the proto JSON
parser does. Sources: GEMINI-WIRE.md section 4 and section 10 (python-genai ``types.py``).

Strategy: a table of the known fields per message; ``ANY`` marks a field whose insides
the fake does not check (a free-form JSON object such as function arguments).
"""

from __future__ import annotations

import re
from typing import Any

ANY: dict[str, Any] = {"*": None}

PART: dict[str, Any] = {
    "text": None,
    "thought": None,
    "thoughtSignature": None,
    "inlineData": {"mimeType": None, "data": None},
    "fileData": {"mimeType": None, "fileUri": None},
    "functionCall": {"id": None, "name": None, "args": ANY},
    "functionResponse": {"id": None, "name": None, "response": ANY},
    "executableCode": {"language": None, "code": None},
    "codeExecutionResult": {"outcome": None, "output": None},
    "videoMetadata": ANY,
}
CONTENT: dict[str, Any] = {"role": None, "parts": [PART]}
THINKING: dict[str, Any] = {"includeThoughts": None, "thinkingBudget": None, "thinkingLevel": None}
GENERATION: dict[str, Any] = {
    "stopSequences": None, "responseMimeType": None, "responseSchema": ANY,
    "responseJsonSchema": ANY, "responseModalities": None, "candidateCount": None,
    "maxOutputTokens": None, "temperature": None, "topP": None, "topK": None, "seed": None,
    "presencePenalty": None, "frequencyPenalty": None, "responseLogprobs": None,
    "logprobs": None, "enableEnhancedCivicAnswers": None, "speechConfig": ANY,
    "thinkingConfig": THINKING, "mediaResolution": None, "imageConfig": ANY,
}
TOOL: dict[str, Any] = {
    "functionDeclarations": ANY, "googleSearchRetrieval": ANY, "codeExecution": ANY,
    "googleSearch": {"timeRangeFilter": ANY}, "urlContext": ANY, "computerUse": ANY,
}
REQUEST: dict[str, Any] = {
    "model": None,
    "contents": [CONTENT],
    "systemInstruction": CONTENT,
    "generationConfig": GENERATION,
    "safetySettings": [{"category": None, "threshold": None}],
    "tools": [TOOL],
    "toolConfig": {"functionCallingConfig": ANY, "retrievalConfig": ANY},
    "cachedContent": None,
}


def snake(name: str) -> str:
    """``thinkingConfig`` -> ``thinking_config``."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def camel(name: str) -> str:
    """``thinking_config`` -> ``thinkingConfig``."""
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def _unknown(value: Any, schema: Any, path: str) -> str | None:
    """The first unknown field name in ``value`` with the path it is at, as the message."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return None
        for i, item in enumerate(value):
            found = _unknown(item, schema[0], f"{path}[{i}]")
            if found:
                return found
        return None
    if not isinstance(schema, dict) or "*" in schema or not isinstance(value, dict):
        return None
    for key, sub in value.items():
        name = camel(key)
        if name not in schema:
            where = f" at '{path}'" if path else ""
            return f'Invalid JSON payload received. Unknown name "{key}"{where}: Cannot find field.'
        found = _unknown(sub, schema[name], f"{path}.{snake(name)}" if path else snake(name))
        if found:
            return found
    return None


def _get(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict):
        return None
    return obj.get(name, obj.get(snake(name)))


def check_request(body: Any, model: str) -> str | None:
    """None for a body the API takes; else the message of its 400 INVALID_ARGUMENT."""
    found = _unknown(body, REQUEST, "")
    if found:
        return found
    thinking = _get(_get(body, "generationConfig"), "thinkingConfig")
    level = _get(thinking, "thinkingLevel")
    budget = _get(thinking, "thinkingBudget")
    if level is not None and budget is not None:
        # [inferred wording] both set is refused (GEMINI-WIRE.md section 4).
        return "You can only set one of thinking budget and thinking level."
    if level is not None and not model.startswith("gemini-3"):
        # [inferred wording] 2.5 models take a budget, not a level.
        return "Thinking level is not supported for this model."
    if level is not None and str(level).lower() not in ("minimal", "low", "medium", "high"):
        return (
            f"Invalid value at 'generation_config.thinking_config.thinking_level' "
            f'(type.googleapis.com/google.ai.generativelanguage.v1beta.ThinkingConfig.'
            f'ThinkingLevel), "{level}"'
        )
    return None


def thinking_config(body: Any) -> dict[str, Any]:
    """The request's ``thinkingConfig`` in camelCase names (empty when not sent)."""
    thinking = _get(_get(body, "generationConfig"), "thinkingConfig")
    if not isinstance(thinking, dict):
        return {}
    return {camel(k): v for k, v in thinking.items()}


def max_output_tokens(body: Any, default: int = 65536) -> int:
    """The request's ``maxOutputTokens`` (the model's own limit when not sent)."""
    value = _get(_get(body, "generationConfig"), "maxOutputTokens")
    return value if isinstance(value, int) and value > 0 else default
