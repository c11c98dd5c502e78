"""`devmesh hub`: run the hub (serve), manage it directly on its database (user add, workspace add),
and talk to a running hub as a client (login, enroll, agents, apply, revisions, keys, audit).

Only click at import time (main.py imports this module to register the group); SQLAlchemy, FastAPI and
the rest load when a command runs. Client commands find the hub in --hub or $DEVMESH_HUB_URL and a
credential in $DEVMESH_HUB_KEY (an API key or a JWT), else in the file `devmesh hub login` wrote.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_HUB = "http://127.0.0.1:7000"
ROLE_CHOICE = click.Choice(["viewer", "editor", "admin"])

_db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    help="sqlite:///PATH or postgresql+psycopg://USER@HOST/DB (default: $DEVMESH_HUB_DB, else ./devmesh-hub.db).",
)
_hub_option = click.option(
    "--hub",
    "hub_url",
    metavar="URL",
    envvar="DEVMESH_HUB_URL",
    help=f"The hub's base URL (default: $DEVMESH_HUB_URL, else the one logged in to, else {DEFAULT_HUB}).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    click.echo(f"devmesh: {message}", err=True)
    raise SystemExit(code)


@click.group(
    "hub",
    epilog="""\b
Examples:
  devmesh hub user add alice --role admin --workspace team --password-stdin < pw.txt
  devmesh hub serve --listen 0.0.0.0:7000
  devmesh hub login --username alice
  devmesh hub enroll team                      (then, on a machine: devmesh up --hub URL --hub-token T)
  devmesh hub apply team policy.toml
  devmesh hub revisions team""",
)
def hub() -> None:
    """A central control plane: agents on any network enrol, share catalogs and receive policies."""


# -- the server and its database -------------------------------------------------------------------


def _database(db_url: str | None) -> Any:
    from devmesh.hub.database import Database, DatabaseError, default_url

    try:
        db = Database(db_url or default_url())
        db.migrate()
    except DatabaseError as error:
        _fail(str(error), EXIT_USAGE)
    return db


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"cli:{user}@{socket.gethostname()}"


def _parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        _fail(f"--listen {listen!r} is not HOST:PORT (e.g. 127.0.0.1:7000)", EXIT_USAGE)
    return host.strip("[]"), int(port)


@hub.command("serve")
@_db_option
@click.option("--listen", default="127.0.0.1:7000", show_default=True, help="HOST:PORT to serve on.")
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The JWT signing secret (default: generated once and kept in the database).",
)
def serve(db_url: str | None, listen: str, secret_file: Path | None) -> None:
    """Run the hub: REST API, agent sessions and the web console (migrates the database first).

    \b
    Examples:
      devmesh hub serve
      devmesh hub serve --db postgresql+psycopg://hub@db.internal/hub --listen 0.0.0.0:7000
    """
    import logging

    from devmesh.hub.database import DatabaseError, default_url
    from devmesh.hub.server import serve as run_server
    from devmesh.hub.store import StoreError

    host, port = _parse_listen(listen)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    url = db_url or default_url()
    click.echo(f"devmesh hub on http://{host}:{port}/ (database {url.split('@')[-1]})", err=True)
    try:
        code = run_server(url, host, port, secret_file=secret_file)
    except (DatabaseError, StoreError) as error:
        _fail(str(error), EXIT_USAGE)
    raise SystemExit(code)


@hub.group("workspace")
def workspace_group() -> None:
    """Workspaces (meshes), managed directly on the hub's database."""


@workspace_group.command("add")
@click.argument("name")
@_db_option
def workspace_add(name: str, db_url: str | None) -> None:
    """Create a workspace (`user add --workspace` creates it too).

    \b
    Examples:
      devmesh hub workspace add team
    """
    from devmesh.hub.store import StoreError, add_workspace

    db = _database(db_url)
    try:
        created = add_workspace(db, name, actor=_actor())
    except StoreError as error:
        _fail(str(error), EXIT_USAGE)
    click.echo(f"workspace {name} {'created' if created else 'exists already'}")


@hub.group("user")
def user_group() -> None:
    """People, managed directly on the hub's database (admins also can through the API, except
    changing an existing user's password: that is done here only)."""


def _read_password(from_stdin: bool, confirm: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=confirm)
    if len(password) < 8:
        _fail("the password must be at least 8 characters", EXIT_USAGE)
    return password


@user_group.command("add")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, default="admin", show_default=True, help="Role in --workspace.")
@click.option("--workspace", metavar="W", help="Give the role in this workspace (created if new).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
@_db_option
def user_add(name: str, role: str, workspace: str | None, password_stdin: bool, db_url: str | None) -> None:
    """Create a user (or set its password), with a role in a workspace.

    \b
    Examples:
      devmesh hub user add alice --workspace team --role admin
      echo "$PW" | devmesh hub user add ci --workspace team --role editor --password-stdin
    """
    from devmesh.hub.store import StoreError, add_user

    db = _database(db_url)
    password = _read_password(password_stdin, confirm=True)
    try:
        created = add_user(
            db, name, password, actor=_actor(), workspace=workspace, role=role, create_workspace=True
        )
    except StoreError as error:
        _fail(str(error), EXIT_USAGE)
    where = f" ({role} in {workspace})" if workspace else ""
    click.echo(f"user {name} {'created' if created else 'updated'}{where}")


# -- the client --------------------------------------------------------------------------------------


def _login_file() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "devmesh" / "hub-login.json"


def _saved_login() -> dict[str, Any] | None:
    try:
        data = json.loads(_login_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _hub_base(hub_url: str | None) -> str:
    saved = _saved_login()
    return (hub_url or (saved or {}).get("hub") or DEFAULT_HUB).rstrip("/")


def _credential(base: str) -> str:
    key = os.environ.get("DEVMESH_HUB_KEY")
    if key:
        return key
    saved = _saved_login()
    if saved and saved.get("hub") == base and float(saved.get("expires", 0)) > time.time():
        return str(saved["token"])
    _fail(
        f"no credential for {base}: set DEVMESH_HUB_KEY (an API key) or run `devmesh hub login --hub {base}`"
    )


def _request(base: str, method: str, path: str, body: Any = None, *, credential: str | None = None) -> Any:
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        try:
            detail = json.loads(error.read()).get("detail")
        except (ValueError, AttributeError):
            detail = error.reason
        if isinstance(detail, list):
            detail = "; ".join(str(item.get("msg", item)) for item in detail)
        _fail(
            f"the hub answered {error.code}: {detail}",
            EXIT_USAGE if error.code in (400, 404, 409, 422) else 1,
        )
    except (urllib.error.URLError, OSError) as error:
        _fail(f"cannot reach the hub at {base}: {getattr(error, 'reason', error)}")
    return json.loads(raw) if raw else None


def _call(hub_url: str | None, method: str, path: str, body: Any = None) -> Any:
    base = _hub_base(hub_url)
    return _request(base, method, path, body, credential=_credential(base))


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "never"


@hub.command("login")
@_hub_option
@click.option("--username", "-u", prompt=True, help="Your hub user name.")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
def login(hub_url: str | None, username: str, password_stdin: bool) -> None:
    """Log in and keep the JWT in ~/.config/devmesh/hub-login.json (mode 0600) for the other commands.

    \b
    Examples:
      devmesh hub login --hub https://hub.example.com --username alice
    """
    base = (hub_url or DEFAULT_HUB).rstrip("/")
    password = _read_password(password_stdin, confirm=False)
    answer = _request(base, "POST", "/hub/v1/login", {"username": username, "password": password})
    path = _login_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({"hub": base, "username": username, **answer}, handle)
    os.chmod(path, 0o600)
    click.echo(f"logged in to {base} as {username} until {_when(answer['expires'])}")


@hub.command("enroll")
@click.argument("workspace")
@click.option(
    "--ttl", default="24h", show_default=True, help="How long the token stays usable (30m, 24h, 7d)."
)
@_hub_option
@_json_option
def enroll(workspace: str, ttl: str, hub_url: str | None, as_json: bool) -> None:
    """Print a one-time enrollment token for an agent of WORKSPACE (editor or admin).

    \b
    Examples:
      devmesh hub enroll team --ttl 1h
      devmesh up --hub http://hub:7000 --hub-token dme_...     (on the agent's machine)
    """
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(ttl[:-1]) * units[ttl[-1]] if ttl[-1:] in units else float(ttl)
    except ValueError:
        _fail(f"--ttl {ttl!r} is not a duration (e.g. 90s, 30m, 24h, 7d)", EXIT_USAGE)
    answer = _call(hub_url, "POST", f"/hub/v1/workspaces/{workspace}/enrollment-tokens", {"ttl_s": seconds})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(answer["token"])
    click.echo(
        f"one-time token #{answer['id']} for {workspace}, usable until {_when(answer['expires'])} "
        f"(revoke: devmesh hub token revoke {workspace} {answer['id']})",
        err=True,
    )


@hub.group("token")
def token_group() -> None:
    """Enrollment tokens."""


@token_group.command("revoke")
@click.argument("workspace")
@click.argument("token_id", type=int, metavar="ID")
@_hub_option
def token_revoke(workspace: str, token_id: int, hub_url: str | None) -> None:
    """Revoke an unused enrollment token (its ID is printed by `devmesh hub enroll`).

    \b
    Examples:
      devmesh hub token revoke team 3
    """
    _call(hub_url, "DELETE", f"/hub/v1/workspaces/{workspace}/enrollment-tokens/{token_id}")
    click.echo(f"enrollment token #{token_id} of {workspace} revoked")


@hub.command("agents")
@click.argument("workspace")
@_hub_option
@_json_option
def agents(workspace: str, hub_url: str | None, as_json: bool) -> None:
    """Show WORKSPACE's agents: online, last seen, version and applied revision.

    \b
    Examples:
      devmesh hub agents team --json
    """
    found = _call(hub_url, "GET", f"/hub/v1/workspaces/{workspace}/agents")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no agent in {workspace} yet: `devmesh hub enroll {workspace}` gives a token")
        return
    from devmesh.cli.table import print_table

    print_table(
        ["agent", "id", "host", "online", "last seen", "version", "revision"],
        [
            [
                entry["name"],
                entry["agent_id"][:12],
                entry["hostname"],
                "revoked" if entry["revoked"] else "yes" if entry["online"] else "no",
                _when(entry["last_seen"]),
                entry["version"],
                (entry["revision"] or "")[:12],
            ]
            for entry in found
        ],
    )


def _read_document(path: Path) -> dict[str, Any]:
    import tomllib

    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        _fail(f"{path}: {error.strerror}", EXIT_USAGE)
    try:
        document = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        _fail(
            f"{path} is not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'TOML'}: {error}",
            EXIT_USAGE,
        )
    if not isinstance(document, dict):
        _fail(f"{path} must hold a table with [services.NAME], [faults.NAME] or [scenarios.NAME]", EXIT_USAGE)
    try:
        json.dumps(document, allow_nan=False)
    except (TypeError, ValueError) as error:
        _fail(f"{path} has a value JSON cannot carry (dates, NaN): {error}", EXIT_USAGE)
    return document


@hub.command("apply")
@click.argument("workspace")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@_hub_option
@_json_option
def apply(workspace: str, file: Path, hub_url: str | None, as_json: bool) -> None:
    """Make FILE (TOML or YAML: [services], [faults], [scenarios]) WORKSPACE's current revision; its
    agents get it at once and each applies or rejects it (see `devmesh hub revisions`).

    \b
    Examples:
      devmesh hub apply team policy.toml
    """
    document = _read_document(file)
    answer = _call(hub_url, "POST", f"/hub/v1/workspaces/{workspace}/revisions", {"document": document})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(answer["revision"])
    if not answer["created"]:
        click.echo("unchanged: this is already the current revision", err=True)


@hub.command("revisions")
@click.argument("workspace")
@click.option("--limit", "-n", default=10, show_default=True, help="How many, newest first.")
@_hub_option
@_json_option
def revisions(workspace: str, limit: int, hub_url: str | None, as_json: bool) -> None:
    """Show WORKSPACE's revisions, newest first, and each agent's status (pending, applied, rejected).

    \b
    Examples:
      devmesh hub revisions team
      devmesh hub revisions team --json
    """
    found = _call(hub_url, "GET", f"/hub/v1/workspaces/{workspace}/revisions?limit={max(1, min(limit, 500))}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    if not found:
        click.echo(f"no revision in {workspace} yet: `devmesh hub apply {workspace} FILE`")
        return
    from devmesh.cli.table import print_table

    rows = []
    for entry in found:
        head = [
            entry["revision"][:12] + (" *" if entry["current"] else ""),
            _when(entry["created"]),
            entry["author"],
        ]
        if not entry["agents"]:
            rows.append([*head, "", "", ""])
        for index, agent in enumerate(entry["agents"]):
            rows.append(
                [
                    *(head if index == 0 else ["", "", ""]),
                    agent["name"],
                    agent["status"],
                    (agent["details"] or "").replace("\n", " ")[:80],
                ]
            )
    print_table(["revision", "created", "author", "agent", "status", "details"], rows)


@hub.command("audit")
@click.argument("workspace")
@click.option("--limit", "-n", default=50, show_default=True, help="How many, newest first.")
@_hub_option
@_json_option
def audit(workspace: str, limit: int, hub_url: str | None, as_json: bool) -> None:
    """Show WORKSPACE's audit log: who changed what, and when.

    \b
    Examples:
      devmesh hub audit team -n 20
    """
    found = _call(hub_url, "GET", f"/hub/v1/workspaces/{workspace}/audit?limit={max(1, min(limit, 1000))}")
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from devmesh.cli.table import print_table

    print_table(
        ["time", "actor", "action", "target"],
        [[_when(e["time"]), e["actor"], e["action"], e["target"][:40]] for e in found],
    )


@hub.group("key")
def key_group() -> None:
    """API keys for automation (admins)."""


@key_group.command("add")
@click.argument("workspace")
@click.argument("name")
@click.option("--role", type=ROLE_CHOICE, default="editor", show_default=True, help="The key's role.")
@_hub_option
def key_add(workspace: str, name: str, role: str, hub_url: str | None) -> None:
    """Create an API key (printed once; use it as DEVMESH_HUB_KEY).

    \b
    Examples:
      devmesh hub key add team ci --role editor
    """
    answer = _call(hub_url, "POST", f"/hub/v1/workspaces/{workspace}/keys", {"name": name, "role": role})
    click.echo(answer["key"])
    click.echo(f"API key #{answer['id']} ({role} in {workspace}); it is not shown again", err=True)


@key_group.command("revoke")
@click.argument("workspace")
@click.argument("key_id", type=int, metavar="ID")
@_hub_option
def key_revoke(workspace: str, key_id: int, hub_url: str | None) -> None:
    """Revoke an API key.

    \b
    Examples:
      devmesh hub key revoke team 2
    """
    _call(hub_url, "DELETE", f"/hub/v1/workspaces/{workspace}/keys/{key_id}")
    click.echo(f"API key #{key_id} of {workspace} revoked")
