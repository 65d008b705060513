"""Requests the local CLI queued in the store, applied by the running daemon.

Each request goes through the same JobService API as an MQTT command; its
result (done, or the error) is written back for the CLI to show.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from cellctl.errors import CellError
from cellctl.jobs import repo
from cellctl.jobs.api import InvalidRequest, Repeat
from cellctl.jobs.spec import JobSpec
from cellctl.store import Store, transaction

if TYPE_CHECKING:
    from cellctl.jobs.service import JobService

log = structlog.get_logger("cellctl.jobs")


async def apply_requests(service: JobService, store: Store) -> int:
    """Apply every pending request in order; returns how many there were."""
    pending = await store.call(repo.pending_requests)
    for request_id, kind, payload in pending:
        error: str | None = None
        result: str | None = None
        try:
            result = await apply_one(service, kind, payload)
        except (CellError, KeyError, TypeError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            log.warning("request failed", request=request_id, kind=kind, error=error)

        def finish(
            conn: Any, rid: int = request_id, err: str | None = error, res: str | None = result
        ) -> None:
            with transaction(conn):
                repo.finish_request(conn, rid, err, res)

        await store.call(finish)
    return len(pending)


async def apply_one(service: JobService, kind: str, p: dict[str, Any]) -> str | None:
    """Apply one request; returns the id of the job it made (submit, reprint)."""
    if kind == "cancel":
        await service.cancel(p["job"], p.get("reason") or "cancelled by operator (cli)")
    elif kind == "answer":
        await service.answer_hold(
            p["job"],
            int(p["index"]),
            p["action"],
            line=p.get("line"),
            attempt=p.get("attempt"),
            who=p.get("who", "operator (cli)"),
        )
    elif kind == "setup":
        await service.set_setup(p["device"], p["setup"], merge=bool(p.get("merge")))
    elif kind == "clear_bed":
        await service.confirm_bed_clear(p["device"], who=p.get("who", "operator (cli)"))
    elif kind == "service":
        await service.set_in_service(p["device"], bool(p["in_service"]), p.get("note", ""))
    elif kind == "submit":
        spec = JobSpec.model_validate(p["spec"])
        files = {name: service.programs.path(sha) for name, sha in p.get("files", {}).items()}
        job = await service.submit(
            spec, files, source=p.get("source", "cli"), repeat=Repeat(p.get("repeat", "same"))
        )
        return job.id
    elif kind == "reprint":
        return (await service.reprint(p["job"], source=p.get("source", "cli"))).id
    else:
        raise InvalidRequest(f"unknown request kind {kind!r}")
    return None
