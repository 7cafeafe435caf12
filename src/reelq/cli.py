"""The `reelq` command: serve, worker, keys, generate, and list/cancel/delete of a server's tasks."""

from __future__ import annotations

import base64
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from reelq.config import ConfigError, Settings, load_settings

app = typer.Typer(help="reelq: a self-hosted, Vidu-compatible video-generation API.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
err = Console(stderr=True)

HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Data directory (REELQ_HOME).", show_default=False)
]


def _error(message: str) -> None:
    """One plain line on stderr (no wrapping: operators grep these)."""
    typer.echo(f"reelq: {message}", err=True)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        _error(f"{exc}")
        raise typer.Exit(2) from None


def _logging(settings: Settings) -> None:
    from reelq.logs import setup_logging

    setup_logging(settings)


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from reelq.database import SchemaOutdated, TaskStore, ensure_schema, make_engine

    settings.home_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        ensure_schema(engine)
    except SchemaOutdated as exc:
        _error(f"{exc}")
        raise typer.Exit(2) from None
    except Exception as exc:
        _error(f"cannot open the database: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    return TaskStore(engine)


@db_app.command("upgrade")
def db_upgrade(home: HomeOpt = None) -> None:
    """Migrate the database (REELQ_DATABASE_URL, else the embedded SQLite file) to this reelq's schema.

    Run it once per deployment before starting upgraded API and worker processes on PostgreSQL (they
    refuse an outdated schema); the embedded SQLite file migrates itself at start-up."""
    from reelq.database import make_engine, migrate
    from reelq.database.db import schema_revision

    settings = _settings(home=home)
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        before, head = schema_revision(engine)
        migrate(engine)
    except Exception as exc:
        _error(f"cannot migrate the database: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    typer.echo(f"schema at {head}" + (" (already)" if before == head else f" (was {before or 'empty'})"))


@db_app.command("current")
def db_current(home: HomeOpt = None) -> None:
    """Print the database's schema revision and this reelq's newest; exit 1 when they differ."""
    from reelq.database import make_engine
    from reelq.database.db import schema_revision

    engine = make_engine(_settings(home=home).sqlalchemy_url)
    try:
        current, head = schema_revision(engine)
    except Exception as exc:
        _error(f"cannot open the database: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    finally:
        engine.dispose()
    typer.echo(f"database {current or 'empty'}, reelq {head}")
    if current != head:
        raise typer.Exit(1)


def _uvicorn_server_class():  # type: ignore[no-untyped-def]
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, which also tells the app when a shutdown begins (held long-polls answer)."""

        def __init__(self, config: uvicorn.Config, draining: threading.Event) -> None:
            super().__init__(config)
            self.draining = draining

        def handle_exit(self, sig: int, frame: Any) -> None:
            self.draining.set()
            super().handle_exit(sig, frame)

    return DrainingServer


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(help="Render worker processes (REELQ_WORKERS; 2, or one per GPU with diffusers)."),
    ] = None,
    root_path: Annotated[str | None, typer.Option(help="Also serve every route under this prefix.")] = None,
    home: HomeOpt = None,
) -> None:
    """Run the API and N supervised render workers on the embedded store."""
    import uvicorn

    from reelq.metrics import prepare_multiprocess_dir

    settings = _settings(workers=workers, root_path=root_path, home=home)
    # Before anything imports prometheus-client, here and in the render workers (they inherit it).
    metrics_dir = prepare_multiprocess_dir(settings)
    from reelq.api import create_asgi
    from reelq.api.app import build_services
    from reelq.api.server import server_options
    from reelq.database import SchemaOutdated
    from reelq.dispatch.gpus import default_worker_count, worker_gpus
    from reelq.dispatch.supervisor import Supervisor
    from reelq.webhooks.delivery import WebhookDeliverer

    _logging(settings)
    try:
        services = build_services(settings)
    except SchemaOutdated as exc:
        _error(f"{exc}")
        raise typer.Exit(2) from None
    except Exception as exc:
        _error(f"cannot start: {type(exc).__name__}: {exc}")
        raise typer.Exit(2) from None
    gpus = worker_gpus(settings)
    supervisor = Supervisor(settings, default_worker_count(settings, gpus), gpus)
    deliverer = WebhookDeliverer(
        settings, services.store, services.tasks.render, _webhook_link_base(settings, host, port)
    )
    config = uvicorn.Config(
        create_asgi(settings, services),
        # uvicorn's httptools protocol bounded against slow clients and too many connections.
        **server_options(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        # JSON logs: uvicorn's lines go through our handler (logs.py) rather than its text ones.
        **({"log_config": None} if settings.log_format == "json" else {}),
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
        # The stdlib event loop, not uvloop: measured here (docs/performance.md), uvloop served
        # established connections first and left new ones in the accept queue for seconds under
        # load (p99 1-1.3 s and wrk timeouts at 256 connections, a fifth of 1,000 pollers never
        # answered in 30 s), while asyncio accepted them at once for about the same req/s.
        loop="asyncio",
    )
    server = _uvicorn_server_class()(config, services.draining)
    # uvicorn re-raises the signal it caught once it has shut down; with our own handler in
    # place that re-raise is harmless and we get to drain the workers afterwards.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    config.load()  # imports the protocol and loop modules now, so the freeze below covers them
    # Everything alive now (FastAPI, SQLAlchemy, pydantic: ~130,000 objects) lives as long as the
    # process. Frozen, the collector stops re-scanning it: full collections under load took up
    # to 73 ms each and set the p99 at 256 connections (75 ms; 46 ms frozen, docs/performance.md).
    gc.collect()
    gc.freeze()
    supervisor.start()
    deliverer.start()
    try:
        server.run()
    finally:
        logging.getLogger("reelq").info("draining render workers")
        deliverer.stop()
        supervisor.stop()
        _remove_metrics_dir(metrics_dir)
    if not server.started:
        raise typer.Exit(1)


def _webhook_link_base(settings: Settings, host: str, port: int) -> str:
    """Where video links in webhook payloads point: REELQ_PUBLIC_BASE_URL, else this server's address (a
    webhook has no request whose Host header could say better)."""
    if settings.public_base_url:
        return settings.public_base_url
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{settings.root_path}"


@app.command()
def worker(
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-n", help="Render worker processes (1, or one per GPU with diffusers)."),
    ] = None,
    metrics_port: Annotated[
        str | None,
        typer.Option(
            help="Port of this node's metrics and probes (REELQ_METRICS_PORT; default 9720; 0 or off: none).",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str | None,
        typer.Option(
            help="Address the metrics and probes listen on (REELQ_METRICS_HOST; default 0.0.0.0).",
            show_default=False,
        ),
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Run render workers without the API (they share the database with the API processes; with
    REELQ_BROKER_URL they are Celery workers on REELQ_QUEUE). REELQ_METRICS_PORT serves /metrics
    (Prometheus), /healthz (liveness: the supervisor runs) and /readyz (readiness: database, storage,
    temporary disk, broker and a live render worker; 503 with the reason)."""
    from reelq.metrics import prepare_multiprocess_dir

    settings = _settings(home=home, metrics_port=metrics_port, metrics_host=metrics_host)
    metrics_dir: Path | None = None
    metrics_server = endpoint = None
    if settings.metrics_port:
        # Before anything imports prometheus-client, here and in the render workers (they inherit it).
        metrics_dir = prepare_multiprocess_dir(settings)
        metrics_server, endpoint = _serve_worker_metrics(settings, metrics_dir)
    try:
        _run_workers(settings, workers, endpoint)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        _remove_metrics_dir(metrics_dir)


def _serve_worker_metrics(settings: Settings, metrics_dir: Path) -> tuple[Any, Any]:
    """Bind the metrics port before any worker starts, so a busy port stops the node with one line."""
    from reelq.dispatch.probes import serve_node_endpoint

    host, port = settings.metrics_host, settings.metrics_port
    try:
        return serve_node_endpoint(host, port)
    except OSError as exc:
        _remove_metrics_dir(metrics_dir)
        _error(
            f"cannot serve metrics on {_address(host, port)}: {exc.strerror or exc} (choose another with "
            "--metrics-port/REELQ_METRICS_PORT or --metrics-host/REELQ_METRICS_HOST, or port 0 to serve none)"
        )
        raise typer.Exit(2) from None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _remove_metrics_dir(path: Path | None) -> None:
    if path is not None and path.name == f"metrics-{os.getpid()}":  # ours, not one the operator named
        shutil.rmtree(path, ignore_errors=True)


def _run_workers(settings: Settings, workers: int | None, endpoint: Any = None) -> None:
    from reelq.database import SchemaOutdated
    from reelq.dispatch.gpus import worker_gpus
    from reelq.dispatch.supervisor import Supervisor

    _logging(settings)
    gpus = worker_gpus(settings)
    try:
        supervisor = Supervisor(settings, workers if workers is not None else max(1, len(gpus)), gpus)
    except SchemaOutdated as exc:
        _error(f"{exc}")
        raise typer.Exit(2) from None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor.start()
    if endpoint is not None:  # /readyz checks this node's supervisor from now on
        endpoint.attach(supervisor)
        address = _address(settings.metrics_host, settings.metrics_port)
        logging.getLogger("reelq").info("metrics on http://%s/metrics; probes: /healthz, /readyz", address)
    stop.wait()
    supervisor.stop()


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    home: HomeOpt = None,
) -> None:
    """Create an API key. Prints its id and webhook signing secret, then the key alone on the last line
    (the key is shown only once; the secret again with `reelq keys secret`)."""
    store = _store(_settings(home=home))
    record, plain = store.create_key(name)
    found = store.webhook_secret(record.id)
    assert found is not None
    typer.echo(f"id: {record.id}")
    typer.echo(f"webhook secret: {found[1]}")
    typer.echo(plain)


@keys_app.command("list")
def keys_list(home: HomeOpt = None) -> None:
    """List keys: ids, names, dates (never the keys themselves)."""
    store = _store(_settings(home=home))
    for key in store.list_keys():
        if key.id == "key_local":
            continue
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.created_at))
        state = (
            "active"
            if key.revoked_at is None
            else "revoked " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key.revoked_at))
        )
        typer.echo(f"{key.id}\t{key.name or '-'}\t{key.key_prefix}…\tcreated {created} UTC\t{state}")


@keys_app.command("revoke")
def keys_revoke(
    id_or_key: Annotated[str, typer.Argument(help="The key's id or the key itself.")], home: HomeOpt = None
) -> None:
    """Revoke a key; it stops working at once."""
    store = _store(_settings(home=home))
    record = store.revoke_key(id_or_key)
    if record is None:
        _error("no such key")
        raise typer.Exit(1)
    typer.echo(f"revoked {record.id}")


@keys_app.command("secret")
def keys_secret(
    id_or_key: Annotated[str, typer.Argument(help="The key's id or the key itself.")], home: HomeOpt = None
) -> None:
    """Print the key's webhook signing secret (whsec_…), alone on one line."""
    found = _store(_settings(home=home)).webhook_secret(id_or_key)
    if found is None:
        _error("no such key")
        raise typer.Exit(1)
    typer.echo(found[1])


@keys_app.command("rotate-secret")
def keys_rotate_secret(
    id_or_key: Annotated[str, typer.Argument(help="The key's id or the key itself.")], home: HomeOpt = None
) -> None:
    """Replace the key's webhook signing secret and print the new one; the old one stops signing at once."""
    found = _store(_settings(home=home)).rotate_webhook_secret(id_or_key)
    if found is None:
        _error("no such key")
        raise typer.Exit(1)
    typer.echo(found[1])


def _image_argument(value: str | None) -> str | None:
    """A local file becomes a data URI; URLs and data URIs pass through."""
    if value is None or value.startswith(("http://", "https://", "data:")):
        return value
    path = Path(value)
    if not path.is_file():
        _error(f"image file not found: {value}")
        raise typer.Exit(2)
    data = path.read_bytes()
    kind = "png" if data.startswith(b"\x89PNG") else "webp" if data[8:12] == b"WEBP" else "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    )


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the MP4.")] = Path("out.mp4"),
    model: Annotated[str, typer.Option(help="viduq3-pro or viduq3-turbo.")] = "viduq3-turbo",
    duration: Annotated[int, typer.Option(help="Seconds, 1..16.")] = 5,
    aspect_ratio: Annotated[str, typer.Option(help="16:9, 9:16, 1:1, 4:3 or 3:4.")] = "16:9",
    resolution: Annotated[str, typer.Option(help="540p, 720p or 1080p.")] = "720p",
    first_image: Annotated[str | None, typer.Option(help="Image file, URL or data URI.")] = None,
    last_image: Annotated[str | None, typer.Option(help="Image file, URL or data URI.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same inputs + seed give the same video.")] = None,
    home: HomeOpt = None,
) -> None:
    """Generate one video with a progress bar: remote with REELQ_BASE_URL + REELQ_API_KEY, else embedded."""
    body: dict[str, Any] = {
        "model": model,
        "prompt": prompt,
        "duration": duration,
        "aspect_ratio": aspect_ratio,
        "resolution": resolution,
        "first_image": _image_argument(first_image),
        "last_image": _image_argument(last_image),
        "seed": seed,
    }
    from reelq.client._settings import ClientSettings

    remote = ClientSettings()
    if remote.base_url and remote.api_key:
        _generate_remote(remote.base_url, remote.api_key, body, output)
    else:
        _generate_embedded(_settings(home=home), body, output)


def _generate_remote(base_url: str, api_key: str, body: dict[str, Any], output: Path) -> None:
    """Create, follow the task's events on a progress bar (polling where the server has none), download.
    Ctrl-C cancels the task on the server before exiting (130)."""
    from reelq.client import Client, ReelqError

    task = None
    try:
        with Client(base_url=base_url, api_key=api_key) as client, _progress_bar() as bar:
            try:
                task = client.create(**{k: v for k, v in body.items() if v is not None})
                bar_id = bar.add_task(f"{task.id} {task.status}", total=100)

                def update(current: Any) -> None:
                    bar.update(
                        bar_id, completed=current.progress or 0, description=f"{current.id} {current.status}"
                    )

                task = _follow(client, task, update)
            except KeyboardInterrupt:
                if task is not None and not task.done:
                    _cancel_on_interrupt(client, task.id)
                raise typer.Exit(130) from None
            if task.status != "completed":
                raise typer.Exit(_fail(task.error))
            bar.update(bar_id, completed=100)
            client.download(task, output)
    except ReelqError as exc:
        _error(f"{exc}")
        raise typer.Exit(1) from None
    _report(output, task.actual_duration, task.total_tokens)


def _follow(client: Any, task: Any, update: Any) -> Any:
    """The task once terminal, reporting each state: server-sent events, else long-polls/polling."""
    from reelq.client import APIConnectionError, NotFoundError

    task_id = task.id
    try:
        for task in client.events(task_id):
            update(task)
        if task.done:
            return task
    except (NotFoundError, APIConnectionError):
        pass  # a server without events (or a stream that kept failing): wait for it instead
    return client.wait(task_id, timeout=3600, on_update=update)


def _cancel_on_interrupt(client: Any, task_id: str) -> None:
    from reelq.client import ReelqError

    try:
        cancelled = client.cancel(task_id)
        _error(f"interrupted: task {task_id} {'cancelled' if cancelled.error else cancelled.status}")
    except ReelqError as exc:
        _error(f"interrupted: could not cancel task {task_id}: {exc}")


def _generate_embedded(settings: Settings, body: dict[str, Any], output: Path) -> None:
    from reelq.dispatch.doorbell import ring
    from reelq.domain import TERMINAL
    from reelq.engines import build_engines
    from reelq.service.errors import ApiError
    from reelq.service.schemas import validate_create
    from reelq.storage import build_storage
    from reelq.worker import WorkerContext, make_worker_id, run_task

    store = _store(settings)
    try:
        new = validate_create({k: v for k, v in body.items() if v is not None}, settings.model_limits)
    except ApiError as exc:
        _error(f"{exc.message}")
        raise typer.Exit(2) from None
    storage = build_storage(settings)
    task, _ = store.create_task(store.ensure_local_key(), new)
    ctx = WorkerContext(settings, store, storage, build_engines(settings), make_worker_id("cli"))
    with _progress_bar() as bar:
        bar_id = bar.add_task(f"{task.id} rendering", total=100)
        claimed = store.claim_next(ctx.worker_id, settings.lease_seconds, task_id=task.id)
        if claimed is not None:
            run_task(ctx, claimed, on_progress=lambda p: bar.update(bar_id, completed=p))
        else:  # a running `reelq serve` on this home took it first: follow its progress
            ring(settings.run_dir)
        row = store.get_task(task.id)
        while row is not None and row.status not in TERMINAL:
            bar.update(bar_id, completed=row.progress)
            time.sleep(0.2)
            row = store.get_task(task.id)
        if row is None or row.status != "completed" or row.video_key is None:
            raise typer.Exit(_fail(row.error if row else "task vanished"))
        bar.update(bar_id, completed=100)
    output.parent.mkdir(parents=True, exist_ok=True)
    storage.download(row.video_key, output)
    _report(output, row.actual_duration, row.total_tokens)


def _fail(error: str | None) -> int:
    _error(f"generation failed: {error or 'unknown error'}")
    return 1


def _report(output: Path, duration: float | None, tokens: int | None) -> None:
    typer.echo(f"wrote {output} ({duration} s, {tokens} tokens)", err=True)


# --- task management against a server (REELQ_BASE_URL + REELQ_API_KEY) ---------------------------


def _remote_client() -> Any:
    from reelq.client import Client
    from reelq.client._settings import ClientSettings

    remote = ClientSettings()
    if not (remote.base_url and remote.api_key):
        _error("set REELQ_BASE_URL and REELQ_API_KEY to manage a server's tasks")
        raise typer.Exit(2)
    return Client(base_url=remote.base_url, api_key=remote.api_key)


def _remote(action: Any) -> None:
    from reelq.client import ReelqError

    try:
        with _remote_client() as client:
            action(client)
    except ReelqError as exc:
        _error(f"{exc}")
        raise typer.Exit(1) from None


@app.command("list")
def list_tasks(
    limit: Annotated[int, typer.Option(help="Tasks per page, 1..100.")] = 20,
    status: Annotated[str | None, typer.Option(help="queued, processing, completed or failed.")] = None,
    cursor: Annotated[str | None, typer.Option(help="The cursor printed after the previous page.")] = None,
) -> None:
    """List your tasks on the server, newest first (one line each; then the next page's cursor)."""

    def show(client: Any) -> None:
        page = client.list(limit=limit, status=status, cursor=cursor)
        for task in page.data:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(task.created))
            detail = (
                task.error or task.video_url or (f"{task.progress}%" if task.progress is not None else "")
            )
            typer.echo(f"{task.id}\t{task.status}\t{task.model}\t{created} UTC\t{detail}")
        if page.next_cursor:
            typer.echo(f"next: --cursor {page.next_cursor}", err=True)

    _remote(show)


@app.command("cancel")
def cancel_task(task_id: Annotated[str, typer.Argument(help="The task's id.")]) -> None:
    """Cancel a queued or rendering task on the server (never charged)."""
    _remote(lambda client: typer.echo(f"{task_id}\t{client.cancel(task_id).status}\tCancelled by user."))


@app.command("delete")
def delete_task(task_id: Annotated[str, typer.Argument(help="The task's id.")]) -> None:
    """Delete a task and its video on the server (a running task is cancelled first)."""

    def delete(client: Any) -> None:
        client.delete(task_id)
        typer.echo(f"deleted {task_id}")

    _remote(delete)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
