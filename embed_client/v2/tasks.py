"""`client.tasks` (also `client.v2.tasks`): the async embedding tasks of v2 (`/embed-v2/tasks`: create,
retrieve, list), over the shared `Transport`."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from embed_client.transport import Timeout, Transport
from embed_client.types_v2 import EmbeddingTask, MediaEmbeddingTask, TaskCreated, parse_task_list
from embed_client.v2.bodies import build_extra_query, build_list_query, build_task_create_body, build_task_path

__all__ = ["TaskPage", "TasksClient"]


def _options(request_options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    return dict(request_options or {})


class TaskPage:
    """One page of `GET /embed-v2/tasks`; iterating it walks this page and the following ones.

    Paging follows the SDK's SyncPager: after each page it asks for `page + 1`, and stops at the
    first page whose `data` is empty (so an empty first page still costs a second request).
    """

    def __init__(self, items: List[MediaEmbeddingTask], page_info: Dict[str, Any], page: int,
                 rate_limit: Any, get_next: Callable[[], "TaskPage"]):
        self.items = items
        self.page_info = page_info
        self.page = page
        self.rate_limit = rate_limit
        self._get_next = get_next

    def __repr__(self) -> str:
        return f"TaskPage(page={self.page}, items={len(self.items)}, page_info={self.page_info!r})"

    def next_page(self) -> "TaskPage":
        return self._get_next()

    def iter_pages(self) -> Iterator["TaskPage"]:
        page = self
        while True:
            yield page
            page = page.next_page()
            if not page.items:
                return

    def __iter__(self) -> Iterator[MediaEmbeddingTask]:
        for page in self.iter_pages():
            yield from page.items


class TasksClient:
    """`client.tasks`: the async embedding tasks of v2 (create, retrieve, list)."""

    # The exact JSON bytes of a `POST /embed-v2/tasks`, for `send_create` (built once, resent as is on a retry).
    build_create = staticmethod(build_task_create_body)

    def __init__(self, transport: Transport):
        self._transport = transport

    def __repr__(self) -> str:
        return f"TasksClient({self._transport!r})"

    def send_create(self, body: bytes, timeout: Optional[Timeout] = None,
                    headers: Optional[Mapping[str, str]] = None) -> TaskCreated:
        """Posts a body built by `build_create`; the service answers 202 with the task id."""
        return self._transport.call_json("POST", "embed-v2/tasks", body, TaskCreated.from_json, timeout=timeout,
                                         headers=headers)

    def create(
        self,
        input_type: str,
        model_name: str,
        *,
        audio: Any = None,
        video: Any = None,
        image: Any = None,
        document: Any = None,
        embedding_uncertainty: Optional[bool] = None,
        embedding_dimension: Optional[int] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> TaskCreated:
        """`POST /embed-v2/tasks` (202): starts a task; poll it with `retrieve`."""
        options = _options(request_options)
        body = self.build_create(
            input_type, model_name, audio=audio, video=video, image=image, document=document,
            embedding_uncertainty=embedding_uncertainty, embedding_dimension=embedding_dimension,
            additional_body_parameters=options.get("additional_body_parameters"))
        return self.send_create(body, timeout=options.get("timeout_in_seconds"),
                                headers=options.get("additional_headers"))

    def retrieve(self, task_id: str, request_options: Optional[Mapping[str, Any]] = None) -> EmbeddingTask:
        """`GET /embed-v2/tasks/{task_id}`: the status, and the vectors once `ready`.

        A `failed` task is returned (with `error_message`), not raised; an unknown id raises
        `errors.NotFoundError`."""
        path = build_task_path(task_id)
        options = _options(request_options)
        return self._transport.call_json(
            "GET", path, None, EmbeddingTask.from_json, timeout=options.get("timeout_in_seconds"),
            headers=options.get("additional_headers"),
            query=build_extra_query(options.get("additional_query_parameters")))

    def list_page(
        self,
        started_at: Optional[str] = None,
        ended_at: Optional[str] = None,
        status: Optional[str] = None,
        page: Optional[int] = None,
        page_limit: Optional[int] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> Tuple[List[MediaEmbeddingTask], Dict[str, Any]]:
        """One page of `GET /embed-v2/tasks` as (tasks, page_info)."""
        found = self._page(started_at, ended_at, status, page, page_limit, request_options)
        return found.items, found.page_info

    def list(
        self,
        started_at: Optional[str] = None,
        ended_at: Optional[str] = None,
        status: Optional[str] = None,
        page: Optional[int] = None,
        page_limit: Optional[int] = None,
        request_options: Optional[Mapping[str, Any]] = None,
    ) -> TaskPage:
        """The tasks from `page` (default 1) on, fetched a page at a time as the iteration goes.

        The first page is fetched now (so errors show here); see `TaskPage` for the paging."""
        return self._page(started_at, ended_at, status, page, page_limit, request_options)

    def _page(self, started_at, ended_at, status, page, page_limit, request_options) -> TaskPage:
        options = _options(request_options)
        number = 1 if page is None else page
        query = build_list_query(started_at, ended_at, status, number, page_limit,
                                 options.get("additional_query_parameters"))
        result = self._transport.call_json("GET", "embed-v2/tasks", None, _ListBody.from_json, query=query,
                                           timeout=options.get("timeout_in_seconds"),
                                           headers=options.get("additional_headers"))
        return TaskPage(result.items, result.page_info, number, result.rate_limit,
                        lambda: self._page(started_at, ended_at, status, number + 1, page_limit, request_options))


class _ListBody:
    __slots__ = ("items", "page_info", "rate_limit")

    def __init__(self, items: List[MediaEmbeddingTask], page_info: Dict[str, Any]):
        self.items, self.page_info, self.rate_limit = items, page_info, None

    @classmethod
    def from_json(cls, obj: Any) -> "_ListBody":
        return cls(*parse_task_list(obj))
