"""CLI: `python -m server serve | migrate | token | verify | mcp`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from server.platform import logs
from server.platform.auth import Role, mint_token
from server.platform.config import ConfigError, Settings, load_settings, unknown_variables


def mcp(argv: list[str]) -> int:
    """The `flow-nexus` MCP server: a client of the gRPC API that lives in the
    client package (flownexus_billing_client.mcp_server); from a checkout,
    clients/python/src is a source root like generated/."""
    try:
        from flownexus_billing_client.mcp_server.cli import main as mcp_main
    except ModuleNotFoundError as exc:
        if exc.name != "flownexus_billing_client":
            raise
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python" / "src"))
        from flownexus_billing_client.mcp_server.cli import main as mcp_main
    # Over HTTP it verifies and mints tokens with the secret `serve` and `token` use.
    return mcp_main(argv, default_jwt_secret=lambda: load_settings().effective_jwt_secret)


def settings_or_exit() -> Settings:
    """The settings, or one line per bad variable and exit status 2 (a usage
    error, like argparse's), never a traceback. Unread BILLING_* variables
    (typos) are warned about on stderr."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        for line in exc.lines:
            print(f"python -m server: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    for name in unknown_variables():
        print(f"python -m server: warning: {name} is set but no setting reads it (a typo?)", file=sys.stderr)
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["mcp"]:  # its own options: `python -m server mcp --help`
        return mcp(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m server", description="Credits billing service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server, HTTP listener and workers")
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="serving processes sharing the gRPC and HTTP ports (SO_REUSEPORT); N > 1 needs PostgreSQL",
    )
    # A process started by `serve --workers N`: it binds with SO_REUSEPORT and
    # leaves the migrations to its parent.
    serve.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    sub.add_parser("migrate", help="apply database migrations")
    tok = sub.add_parser("token", help="mint a development bearer token")
    tok.add_argument("--user", required=True, help="the token's subject (user id)")
    tok.add_argument("--role", choices=[r.value for r in Role], default="user")
    tok.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds")
    tok.add_argument("--audience", help="mint for the MCP endpoint (its URL); the gRPC API refuses such tokens")
    sub.add_parser("verify", help="audit the ledger; exits 1 on any discrepancy")
    sub.add_parser("mcp", help="run the flow-nexus MCP server (stdio or HTTP); see `mcp --help`")
    args = parser.parse_args(argv)
    settings = settings_or_exit()

    if args.command == "token":
        print(mint_token(settings.effective_jwt_secret, args.user, Role(args.role), ttl_seconds=args.ttl,
                         issuer=settings.jwt_issuer, audience=args.audience))
        return 0
    logs.setup(settings.log_level, settings.log_json)
    if args.command == "serve":
        from server.pricing.service import InvalidRateCard, rate_card_file

        try:
            rate_card_file(settings.rate_card)  # each process reads it again; a bad one stops here
        except InvalidRateCard as exc:
            print(f"python -m server: BILLING_RATE_CARD: {exc.message}", file=sys.stderr)
            return 2
        if args.workers < 1:
            print("python -m server: --workers must be at least 1", file=sys.stderr)
            return 2
        if args.workers > 1:
            from server.supervisor import serve_workers

            return serve_workers(settings, args.workers)
        from server.app import App

        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        shared = bool(args.worker_process)
        asyncio.run(App(settings, reuse_port=shared).serve_forever(migrate=not shared))
        return 0
    if args.command == "migrate":
        from server.db.engine import Database

        async def migrate() -> None:
            db = Database(settings.database_url)
            await db.migrate()
            await db.dispose()

        asyncio.run(migrate())
        print("migrations applied")
        return 0
    if args.command == "verify":
        from server.db.engine import Database
        from server.ledger.verify import verify

        async def audit() -> bool:
            db = Database(settings.database_url)
            try:
                if not await db.migrated():
                    print(f"no ledger at {settings.database_url}: run `python -m server migrate` first", file=sys.stderr)
                    return False
                report = await verify(db.reader)
            finally:
                await db.dispose()
            print(report.render())
            return report.ok

        return 0 if asyncio.run(audit()) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
