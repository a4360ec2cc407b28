"""Retriever callbacks: ``retrieval`` start and end with the query and documents."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tracevault_langchain import convert
from tracevault_langchain.base import HandlerBase, ms_since, recording_failed

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
            name = kwargs.get("name") or (serialized or {}).get("name") or "retriever"
            st = self._rec.open("retrieval", name, run_id, parent_run_id, metadata, tags)
            if st is None:
                return
            st.query = query
            self._rec.emit(st, "retrieval", "start", {"query": query})
            if st.is_root:
                self._input(st, query, convert.user_metadata(metadata))
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
            st = self._rec.close(run_id)
            if st is None:
                return
            docs = convert.documents_view(documents)
            self._rec.emit(st, "retrieval", "end", {"query": st.query, "documents": docs,
                                                     "duration_ms": ms_since(st.started),
                                                     "status": "success"})
            if st.is_root:
                self._output(st, docs)
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
