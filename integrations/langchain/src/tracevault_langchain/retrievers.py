"""Retriever callbacks: ``retrieval`` start and end with the query and documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tracevault.capture import later
from tracevault.snapshot import freeze, thaw
from tracevault_langchain import convert
from tracevault_langchain.base import (
    HandlerBase,
    input_copy,
    ms_since,
    recording_failed,
    tags_and_metadata,
)

if TYPE_CHECKING:
    from langchain_core.documents import Document


class RetrieverCallbacks(HandlerBase):
    """Records retriever runs."""

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._rec.runs.lineage.start(run_id, parent_run_id)
            tags, metadata = tags_and_metadata(tags, metadata)
            later(self._retriever_start,
                  kwargs.get("name") or (serialized or {}).get("name") or "retriever", query,
                  run_id, parent_run_id, metadata, tags)
        except Exception as exc:
            recording_failed("on_retriever_start", exc)

    def _retriever_start(self, name: str, query: str, run_id: UUID,
                         parent_run_id: UUID | None, metadata: dict[str, Any] | None,
                         tags: list[str] | None) -> None:
        try:
            st = self._rec.open("retrieval", name, run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.query = query
            self._rec.emit(st, "retrieval", "start", {"query": query})
            if st.is_root:
                self._input(st, input_copy(query), convert.user_metadata(metadata))
        except Exception as exc:
            recording_failed("on_retriever_start", exc)

    def on_retriever_end(
        self,
        documents: Sequence[Document],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            self._rec.runs.lineage.end(run_id)
            later(self._retriever_end, run_id, freeze(convert.documents_view(documents)))
        except Exception as exc:
            recording_failed("on_retriever_end", exc)

    def _retriever_end(self, run_id: UUID, copied: Any) -> None:
        try:
            st = self._rec.close(run_id)
            if st is None:
                return
            docs = thaw(copied)
            self._rec.emit(st, "retrieval", "end", {"query": st.query, "documents": docs,
                                                     "duration_ms": ms_since(st.started),
                                                     "status": "success"}, owned=True)
            if st.is_root:
                self._output(st, [docs, None])
        except Exception as exc:
            recording_failed("on_retriever_end", exc)

    def on_retriever_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._close_failed("on_retriever_error", run_id, error)
