"""The list routes: ``GET /runs``, ``GET /workflows/{workflow_id}/runs`` and the live ``GET /runs/feed``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Query, Response
from starlette.concurrency import run_in_threadpool

from .. import RunStatus, Workflow
from ..storage import RunStore
from . import _responses as answers
from ._feeds import Feed
from ._responses import JSONAnswer, error
from ._runs import MAX_PAGE, Filters, bad_cursor, list_page, page_json
from ._sse import FeedResponse
from ._status_feed import status_changes

__all__ = ["DEFAULT_PAGE", "Listing"]

#: Runs per page when the request names no ``limit``.
DEFAULT_PAGE = 50

_Status = Annotated[RunStatus | None, Query(description="only runs in this state")]
_Workflow = Annotated[str | None, Query(description="only runs of this workflow (an id or a name)")]
_Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="at most this many runs")]
_Cursor = Annotated[str | None, Query(description="the next_cursor of the previous page")]
_PAGE_DOC = {
    200: {
        "description": 'A page of runs, newest first: {"runs": [RunInfo], "next_cursor": str | null}',
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}
_FEED_DOC = {
    200: {
        "description": "SSE: 'run' (a RunInfo) when a selected run appears or changes, 'gone' ({run_id})",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class Listing:
    """The list routes over ``stores()`` (every store the app answers from) and the served ``workflows``."""

    def __init__(self, workflows: dict[str, Workflow], stores: Callable[[], Sequence[RunStore]]) -> None:
        self.workflows = workflows
        self.stores = stores

    def add_routes(self, app: FastAPI) -> None:
        options: dict[str, Any] = {"methods": ["GET"], "response_class": JSONAnswer}
        app.add_api_route("/runs", self.list_runs, responses=answers.route_docs(422, ok=_PAGE_DOC), **options)
        feed_docs = answers.route_docs(422, ok=_FEED_DOC)
        app.add_api_route("/runs/feed", self.feed, responses=feed_docs, **options)
        by_workflow = answers.route_docs(404, 422, ok=_PAGE_DOC)
        app.add_api_route("/workflows/{workflow_id}/runs", self.list_workflow_runs, responses=by_workflow, **options)

    async def list_runs(
        self, status: _Status = None, workflow: _Workflow = None, limit: _Limit = DEFAULT_PAGE, cursor: _Cursor = None
    ) -> Response:
        """A page of the runs the server knows, newest first; ``next_cursor`` asks for the next page."""
        return await self._page(Filters(status, workflow), limit, cursor)

    async def list_workflow_runs(
        self, workflow_id: str, status: _Status = None, limit: _Limit = DEFAULT_PAGE, cursor: _Cursor = None
    ) -> Response:
        """A page of one served workflow's runs, newest first; 404 for a workflow not served here."""
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return error(404, f"no workflow {workflow_id!r} is served here")
        return await self._page(Filters(status, workflow.id), limit, cursor)

    async def feed(self, status: _Status = None, workflow: _Workflow = None, limit: _Limit = DEFAULT_PAGE) -> Response:
        """SSE: the selected runs, then each change of their records, until the client leaves."""
        feed = Feed()
        return FeedResponse(status_changes(self.stores(), Filters(status, workflow), limit, feed), feed, headers={})

    async def _page(self, filters: Filters, limit: int, cursor: str | None) -> Response:
        if bad_cursor(cursor):
            raise answers.invalid(["query", "cursor"], "value_error", "not a cursor this server gave out")
        page = await run_in_threadpool(list_page, self.stores(), filters, limit, cursor)
        return JSONAnswer(page_json(page))
