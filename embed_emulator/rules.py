"""Model rules of POST /v1.3/embed: model names, limits, token counting and error messages.

Facts come from /work/shared/reference/API-FACTS.md; lines marked "emulator choice"
are behaviour the public docs leave open.
"""
from __future__ import annotations

import math
import re
from itertools import islice
from typing import Iterator, Optional, Tuple

MB = 1024 * 1024

MODEL_DIMS = {"marengo3.0": 512, "marengo2.7": 1024, "Marengo-retrieval-2.7": 1024}
# Aliases of one model share its rules and its vectors.
CANONICAL_MODELS = {"marengo3.0": "marengo3.0", "marengo2.7": "marengo2.7",
                    "marengo-retrieval-2.7": "marengo2.7"}
TEXT_TOKEN_LIMITS = {"marengo3.0": 500, "marengo2.7": 77}
AUDIO_MAX_BYTES = {"marengo3.0": 36 * MB, "marengo2.7": 10 * MB}
IMAGE_MAX_BYTES = 5 * MB  # emulator choice: "5 MB" read as MiB
IMAGE_MIN_SIDE = 128
MARENGO27_AUDIO_WINDOW_SEC = 10.0
DEFAULT_TEXT_TRUNCATE = "end"
TEXT_TRUNCATE_VALUES = ("none", "start", "end")

TEXT_FIELDS = ("model_name", "text", "text_truncate", "image_url", "audio_url",
               "audio_start_offset_sec")
FILE_FIELDS = ("image_file", "audio_file")
INPUT_FIELDS = ("text", "image_url", "image_file", "audio_url", "audio_file")
MODALITIES = ("text", "image", "audio")


class ApiError(Exception):
    """An error answer: HTTP status plus the API's {"code", "message"} body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        return {"code": self.code, "message": self.message}


class MediaError(Exception):
    """A problem with one modality's input; becomes that modality's error_message."""


def canonical_model(model_name: str) -> Optional[str]:
    """The model an accepted name stands for, or None. Emulator choice: case-insensitive,
    since the SDK docs spell 2.7 both `Marengo-retrieval-2.7` and `marengo-retrieval-2.7`."""
    return CANONICAL_MODELS.get((model_name or "").strip().lower())


# ---- text tokens -----------------------------------------------------------------

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
CHARS_PER_TOKEN = 4


def _token_spans(text: str) -> Iterator[Tuple[int, int]]:
    """(start, end) of each approximate token, in order."""
    for match in _TOKEN_RE.finditer(text):
        start, end = match.span()
        pieces = max(1, (end - start) // CHARS_PER_TOKEN)
        for i in range(pieces):
            yield (start + i * CHARS_PER_TOKEN,
                   end if i == pieces - 1 else start + (i + 1) * CHARS_PER_TOKEN)


def count_tokens(text: str) -> int:
    """Approximate token count of the model's tokenizer (emulator choice, not the real BPE):
    each word or punctuation mark is one token, and a word of n >= 8 characters counts
    n // 4 tokens. Cutting at a token boundary keeps the count consistent."""
    return sum(1 for _ in _token_spans(text))


def truncate_text(text: str, limit: int, mode: str = "end") -> str:
    """The text cut to `limit` tokens: mode "end" drops tokens at the end, "start" at the
    beginning; "none" returns the text unchanged (the caller rejects it if too long)."""
    if mode == "end":
        spans = list(islice(_token_spans(text), limit + 1))
        return text if len(spans) <= limit else text[:spans[limit - 1][1]]
    if mode == "start":
        spans = list(_token_spans(text))
        return text if len(spans) <= limit else text[spans[-limit][0]:]
    return text


# ---- error messages ---------------------------------------------------------------
# The two text messages are documented verbatim; the others follow their style
# (emulator choice).

def invalid_message(field: str, reason: str) -> str:
    return f"The `{field}` parameter is invalid. {reason}"


def token_limit_message(limit: int) -> str:
    return invalid_message("text", f"The text token length should be less than or equal to {limit}.")


def text_truncate_message() -> str:
    return invalid_message("text_truncate", "You should use one of the following values: "
                           + ", ".join(f"`{v}`" for v in TEXT_TRUNCATE_VALUES) + ".")


def model_name_message() -> str:
    return invalid_message("model_name", "You should use one of the following values: "
                           + ", ".join(f"`{m}`" for m in MODEL_DIMS) + ".")


def unknown_parameter_message(name: str) -> str:
    return f"The `{name}` parameter is unknown. Remove it and try again."


def not_provided_message(field: Optional[str] = None) -> str:
    if field:
        return f"The `{field}` parameter is required."
    return ("At least one of the following parameters must be provided: "
            + ", ".join(f"`{f}`" for f in INPUT_FIELDS) + ".")


def rate_limit_message(limit: str, retry_after_iso: str) -> str:
    """Documented wording; {limit} is e.g. "600 requests per minute"."""
    return f"You have exceeded the rate limit ({limit}). Please try again later after {retry_after_iso}."


def api_key_message(missing: bool) -> str:
    if missing:
        return "No API key was provided. Set the `x-api-key` header to your API key."
    return "The API key you provided is not valid. Check your API key and try again."


def bad_request(message: str, code: str = "parameter_invalid") -> ApiError:
    return ApiError(400, code, message)


def parse_offset(raw: Optional[str]) -> float:
    """audio_start_offset_sec as a float >= 0 (default 0)."""
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        raise bad_request(invalid_message(
            "audio_start_offset_sec", "It must be a number greater than or equal to 0."))
    return value
