"""Auto-enable with no code change: ``TRACEVAULT_ENABLED=true``.

Installing ``tracevault`` puts ``tracevault-autoenable.pth`` in site-packages. When the
variable is true at interpreter start, a post-import hook waits for a supported
framework to be imported and calls its integration's ``enable()`` (declared by the
integration as an entry point in group ``tracevault.autoenable`` named after the
framework module, e.g. ``langchain_core = "tracevault_langchain.autoenable:enable"``).
The machinery lives in the stdlib-only module ``_tracevault_autoenable`` because it runs
in every interpreter of the environment; this module is its documented face.
"""

from __future__ import annotations

from _tracevault_autoenable import GROUP, errors, install, requested

__all__ = ["GROUP", "errors", "install", "requested"]
