"""tracevault for LangChain and LangGraph: record every run into the audit ledger.

    from tracevault_langchain import TracevaultCallbackHandler

    agent.invoke(inputs, config={"callbacks": [TracevaultCallbackHandler()]})

Or, with no code change, set ``TRACEVAULT_ENABLED=true``: :func:`enable` is then called
when ``langchain_core`` is imported and one process-wide handler records every run.
"""

from __future__ import annotations

from tracevault_langchain.autoenable import enable, installed_handler
from tracevault_langchain.handler import TracevaultCallbackHandler

__version__ = "0.1.0"

__all__ = ["TracevaultCallbackHandler", "__version__", "enable", "installed_handler"]
