"""The span handler: runs, agent turns, tool calls, ReAct thoughts and failures.

LlamaIndex 0.14 agents fire no instrumentation event for tool calls or agent steps, so
those come from spans: the workflow run span (``FunctionAgent.run-…``), its step spans
(whose input event names the current agent and the model's tool call id), tool
``call``/``acall`` spans (arguments in ``bound_args``, a ``ToolOutput`` on exit, a
dropped span on failure) and ``ReActOutputParser.parse`` (the parsed thought). Every
other span is transparent: events under it hang under its nearest recorded ancestor.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

from tracevault import capture
from tracevault.context import SpanRef, current_span, swap_span
from tracevault.ids import new_span_id
from tracevault.schema import level_for
from tracevault_llamaindex import llm, payloads, roles
from tracevault_llamaindex.state import (
    CHAT,
    LLM,
    OTHER,
    PARSER,
    RUN,
    STEP,
    TOOL,
    WRAPPER,
    Recorder,
    RunState,
    Span,
    elapsed_ms,
    interruption,
    is_root,
)

_TOOL_RECOVERY = "the error was returned to the agent as the tool's result and the run continued"
# What ReActOutputParser puts as the thought of a reply with no "Thought:" in it.
_IMPLICIT_THOUGHT = "(Implicit)"
_clock = time.perf_counter
_PASSIVE_ROLES = frozenset({OTHER, STEP, WRAPPER})  # roles whose exit records nothing itself


def _adapted(span: Span, tool_name: str) -> bool:
    """Whether ``span`` is the same tool call again, one adapter down (``__call__`` ->
    ``call``, an async adapter): its nearest ancestor that is not transparent is that
    tool. The same tool called again further down (by an agent it runs) is a call of
    its own."""
    parent = span.parent
    while parent is not None and parent.role == OTHER:
        parent = parent.parent
    return parent is not None and parent.role == TOOL and parent.tool_name == tool_name


class TracevaultSpanHandler(BaseSpanHandler[SimpleSpan]):
    """Records agent runs, turns and tool calls from LlamaIndex spans (never raises)."""

    _rec: Recorder  # a plain instance attribute: pydantic's private-attribute lookup is slow

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        object.__setattr__(self, "_rec", recorder)

    @classmethod
    def class_name(cls) -> str:
        return "TracevaultSpanHandler"

    # The abstract hooks of BaseSpanHandler are unused: we override the entry points to
    # avoid its span objects and lock, and keep our own (bounded) state in the Recorder.
    def new_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> SimpleSpan | None:
        return None

    # --- entry points ----------------------------------------------------------------------

    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Called for every instrumented LlamaIndex method (several per recorded event):
        # the common case, a span inside a known parent that we do not record, is kept
        # to a few dictionary lookups and one small object.
        try:
            rec = self._rec
            spans = rec.spans
            parent = None
            if parent_id is not None:
                parent = spans.get(parent_id)
                if parent is None:
                    parent = rec.closed(parent_id)
            name = id_[:-37] if len(id_) > 37 else id_  # "<Class>.<method>-<uuid4>"
            if instance is not None:
                by_method = roles.ROLES.get(type(instance))
                role = by_method.get(name.rpartition(".")[2]) if by_method is not None else None
                if role is None:
                    role = roles.classify(instance, name.rpartition(".")[2])
            elif parent is not None and parent.role == RUN:
                role = STEP
            else:
                role = OTHER
            if parent is not None:
                if tags is None:
                    session, user = rec.identity(None, parent)
                else:  # Recorder.identity, inline: instrument_tags, then the parent's
                    session = user = None
                    if tags:  # LlamaIndex's own tags (its run id) are usually the only ones
                        session = tags.get("session_id") or tags.get("tracevault.session_id")
                        user = tags.get("user_id") or tags.get("tracevault.user_id")
                    if session is None:
                        session = parent.session_id
                    if user is None:
                        user = parent.user_id
                    session = str(session) if session is not None else rec.session_id
                    user = str(user) if user is not None else rec.user_id
                anchor = parent.anchor
                span = Span(id_, name, role, parent.trace_id, anchor, anchor, session, user,
                            _clock(), parent, 0, parent.llm_owner, parent.tool_name,
                            parent.tool_id, parent.output_flag, parent.run)
            else:
                span = self._root(id_, name, role, tags)
            spans[id_] = span
            if role == OTHER:
                return
            if role == LLM:
                span.instance_key = id(instance)
            elif role == STEP:
                self._step_start(span, name.rpartition(".")[2], bound_args)
            elif role == TOOL:
                self._tool_start(span, instance, bound_args)
            elif role == RUN:
                self._run_start(span, instance, bound_args)
            elif role == CHAT:
                self._chat_start(span, instance, name, bound_args)
        except Exception as exc:
            self._rec.failed("span_enter", exc)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            rec = self._rec
            span = rec.spans.get(id_)
            if span is None:
                return
            if span.step is None and not span.pending:
                # Nothing to record, nothing to settle, no stream to follow: just forget
                # the span (what _exit does for such a span, without its checks). An
                # LLM span's call was finished by its end event, unless it streams.
                role = span.role
                if role == LLM:
                    quiet = type(result) not in roles.STREAM_TYPES and id_ not in rec.llm
                else:
                    quiet = (role in _PASSIVE_ROLES and not span.recorded
                             and roles.stream_of(result) is None)
                if quiet:
                    rec.close_span(span)
                    return
            self._exit(span, result)
        except Exception as exc:
            self._rec.failed("span_exit", exc)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            span = self._rec.spans.get(id_)
            if span is not None:
                self._drop(span, err)
        except Exception as exc:
            self._rec.failed("span_drop", exc)

    def abandon_open(self, reason: str) -> None:
        """End every call and step still open as abandoned, innermost first: once the
        handlers are detached (:func:`~tracevault_llamaindex.uninstrument`) nothing else
        will end them."""
        rec = self._rec
        for call in list(rec.llm.values()):
            llm.finish(rec, call, call.last, status="abandoned", reason=reason)
        for span in reversed(list(rec.spans.values())):
            try:
                self._abandon(span, reason)
            except Exception as exc:
                rec.failed("abandon_open", exc)
            finally:
                rec.close_span(span)
        rec.dups.clear()
        rec.lazy.clear()

    def _abandon(self, span: Span, reason: str) -> None:
        rec = self._rec
        for entry in span.pending or ():  # failures below it: nobody will handle them now
            rec.emit_error(entry)
        span.pending = None
        if span.ambient is not None:
            # A tool's end will not reach us now: if this is its context (the tool
            # itself uninstruments), make the span before it current again here.
            ref = current_span()
            if ref is not None and ref.span_id == span.id:
                swap_span(span.ambient[0])
            span.ambient = None
        data = {"status": "abandoned", "reason": reason,
                "duration_ms": elapsed_ms(span.started)}
        role = span.role
        if role == TOOL and span.recorded:
            end = {"tool_name": span.name, "is_error": False, **data}
            if span.tool_id is not None:
                end["tool_call_id"] = span.tool_id
            rec.emit("tool_call", span, phase="end", level="warning", name=span.name,
                     data=end, span_id=span.id, parent=span.parent_anchor)
        elif role == RUN and span.run is not None:
            if span.run.turn_id is not None:
                self._switch_turn(span, span.run, None, "abandoned")
            if span.recorded:
                rec.emit("agent", span, phase="end", level="warning", name=span.name,
                         data=data, span_id=span.id, parent=span.parent_anchor)
        elif span.step is not None:
            kind, name = span.step
            span.step = None
            rec.emit(kind, span, phase="end", level="warning", name=name, data=data,
                     span_id=span.id, parent=span.parent_anchor)
        elif role == STEP and span.recorded:
            rec.emit("chain", span, phase="end", level="warning", name=span.name, data=data,
                     span_id=span.id, parent=span.parent_anchor)

    # --- enter -------------------------------------------------------------------------------

    def _root(self, id_: str, name: str, role: int, tags: dict[str, Any] | None) -> Span:
        """Return the span for a LlamaIndex root: adopted by a stream being read or by a
        current tracevault span, else the root of a trace of its own."""
        rec = self._rec
        adopted = rec.adopt()
        flag = owner = None
        if adopted is None:
            trace_id, anchor = id_, None
        else:
            trace_id, anchor, flag, owner = adopted
        # A stream's lazily started call keeps the session and user of the run that
        # returned the stream, not of the code that happens to read it.
        session, user = rec.identity(tags, owner)
        span = Span(id_, name, role, trace_id, anchor, anchor, session, user, _clock(), None)
        span.output_flag = flag
        return span

    def _run_start(self, span: Span, instance: Any, bound_args: inspect.BoundArguments) -> None:
        agent_cls, workflow_cls, _ = roles.agent_classes()
        agent = isinstance(instance, agent_cls)
        name = (getattr(instance, "name", None) if agent else None) or type(instance).__name__
        multi = isinstance(instance, workflow_cls)
        span.run = RunState(str(name), multi, agent or multi, roles.runs_code_act(instance))
        span.name = span.run.name
        start_event = bound_args.arguments.get("start_event")
        inputs = (payloads.event_fields(start_event, skip=roles.NOT_INPUTS)
                  if start_event is not None else {})
        user_msg = inputs.pop("user_msg", None)
        if self._rec.emit("agent", span, phase="start", name=span.name,
                          data={"inputs": inputs}, span_id=span.id, parent=span.parent_anchor):
            span.anchor = span.id
            span.recorded = True
        # The user's message, else (a run given only its conversation) the last one in
        # the chat history: as copied into the inputs, attachments included.
        if user_msg is None:
            user_msg = payloads.last_user_message(inputs.get("chat_history"))
        if user_msg is not None:
            self._rec.emit("input", span, name="user_message",
                           data=payloads.user_input(user_msg), parent=span.anchor)

    def _chat_start(self, span: Span, instance: Any, name: str,
                    bound_args: inspect.BoundArguments) -> None:
        """A chat engine's turn is a ``chain`` step named ``chat`` (as a query engine's
        query is one named ``query``); at a trace's root, the user's message is its
        ``input`` and its answer the ``output``."""
        rec = self._rec
        message = payloads.text_of(bound_args.arguments.get("message"))
        data = {"inputs": {"message": message, "engine": type(instance).__name__}}
        if rec.emit("chain", span, phase="start", level="debug", name="chat", data=data,
                    span_id=span.id, parent=span.parent_anchor):
            span.step = ("chain", "chat")
            span.anchor = span.id
            span.recorded = True
        if is_root(span):
            rec.emit("input", span, name="user_message",
                     data={"type": "user_message", "content": message}, parent=span.anchor)
            if name.endswith("stream_chat"):
                # The engine starts reading its answer's stream (in a thread or task that
                # inherits this span) before the turn returns: its streaming model call
                # must know now that its text is the answer.
                span.output_flag = [True, span.anchor]

    def _chat_end(self, span: Span, result: Any) -> None:
        """End a chat turn; at a trace's root, its answer is the ``output`` (a streamed
        answer's when the model call streaming it ends)."""
        rec = self._rec
        gen = roles.chat_stream_of(result)
        text = payloads.text_of(getattr(result, "response", None)) if gen is None else None
        if span.step is not None:
            name = span.step[1]
            span.step = None
            span.recorded = False
            outputs = {"response": text} if gen is None else {"streamed": True}
            rec.emit("chain", span, phase="end", level="debug", name=name,
                     data={"outputs": outputs, "status": "success",
                           "duration_ms": elapsed_ms(span.started)},
                     span_id=span.id, parent=span.parent_anchor)
        if not is_root(span):
            return
        if gen is not None:
            flag = span.output_flag
            if not (flag and flag[0]):
                rec.stream_answer(span, gen)
        else:
            rec.emit("output", span, name="final_answer",
                     data={"type": "final_answer", "content": text}, parent=span.anchor)

    def _step_start(self, span: Span, method: str, bound_args: inspect.BoundArguments) -> None:
        span.name = method
        run = span.run
        run_span = span.parent
        if run_span is not None and run_span.pending:
            # The step's retry policy runs it again for the same event after a failure
            # (its error is pending in the run): recovered, not a failure of the run.
            retried = roles.retried_failure()
            if retried is not None:
                self._rec.recover(run_span, retried[0], f"retried by the retry policy of "
                                  f"step {method} (attempt {retried[1]})")
        shapes = roles.SHAPES
        for value in bound_args.arguments.values():
            shape = shapes.get(type(value))
            if shape is None:
                shape = roles.event_shape(type(value))
            if shape:
                # Read declared fields only: a missing attribute on a workflow event is
                # an expensive lookup in its dynamic data.
                if shape & roles.HAS_TOOL_ID and isinstance(value.tool_id, str):
                    span.tool_id = value.tool_id
                if (shape & roles.HAS_AGENT and run is not None and run.multi
                        and span.parent is not None):
                    agent = value.current_agent_name
                    if isinstance(agent, str) and agent != run.turn_agent:
                        self._switch_turn(span.parent, run, agent)
                break
        if run is not None and run.turn_id is not None:
            span.anchor = span.parent_anchor = run.turn_id
        if capture.is_enabled_for("trace") and self._rec.emit(
                "chain", span, phase="start", level="trace", name=method, data={},
                span_id=span.id, parent=span.parent_anchor):
            span.anchor = span.id
            span.recorded = True

    def _switch_turn(self, run_span: Span, run: RunState, agent: str | None,
                     status: str = "success") -> None:
        rec = self._rec
        if run.turn_id is not None:
            rec.emit("agent", run_span, phase="end", level=level_for(status),
                     name=run.turn_agent,
                     data={"status": status, "duration_ms": elapsed_ms(run.turn_started)},
                     span_id=run.turn_id, parent=run_span.anchor)
        run.turn_id = run.turn_agent = None
        if agent is None:
            return
        # The turn's agent is tracked even when its start is filtered out (to notice
        # the next hand-off); its id, which steps hang under, only when recorded.
        run.turn_agent = agent
        run.turn_started = time.perf_counter()
        turn_id = new_span_id()
        if rec.emit("agent", run_span, phase="start", name=agent,
                    data={"inputs": {"agent": agent, "workflow": run.name}},
                    span_id=turn_id, parent=run_span.anchor):
            run.turn_id = turn_id

    def _tool_start(self, span: Span, instance: Any, bound_args: inspect.BoundArguments) -> None:
        metadata = instance.metadata
        tool_name = getattr(metadata, "name", None) or type(instance).__name__
        if _adapted(span, tool_name):  # __call__ -> call, or an async adapter
            span.role = OTHER
            return
        span.tool_name = tool_name
        span.name = tool_name
        data: dict[str, Any] = {
            "tool_name": tool_name,
            "parameters": roles.tool_parameters(instance, bound_args),
            "status": "pending",
        }
        if span.tool_id is not None:
            data["tool_call_id"] = span.tool_id
        kept = True  # a strict intent queued but not confirmed durable still gets its end
        try:
            kept = self._rec.emit("tool_call", span, phase="start", name=tool_name, data=data,
                                  span_id=span.id, parent=span.parent_anchor,
                                  durable=capture.settings().strict)
        finally:
            if kept:
                span.anchor = span.id
                span.recorded = True
                # The tool body runs next, in this context: make the call the current
                # span so what code inside records (another framework's run, AuditLogger
                # events) hangs under it. Its end makes the previous one current again.
                span.ambient = (swap_span(SpanRef(span.trace_id, span.id)),)

    # --- exit ----------------------------------------------------------------------------------

    def _exit(self, span: Span, result: Any) -> None:
        try:
            self._exit_body(span, result)
        finally:  # a failure above must not leave the span's state behind
            self._rec.close_span(span)

    def _exit_body(self, span: Span, result: Any) -> None:
        rec = self._rec
        role = span.role
        if span.pending:  # errors below that this span handled, recorded before its end
            # An agent's step hands a tool's error to the agent as the tool's result.
            to_agent = role == STEP and span.run is not None and span.run.agent
            rec.settle(span, f"handled in {span.name}; the run continued",
                       _TOOL_RECOVERY if to_agent else None)
        if role == TOOL:
            self._tool_end(span, result, None)
        elif role == LLM:
            if type(result) in roles.STREAM_TYPES:
                llm.streaming(rec, span, result)
            else:
                call = rec.llm.get(span.id)
                if call is not None:  # no end event came: finish from the result
                    llm.finish(rec, call, result)
        elif role == PARSER:
            self._thought(span, result)
        elif role == RUN:
            self._run_end(span, result, None)
        elif role == CHAT:
            self._chat_end(span, result)
        elif role == STEP and span.recorded:
            rec.emit("chain", span, phase="end", level="trace", name=span.name,
                     data={"status": span.stopped or "success",
                           "duration_ms": elapsed_ms(span.started)},
                     span_id=span.id, parent=span.parent_anchor)
        if span.step is not None:  # an event-derived step whose end event never came
            kind, name = span.step
            span.step = None
            rec.emit(kind, span, phase="end", level="debug", name=name,
                     data={"status": "success", "duration_ms": elapsed_ms(span.started)},
                     span_id=span.id, parent=span.parent_anchor)
        if role != LLM:
            gen = roles.stream_of(result)
            if gen is not None:
                rec.watch_stream(gen, span)

    def _tool_end(self, span: Span, result: Any, err: BaseException | None,
                  interrupted: str | None = None) -> None:
        """Record the tool call's outcome (if its intent was recorded) and a slow-tool
        warning (in any case: under a level that hides tool calls it still shows)."""
        rec = self._rec
        duration = elapsed_ms(span.started)
        if span.ambient is not None:
            swap_span(span.ambient[0])
            span.ambient = None
        if span.recorded:
            if interrupted is not None:  # cancelled, or waiting for an event: no failure
                status, is_error, content = interrupted, False, f"{type(err).__name__}: {err}"
            elif err is not None:
                status, is_error, content = "error", True, f"{type(err).__name__}: {err}"
            elif type(result).__name__ == "ToolOutput":
                is_error = bool(getattr(result, "is_error", False))
                status = "error" if is_error else "success"
                content = payloads.tool_output_content(result)
            else:
                status, is_error, content = "success", False, payloads.plain(result)
            data: dict[str, Any] = {"tool_name": span.name, "result": content,
                                    "status": status, "is_error": is_error,
                                    "duration_ms": duration}
            if span.tool_id is not None:
                data["tool_call_id"] = span.tool_id
            rec.emit("tool_call", span, phase="end", level=level_for(status),
                     name=span.name, data=data, span_id=span.id, parent=span.parent_anchor)
        warning = capture.slow_tool_warning(span.name, duration)
        if warning is not None:
            rec.emit("custom", span, level="warning", name=capture.SLOW_TOOL, data=warning,
                     span_id=span.id if span.recorded else None, parent=span.parent_anchor)

    def _thought(self, span: Span, step: Any) -> None:
        thought = getattr(step, "thought", None)
        if not thought:
            return
        answer = getattr(step, "response", None)
        data: dict[str, Any]
        if (thought.startswith(_IMPLICIT_THOUGHT) and isinstance(answer, str)
                and "Thought:" not in answer):
            # The model wrote no "Thought:" (its whole text is the answer): the parser
            # made this one up. Kept, marked as the parser's words, not the model's.
            data = {"thought": thought, "source": "react_parser", "implicit": True}
        else:
            data = {"thought": thought, "source": "react"}
        action = getattr(step, "action", None)
        if action:
            data["plan"] = [str(action)]
            data["action"] = action
            data["action_input"] = payloads.plain(getattr(step, "action_input", None))
        if answer is not None:
            data["answer"] = answer
        # The step's fields as they are (the action input is copied): copy on queueing.
        self._rec.emit("reasoning", span, name="thought", data=data, parent=span.anchor,
                       owned=False)

    def _run_end(self, span: Span, result: Any, err: BaseException | None) -> None:
        rec = self._rec
        run = span.run
        # Cancelled: the run's task (handler.cancel()), or the workflow's own way
        # (handler.cancel_run(), whether a step was running or none was), after which
        # LlamaIndex ends the run span with no result: a finished run returns its
        # StopEvent, even one whose result is None.
        cancelled = (interruption(err) == "cancelled" if err is not None
                     else result is None and run is not None)
        status = "cancelled" if cancelled else "success" if err is None else "error"
        if run is not None and run.turn_id is not None:
            self._switch_turn(span, run, None, status)
        if status == "success":
            value = getattr(result, "result", result)
            data: dict[str, Any] = {"type": "final_answer", "content": payloads.text_of(value)}
            structured = getattr(value, "structured_response", None)
            if structured is not None:
                data["structured"] = payloads.plain(structured)
            agent = getattr(value, "current_agent_name", None)
            if isinstance(agent, str):
                data["agent"] = agent
            rec.emit("output", span, name="final_answer", data=data, parent=span.anchor)
        if span.recorded:
            rec.emit("agent", span, phase="end", level=level_for(status), name=span.name,
                     data={"status": status, "duration_ms": elapsed_ms(span.started)},
                     span_id=span.id, parent=span.parent_anchor)

    # --- drop ------------------------------------------------------------------------------------

    def _drop(self, span: Span, err: BaseException | None) -> None:
        try:
            self._drop_body(span, err)
        finally:  # a failure above must not leave the span's state behind
            self._rec.close_span(span)

    def _drop_body(self, span: Span, err: BaseException | None) -> None:
        rec = self._rec
        below, span.pending = span.pending or [], None
        own: list[dict[str, Any]] = []  # its own error, hanging under its parent
        nested = span.role == LLM and rec.dups.pop(span.id, None) is not None
        interrupted = interruption(err) if err is not None else None
        if err is not None and not nested and interrupted is None:
            # One error per failure (a nested LLM call's is its outer call's); a
            # cancellation or a wait for an event is none.
            entry = rec.new_error(span, err, span.name, span.id if span.recorded else None)
            if entry is not None:
                own.append(entry)
        role = span.role
        if role == TOOL:
            self._tool_end(span, None, err or RuntimeError("tool span dropped"), interrupted)
            if interrupted is not None:  # the step that called it stops with it
                step = span.parent
                while step is not None and step.role != STEP:
                    step = step.parent
                if step is not None:
                    step.stopped = interrupted
            failed = below + own
            for entry in failed:
                entry["failed_tool"] = True
            rec.hand_up(span, failed)
        elif role == LLM:
            call = rec.llm.get(span.id)
            if call is not None:
                llm.finish(rec, call, None, status="error")
            rec.hand_up(span, below + own)
        elif role == RUN:
            self._fail_step(span, below, own, span.recorded or (
                span.run is not None and span.run.turn_id is not None))
            self._run_end(span, None, err)
        else:
            # Only a workflow step: a query, chat turn or other event-derived step (say
            # in a QueryEngineTool) passes its errors up to the agent that handles them.
            self._fail_step(span, below, own, role == STEP and span.recorded)
            if span.step is not None:
                kind, name = span.step
                rec.emit(kind, span, phase="end", level="error", name=name,
                         data={"status": "error", "duration_ms": elapsed_ms(span.started)},
                         span_id=span.id, parent=span.parent_anchor)
            elif span.recorded:
                rec.emit("chain", span, phase="end", level="error", name=span.name,
                         data={"status": "error", "duration_ms": elapsed_ms(span.started)},
                         span_id=span.id, parent=span.parent_anchor)

    def _fail_step(self, span: Span, below: list[dict[str, Any]],
                   own: list[dict[str, Any]], recorded: bool) -> None:
        """Place the errors of a failed workflow run or step before its end: those from
        below hang under a recorded one (or one of its turns), so they are recorded now,
        unrecovered (the same exception is not recorded again higher up, even by a step
        that goes on to handle it); its own error hangs under its parent and goes up,
        where a step may yet handle it (or its retry policy retry it). An unrecorded
        one passes everything up."""
        rec = self._rec
        if recorded:
            for entry in below:
                rec.emit_error(entry)
            rec.hand_up(span, own)
        else:
            rec.hand_up(span, below + own)
