"""`retry_once`: rerun a timing-sensitive test once when it fails (noisy shared machines). The assertion is not
loosened: the second attempt must pass the same check."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


def retry_once(test: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return test(*args, **kwargs)
        except AssertionError as exc:
            log.warning("%s failed once (%s); retrying", test.__name__, str(exc).splitlines()[0] if str(exc) else "")
            return test(*args, **kwargs)

    return wrapper
