"""`TaskGroup`: asyncio's, with its cancel-request bookkeeping corrected on Python 3.11/3.12.

On 3.11 and 3.12, when a child fails while the body of the group has already
finished (the parent task waits in `__aexit__`), the group cancels its parent
to wake it, swallows that cancellation, and never takes the request back:
`current_task().cancelling()` stays one higher for the rest of the task's
life (CPython gh-116720, fixed in 3.13 only). Every later "was I cancelled?"
check in that task (`task.cancelling()`, as the Modbus link and the OPC UA
client thread ask) then answers yes, and a `serve()` shaped like
`async with TaskGroup() as tg: tg.create_task(...)` leaks one request per lost
link. It also swallows an outside cancellation that races a child's failure;
3.13 delivers it again, and so does this class. Use it wherever a TaskGroup
is needed: on 3.13 and later it is asyncio's own.
"""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType

__all__ = ["TaskGroup"]

if sys.version_info >= (3, 13):
    TaskGroup = asyncio.TaskGroup
else:

    class TaskGroup(asyncio.TaskGroup):
        async def __aexit__(
            self,
            et: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            # 3.11/3.12 take back their own cancel request only if it was made
            # before __aexit__ started; one made while it waits is the leak.
            requested_before: bool = self._parent_cancel_requested  # type: ignore[attr-defined]
            try:
                await super().__aexit__(et, exc, tb)
            except BaseException as raised:
                self._settle(requested_before, raised)
                raise
            self._settle(requested_before, None)

        def _settle(self, requested_before: bool, raised: BaseException | None) -> None:
            parent: asyncio.Task[object] = self._parent_task  # type: ignore[attr-defined]
            if self._parent_cancel_requested and not requested_before:  # type: ignore[attr-defined]
                parent.uncancel()
            if raised is not None and not isinstance(raised, asyncio.CancelledError):
                if parent.cancelling():
                    # Someone else cancelled the parent meanwhile and the group
                    # swallowed that CancelledError to raise its errors: deliver
                    # it again at the next await, keeping the count, as 3.13 does.
                    parent.uncancel()
                    parent.cancel()
