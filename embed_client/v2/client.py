"""`client.v2`: the Embed API v2's sync embedding (`POST /embed-v2`) over the shared `Transport`, with
the async tasks as `client.v2.tasks` (the SDK's `client.embed.v_2` and `client.embed.v_2.tasks`)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

from embed_client.transport import Timeout, Transport
from embed_client.types_v2 import EmbeddingsV2Result
from embed_client.v2.bodies import build_create_body
from embed_client.v2.tasks import TasksClient

__all__ = ["V2Client"]


class V2Client:
    """`client.v2`: `create` (one input, embeddings returned at once) and `tasks` (async tasks)."""

    # The exact JSON bytes of a `POST /embed-v2`, for `send` (built once, resent as is on a retry).
    build_create = staticmethod(build_create_body)

    def __init__(self, transport: Transport):
        self._transport = transport
        # v2 async embedding tasks: create, retrieve, list.
        self.tasks = TasksClient(transport)

    def __repr__(self) -> str:
        return f"V2Client({self._transport!r})"

    def send(self, body: bytes, timeout: Optional[Timeout] = None,
             headers: Optional[Mapping[str, str]] = None) -> EmbeddingsV2Result:
        """Posts a body built by `build_create` (the same bytes may be sent again on a retry)."""
        return self._transport.call_json("POST", "embed-v2", body, EmbeddingsV2Result.from_json, timeout=timeout,
                                         headers=headers)

    def create(
        self,
        input_type: str,
        model_name: str,
        *,
        text: Any = None,
        image: Any = None,
        text_image: Any = None,
        audio: Any = None,
        video: Any = None,
        multi_input: Any = None,
        auto_truncate: Optional[bool] = None,
        embedding_uncertainty: Optional[bool] = None,
        embedding_dimension: Optional[int] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> EmbeddingsV2Result:
        """`POST /embed-v2`: embeddings of one input, returned at once.

        Inputs are dicts in the wire shape (or the SDK's request models); None means not sent.
        `request_options` takes the SDK's `timeout_in_seconds`, `additional_headers` and
        `additional_body_parameters` (retries are the caller's policy). Raises an
        `errors.EmbedError` subclass on every failure.
        """
        options = dict(request_options or {})
        body = self.build_create(
            input_type, model_name, text=text, image=image, text_image=text_image, audio=audio, video=video,
            multi_input=multi_input, auto_truncate=auto_truncate, embedding_uncertainty=embedding_uncertainty,
            embedding_dimension=embedding_dimension,
            additional_body_parameters=options.get("additional_body_parameters"))
        return self.send(body, timeout=options.get("timeout_in_seconds"), headers=options.get("additional_headers"))
