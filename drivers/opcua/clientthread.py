"""A thread with its own event loop, where the asyncua client lives.

asyncua decodes every publish response (1,000 data changes ten times a second
in the benchmark) in pure Python. On the daemon's loop that work delays every
printer's serial stream; here it delays only this thread. The daemon's loop
hands work over with `run()` and gets results back as futures; data changes
come back in batches (see `tagmap.Coalescer`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cellctl.errors import CellError, LinkError

T = TypeVar("T")


def _as_link_error(exc: BaseException) -> CellError:
    return LinkError(f"{type(exc).__name__}: {exc}")


class ClientThread:
    """Owns one thread and its event loop, from `start()` until `stop()` returns."""

    def __init__(
        self, name: str, translate: Callable[[BaseException], CellError] = _as_link_error
    ) -> None:
        self.name = name
        # Work is expected to raise cellctl errors only; anything else that gets
        # this far is translated here, so no foreign exception reaches the caller.
        self._translate = translate
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        # False from the moment stop() is asked: the loop may still be alive for a
        # moment, but work handed to it now might never run.
        self._accepting = False
        # Work handed over and not finished: failed at thread exit, so that no
        # caller waits for a loop that is gone.
        self._pending: set[concurrent.futures.Future[Any]] = set()

    @property
    def alive(self) -> bool:
        return self._accepting and self._thread is not None and self._thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

    async def start(self, within: float = 5.0) -> None:
        if self.alive:
            return
        self._ready.clear()
        self._accepting = True
        self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self._thread.start()
        # The new loop is up in microseconds; waiting on a thread event is bounded
        # and short, and polling keeps the caller's loop responsive meanwhile.
        async with asyncio.timeout(within):
            while not self._ready.is_set():
                await asyncio.sleep(0.001)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        finally:
            self._accepting = False
            for fut in list(self._pending):
                fut.cancel()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        # asyncio.run() then cancels whatever the client left running and closes the loop.

    async def run(self, work: Callable[[], Awaitable[T]], within: float | None = None) -> T:
        """Run `work()` on the client loop and await its result here.

        The bound `within` is applied on the client side, so the work itself is cancelled
        when it runs out; cancelling the caller cancels the work too."""
        loop = self._loop
        if loop is None or not self.alive or loop.is_closed():
            raise LinkError(f"{self.name}: client thread not running")

        async def bounded() -> T:
            if within is None:
                return await work()
            async with asyncio.timeout(within):
                return await work()

        try:
            cfut = asyncio.run_coroutine_threadsafe(bounded(), loop)
        except RuntimeError:  # the loop closed between the check and now
            raise LinkError(f"{self.name}: client thread not running") from None
        self._pending.add(cfut)
        cfut.add_done_callback(self._pending.discard)
        if not self.alive:  # stopped meanwhile: _main may have swept _pending already
            cfut.cancel()
        # A backstop on this side too, in case the client loop stalls outright.
        backstop = None if within is None else within + 5.0
        try:
            async with asyncio.timeout(backstop):
                return await asyncio.wrap_future(cfut)
        except CellError:
            raise
        except TimeoutError:
            raise LinkError(f"{self.name}: no answer within {within} s") from None
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The client loop cancelled the work (the thread is stopping), not our caller.
            raise LinkError(f"{self.name}: client thread stopped") from None
        except concurrent.futures.CancelledError:
            raise LinkError(f"{self.name}: client thread stopped") from None
        except Exception as exc:
            raise self._translate(exc) from None

    async def stop(self, within: float = 5.0) -> None:
        """Stop the loop and join the thread; bounded, never raises."""
        thread = self._thread
        if thread is None:
            return
        self._accepting = False
        stop, loop = self._stop, self._loop
        if stop is not None and loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        # Join without blocking the caller's loop: poll the thread, bounded.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while thread.is_alive():
                    await asyncio.sleep(0.005)
        thread.join(timeout=0.1)
        if not thread.is_alive():
            self._thread = None
            self._loop = None
            self._stop = None
