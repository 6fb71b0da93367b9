"""``syncd worker``: a scale-out worker on PostgreSQL (the queue itself: :mod:`syncd.worker`)."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

from syncd.cli.common import app, fail, state


@app.command("worker")
def worker_cmd(
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            min=1,
            max=256,
            help="Passes this worker runs at once (default: sync.workers, else sized to the "
            "machine).",
        ),
    ] = None,
    stalled_after: Annotated[
        float,
        typer.Option(
            "--stalled-after",
            min=3.0,
            max=3600.0,
            help="Seconds without a heartbeat after which a worker is taken for dead and its "
            "mailboxes go to the others (the same on every worker).",
        ),
    ] = 30.0,
) -> NoReturn:
    """A scale-out worker on PostgreSQL (see 'Scale out' in the README).

    Run one on each machine, all against one PostgreSQL; they share
    the passes of every mailbox through a job queue in that database (see 'Scale out' in
    the README). SIGTERM/SIGINT: the batches in hand finish, then it exits 0."""
    from syncd.worker import (
        QueueError,
        check_queue,
        default_concurrency,
        refuse_sqlite,
        run_worker,
    )

    settings = state.settings()
    url = settings.database_url()
    try:
        refuse_sqlite(url)
        sessions = state.sessions()  # the CRM: reachable and up to date
        check_queue(url)
    except QueueError as exc:
        fail(str(exc))
    code = run_worker(
        url,
        settings,
        sessions,
        concurrency=concurrency or default_concurrency(settings),
        stalled_after=stalled_after,
    )
    raise typer.Exit(code)
