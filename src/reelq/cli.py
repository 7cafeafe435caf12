"""The `reelq` command: serve, worker, keys, generate, and list/cancel/delete of a server's tasks."""

from __future__ import annotations

import base64
import gc
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from reelq.config import ConfigError, Settings, load_settings

if TYPE_CHECKING:  # imported where used: a CLI command loads only what it needs
    from reelq.database import TaskStore

app = typer.Typer(help="reelq: a self-hosted, Vidu-compatible video-generation API.", no_args_is_help=True)
keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
err = Console(stderr=True)

def _version(value: bool) -> None:
    if value:
        from reelq import __version__

        typer.echo(f"reelq {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print reelq's version and exit."),
    ] = False,
) -> None:
    """reelq: a self-hosted, Vidu-compatible video-generation API."""


HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Data directory (REELQ_HOME).", show_default=False)
]
# SPEC §7: repeatable; the workers load and claim only these pools' models (REELQ_POOLS).
PoolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pool", help="Serve only this pool's models (repeatable; REELQ_POOLS).", show_default=False
    ),
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


def _store(settings: Settings) -> TaskStore:
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(help="Render worker processes (REELQ_WORKERS; 2, or one per GPU with diffusers)."),
    ] = None,
    root_path: Annotated[str | None, typer.Option(help="Also serve every route under this prefix.")] = None,
    pool: PoolOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run the API and N supervised render workers on the embedded store."""
    import uvicorn

    from reelq.metrics import prepare_multiprocess_dir

    settings = _settings(workers=workers, root_path=root_path, home=home, pools=pool or None)
    # Before anything imports prometheus-client, here and in the render workers (they inherit it).
    metrics_dir = prepare_multiprocess_dir(settings)
    from reelq.api import create_asgi
    from reelq.api.app import build_services
    from reelq.api.server import DrainingServer, server_options
    from reelq.database import SchemaOutdated
    from reelq.dispatch.gpus import default_worker_count, worker_gpu_groups
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
    try:
        gpus = worker_gpu_groups(settings)
        supervisor = Supervisor(settings, default_worker_count(settings, gpus), gpus)
    except ConfigError as exc:
        _error(f"{exc}")
        raise typer.Exit(2) from None
    if supervisor.awaits_models:  # /readyz: ready once the render workers have loaded their models
        services.workers_problem = supervisor.worker_problem
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
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=5,
        # The stdlib event loop, not uvloop: under load uvloop served established connections first
        # and left new ones in the accept queue for seconds, while asyncio accepted them at once for
        # about the same throughput (docs/performance.md, "Tail latency at 256 connections").
        loop="asyncio",
    )
    server = DrainingServer(config, services.draining)
    # uvicorn re-raises the signal it caught once it has shut down; with our own handler in
    # place that re-raise is harmless and we get to drain the workers afterwards.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    config.load()  # imports the protocol and loop modules now, so the freeze below covers them
    # Everything alive now (FastAPI, SQLAlchemy, pydantic) lives as long as the process. Frozen, the
    # collector stops re-scanning it: under load, full collections of it set the tail latency
    # (docs/performance.md, "Tail latency at 256 connections").
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
    """Where video links in webhook payloads point (service/links.py `server_base`)."""
    from reelq.service.links import server_base

    return server_base(settings.public_base_url, host, port, settings.root_path)


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
    pool: PoolOpt = None,
    home: HomeOpt = None,
) -> None:
    """Run render workers without the API (they share the database with the API processes; with
    REELQ_BROKER_URL they are Celery workers on REELQ_QUEUE). REELQ_METRICS_PORT serves /metrics
    (Prometheus), /healthz (liveness: the supervisor runs) and /readyz (readiness: database, storage,
    temporary disk, broker and a live render worker; 503 with the reason)."""
    from reelq.metrics import prepare_multiprocess_dir

    settings = _settings(home=home, metrics_port=metrics_port, metrics_host=metrics_host, pools=pool or None)
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
    from reelq.dispatch.gpus import default_worker_count, worker_gpu_groups
    from reelq.dispatch.supervisor import Supervisor

    _logging(settings)
    try:
        gpus = worker_gpu_groups(settings)
        count = workers if workers is not None else default_worker_count(settings, gpus, fallback=1)
        supervisor = Supervisor(settings, count, gpus)
    except (SchemaOutdated, ConfigError) as exc:
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


# The per-key settings (SPEC §6) as flags, the same for `create` and `update`. Values are text so that
# `none` can lift a limit on `update`; service/admin.py's KeySettings validates them like the admin API.
BudgetOpt = Annotated[str | None, typer.Option(help="Tokens the key may spend; 'none': unlimited.")]
MaxActiveOpt = Annotated[
    str | None, typer.Option(help="Tasks waiting or running at once [REELQ_MAX_ACTIVE_PER_KEY].")
]
MaxProcessingOpt = Annotated[str | None, typer.Option(help="Tasks rendering at once [no limit].")]
WeightOpt = Annotated[str | None, typer.Option(help="Fair share weight [1].")]
ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", help="A model the key may use (repeat; 'none': all) [all].")
]
CreateRateOpt = Annotated[str | None, typer.Option(help="Creates per minute [REELQ_CREATE_RATE].")]
PollRateOpt = Annotated[str | None, typer.Option(help="Status reads per second per task [REELQ_POLL_RATE].")]
ExpiresOpt = Annotated[str | None, typer.Option(help="Unix seconds or ISO 8601 time; after it: 401.")]
_INTEGER_SETTINGS = ("budget", "max_active", "max_processing")


def _flag_settings(name: str | None, *, partial: bool, **flags: Any) -> dict[str, Any]:
    """The settings the given flags set, validated like the admin API's body (exit 2 on a bad one)."""
    from reelq.service.admin import parse_settings
    from reelq.service.errors import InvalidRequest

    data: dict[str, Any] = {} if name is None else {"name": name}
    for field, value in flags.items():
        if value is None:
            continue
        if field == "models":
            data[field] = None if value == ["none"] else list(value)
        elif value.lower() == "none":
            data[field] = None
        elif field == "expires_at":
            data[field] = float(value) if value.replace(".", "", 1).isdigit() else value
        else:
            try:
                data[field] = int(value) if field in _INTEGER_SETTINGS else float(value)
            except ValueError:
                _error(f"--{field.replace('_', '-')}: not a number: {value!r}")
                raise typer.Exit(2) from None
    try:
        return parse_settings(data, partial=partial)
    except InvalidRequest as exc:
        _error(exc.message)
        raise typer.Exit(2) from None


def _show(record: Any) -> None:
    from reelq.service.admin import key_object

    typer.echo(json.dumps(key_object(record), indent=2))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="May call /v1/admin/* (SPEC §6).")] = False,
    budget: BudgetOpt = None,
    max_active: MaxActiveOpt = None,
    max_processing: MaxProcessingOpt = None,
    weight: WeightOpt = None,
    model: ModelOpt = None,
    create_rate: CreateRateOpt = None,
    poll_rate: PollRateOpt = None,
    expires_at: ExpiresOpt = None,
    home: HomeOpt = None,
) -> None:
    """Create an API key. Prints `id: …` and `webhook secret: …`, then the key alone on the last line of
    stdout (shown only this once: `reelq keys create | tail -n 1` captures it)."""
    settings = _flag_settings(
        name,
        partial=False,
        budget=budget,
        max_active=max_active,
        max_processing=max_processing,
        weight=weight,
        models=model,
        create_rate=create_rate,
        poll_rate=poll_rate,
        expires_at=expires_at,
    )
    store = _store(_settings(home=home))
    record, plain, secret = store.create_key_with(settings, admin=admin)
    typer.echo(f"id: {record.id}")
    typer.echo(f"webhook secret: {secret}")
    typer.echo("reelq: the API key is the last line of stdout; it is shown only this once", err=True)
    typer.echo(plain)


@keys_app.command("update")
def keys_update(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    name: Annotated[str | None, typer.Option(help="A new label.")] = None,
    budget: BudgetOpt = None,
    max_active: MaxActiveOpt = None,
    max_processing: MaxProcessingOpt = None,
    weight: WeightOpt = None,
    model: ModelOpt = None,
    create_rate: CreateRateOpt = None,
    poll_rate: PollRateOpt = None,
    expires_at: ExpiresOpt = None,
    home: HomeOpt = None,
) -> None:
    """Change a key's settings (`none` lifts a limit); prints the key object."""
    from reelq.database.keys import BudgetInUse

    settings = _flag_settings(
        name,
        partial=True,
        budget=budget,
        max_active=max_active,
        max_processing=max_processing,
        weight=weight,
        models=model,
        create_rate=create_rate,
        poll_rate=poll_rate,
        expires_at=expires_at,
    )
    try:
        record = _store(_settings(home=home)).update_key(key_id, settings)
    except BudgetInUse:
        _error("the budget cannot be lower than what the key has spent and holds for live tasks")
        raise typer.Exit(1) from None
    if record is None:
        _error("no such key")
        raise typer.Exit(1)
    _show(record)


@keys_app.command("credit")
def keys_credit(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    tokens: Annotated[int, typer.Argument(help="Tokens to add to the budget (negative: take away).")],
    note: Annotated[str | None, typer.Option(help="Why (an invoice number…), kept in the ledger.")] = None,
    home: HomeOpt = None,
) -> None:
    """Add tokens to a key's budget, recorded in its credit ledger; prints the key object."""
    from reelq.database.keys import BudgetInUse

    try:
        record = _store(_settings(home=home)).credit_key(key_id, tokens, note, None)
    except ValueError as exc:
        _error(f"{exc}")
        raise typer.Exit(1) from None
    except BudgetInUse:
        _error("the budget cannot go below what the key has spent and holds for live tasks")
        raise typer.Exit(1) from None
    if record is None:
        _error("no such key")
        raise typer.Exit(1)
    _show(record)


@keys_app.command("show")
def keys_show(key_id: Annotated[str, typer.Argument(help="The key's id.")], home: HomeOpt = None) -> None:
    """Print a key object (settings, budget, spent, reserved, available) and its latest credits."""
    store = _store(_settings(home=home))
    record = store.key_record(key_id)
    if record is None:
        _error("no such key")
        raise typer.Exit(1)
    _show(record)
    for credit in store.key_credits(key_id, 20):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(credit.at))
        typer.echo(f"credit\t{when} UTC\t{credit.tokens:+d}\t{credit.by or 'cli'}\t{credit.note or ''}")


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


# A server's address and key: flags first, else REELQ_BASE_URL / REELQ_API_KEY (client/_settings.py).
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", help="The server's address (REELQ_BASE_URL).", show_default=False),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", help="Your API key (REELQ_API_KEY).", show_default=False),
]


def _server(base_url: str | None, api_key: str | None) -> tuple[str | None, str | None]:
    """(base URL, key): each flag, else its variable."""
    from reelq.client._settings import ClientSettings

    remote = ClientSettings()
    return base_url or remote.base_url, api_key or remote.api_key


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What the video shows.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the MP4.")] = Path("out.mp4"),
    model: Annotated[
        str | None,
        typer.Option(
            help="A model the server serves (`reelq models`); default: its first.",
            show_default=False,
        ),
    ] = None,
    duration: Annotated[int, typer.Option(help="Seconds, 1..16.")] = 5,
    aspect_ratio: Annotated[str, typer.Option(help="16:9, 9:16, 1:1, 4:3 or 3:4.")] = "16:9",
    resolution: Annotated[str, typer.Option(help="540p, 720p or 1080p.")] = "720p",
    first_image: Annotated[str | None, typer.Option(help="Image file, URL or data URI.")] = None,
    last_image: Annotated[str | None, typer.Option(help="Image file, URL or data URI.")] = None,
    seed: Annotated[int | None, typer.Option(help="Same inputs + seed give the same video.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Generate one video with a progress bar: on a server with --base-url/--api-key (or REELQ_BASE_URL
    + REELQ_API_KEY), else embedded in this command (REELQ_HOME)."""
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
    url, key = _server(base_url, api_key)
    if url and key:
        _generate_remote(url, key, body, output)
    elif base_url or api_key:  # a flag says "a server", but half of what reaching it takes is missing
        missing = "--api-key (or REELQ_API_KEY)" if base_url else "--base-url (or REELQ_BASE_URL)"
        _error(f"generating on a server needs {missing} too")
        raise typer.Exit(2)
    else:
        settings = _settings(home=home)
        if body["model"] is None:
            body["model"] = settings.models[0]  # the models file's first (SPEC §5), or viduq3-pro
        _generate_embedded(settings, body, output)


def _generate_remote(base_url: str, api_key: str, body: dict[str, Any], output: Path) -> None:
    """Create, follow the task's events on a progress bar (polling where the server has none), download.
    Ctrl-C cancels the task on the server before exiting (130)."""
    from reelq.client import Client, ReelqError

    task = None
    try:
        with Client(base_url=base_url, api_key=api_key) as client, _progress_bar() as bar:
            try:
                if body["model"] is None:
                    body["model"] = _first_model(client)
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


def _first_model(client: Any) -> str:
    """The first model the server serves this key (GET /v1/models): what `generate` asks for by default."""
    from reelq.client import NotFoundError

    try:
        models = client.models()
    except NotFoundError:
        _error("this server does not list its models (no GET /v1/models): name one with --model")
        raise typer.Exit(2) from None
    if not models:
        _error("the server serves no model to this key")
        raise typer.Exit(1)
    return str(models[0]["id"])


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


def _remote_client(base_url: str | None, api_key: str | None) -> Any:
    from reelq.client import Client

    url, key = _server(base_url, api_key)
    if not (url and key):
        _error(
            "set REELQ_BASE_URL and REELQ_API_KEY (or pass --base-url and --api-key) "
            "to manage a server's tasks"
        )
        raise typer.Exit(2)
    return Client(base_url=url, api_key=key)


def _remote(action: Any, base_url: str | None = None, api_key: str | None = None) -> None:
    from reelq.client import ReelqError

    try:
        with _remote_client(base_url, api_key) as client:
            action(client)
    except ReelqError as exc:
        _error(f"{exc}")
        raise typer.Exit(1) from None


def _one_line(text: str, width: int) -> str:
    """A prompt on one table cell: newlines and tabs as spaces, cut with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command("models")
def list_models(base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None) -> None:
    """List the models the server serves your key, with what each accepts (the first is the default)."""

    def show(client: Any) -> None:
        typer.echo("MODEL\tMAX_DURATION\tRESOLUTIONS\tFIRST_IMAGE\tLAST_IMAGE")
        for model in client.models():
            resolutions = ",".join(model.get("resolutions") or [])
            typer.echo(
                f"{model['id']}\t{model.get('max_duration')}\t{resolutions}\t"
                f"{_yes(model.get('first_image'))}\t{_yes(model.get('last_image'))}"
            )

    _remote(show, base_url, api_key)


def _yes(value: Any) -> str:
    return "yes" if value else "no"


@app.command("get")
def get_task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the task object as JSON.")] = False,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Show one task on the server: its status, video link, duration, tokens or error."""

    def show(client: Any) -> None:
        import json

        task = client.get(task_id)
        if json_output:
            typer.echo(json.dumps(dict(task.raw), indent=2))
            return
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(task.created))
        lines = [("id", task.id), ("status", task.status), ("model", task.model)]
        lines.append(("created", f"{created} UTC"))
        if task.progress is not None and not task.done:
            lines.append(("progress", f"{task.progress}%"))
        if task.status == "completed":
            lines += [
                ("duration", f"{task.actual_duration} s"),
                ("tokens", str(task.total_tokens)),
                ("video_url", task.video_url or "-"),
            ]
        if task.error:
            lines.append(("error", task.error))
        for name, value in lines:
            typer.echo(f"{name + ':':<11}{value}")

    _remote(show, base_url, api_key)


@app.command("download")
def download_task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the MP4 [ID.mp4].", show_default=False),
    ] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Download a completed task's video (an unfinished task: exit 1 with its status)."""

    def fetch(client: Any) -> None:
        task = client.get(task_id)
        if task.status != "completed":
            detail = f": {task.error}" if task.error else " (not finished: `reelq get` shows its progress)"
            _error(f"task {task.id} is {task.status}{detail}")
            raise typer.Exit(1)
        target = output or Path(f"{task.id}.mp4")
        client.download(task, target)
        _report(target, task.actual_duration, task.total_tokens)

    _remote(fetch, base_url, api_key)


@app.command("list")
def list_tasks(
    limit: Annotated[int, typer.Option(help="Tasks per page, 1..100.")] = 20,
    status: Annotated[str | None, typer.Option(help="queued, processing, completed or failed.")] = None,
    cursor: Annotated[str | None, typer.Option(help="The cursor printed after the previous page.")] = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """List your tasks on the server, newest first: a header, one line each, then the next page's cursor.
    The full video link and error: `reelq get ID`."""

    def show(client: Any) -> None:
        page = client.list(limit=limit, status=status, cursor=cursor)
        typer.echo("ID\tSTATUS\tMODEL\tCREATED (UTC)\tDURATION\tRESOLUTION\tTOKENS\tPROMPT")
        for task in page.data:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(task.created))
            raw = task.raw
            running = task.status == "processing" and task.progress is not None
            shown = f"{task.status} {task.progress}%" if running else task.status
            duration = task.actual_duration if task.actual_duration is not None else raw.get("duration", "-")
            tokens = task.total_tokens if task.total_tokens is not None else "-"
            prompt = _one_line(str(raw.get("prompt") or "-"), 60)
            typer.echo(
                f"{task.id}\t{shown}\t{task.model}\t{created}\t{duration}\t{raw.get('resolution', '-')}"
                f"\t{tokens}\t{prompt}"
            )
        if page.next_cursor:
            typer.echo(f"next: --cursor {page.next_cursor}", err=True)

    _remote(show, base_url, api_key)


@app.command("cancel")
def cancel_task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Cancel a queued or rendering task on the server (never charged)."""
    _remote(
        lambda client: typer.echo(f"{task_id}\t{client.cancel(task_id).status}\tCancelled by user."),
        base_url,
        api_key,
    )


@app.command("delete")
def delete_task(
    task_id: Annotated[str, typer.Argument(help="The task's id.")],
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Delete a task and its video on the server (a running task is cancelled first)."""

    def delete(client: Any) -> None:
        client.delete(task_id)
        typer.echo(f"deleted {task_id}")

    _remote(delete, base_url, api_key)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
