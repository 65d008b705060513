"""cellctl.tasks.TaskGroup leaves a task's cancel requests as it found them, on every Python.

On 3.11/3.12 asyncio's own TaskGroup leaks one request each time a child fails
while the body waits in `__aexit__` (CPython gh-116720); these cases pin the
3.13 behaviour, which cellctl's TaskGroup gives on all three.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from cellctl.tasks import TaskGroup


async def fail_after(seconds: float, exc: type[BaseException] = ValueError) -> None:
    await asyncio.sleep(seconds)
    raise exc("child failed")


class Bug(BaseException):
    pass


async def child_fails_while_body_waits_in_aexit() -> None:
    async with TaskGroup() as tg:
        tg.create_task(fail_after(0.01))


async def one_child_fails_another_still_runs() -> None:
    async with TaskGroup() as tg:
        tg.create_task(fail_after(0.01))
        tg.create_task(asyncio.sleep(10))


async def child_fails_while_body_runs() -> None:
    async with TaskGroup() as tg:
        tg.create_task(fail_after(0.01))
        await asyncio.sleep(10)


async def child_raises_a_base_exception() -> None:
    async with TaskGroup() as tg:
        tg.create_task(fail_after(0.01, Bug))


async def inner_group_fails_inside_outer() -> None:
    async with TaskGroup() as outer:
        outer.create_task(asyncio.sleep(0.05))
        with pytest.raises(ExceptionGroup):
            async with TaskGroup() as inner:
                inner.create_task(fail_after(0.01))


CASES: list[tuple[Callable[[], Awaitable[None]], type[BaseException] | None]] = [
    (child_fails_while_body_waits_in_aexit, ExceptionGroup),
    (one_child_fails_another_still_runs, ExceptionGroup),
    (child_fails_while_body_runs, ExceptionGroup),
    (child_raises_a_base_exception, BaseExceptionGroup),
    (inner_group_fails_inside_outer, None),
]


@pytest.mark.parametrize(("case", "raises"), CASES, ids=[c.__name__ for c, _ in CASES])
async def test_no_cancel_request_is_left_behind(
    case: Callable[[], Awaitable[None]], raises: type[BaseException] | None
) -> None:
    task = asyncio.current_task()
    assert task is not None
    for _ in range(3):  # it used to grow by one each time
        if raises is None:
            await case()
        else:
            with pytest.raises(raises):
                await case()
        # What the Modbus link and the OPC UA client thread ask to tell their
        # caller's cancellation from their own: a leak made them answer yes.
        assert task.cancelling() == 0
    await asyncio.sleep(0)  # and no CancelledError is pending


async def run_in_task(
    body: Callable[[], Awaitable[None]], cancel_after: float
) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(body())
    await asyncio.sleep(cancel_after)
    task.cancel()
    await asyncio.wait((task,))
    return task


async def test_an_outside_cancellation_still_cancels() -> None:
    async def body() -> None:
        async with TaskGroup() as tg:
            tg.create_task(asyncio.sleep(10))

    task = await run_in_task(body, 0.01)
    assert task.cancelled()


async def test_an_outside_cancellation_racing_a_failure_is_not_lost() -> None:
    seen: list[str] = []

    async def body() -> None:
        try:
            async with TaskGroup() as tg:
                tg.create_task(fail_after(0.01))
                tg.create_task(asyncio.sleep(10))
        except* ValueError:
            seen.append("errors")
        await asyncio.sleep(10)  # the outside cancellation lands here at the latest

    task = await run_in_task(body, 0.01)
    assert seen == ["errors"]
    assert task.cancelled()
