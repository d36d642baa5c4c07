"""`agentnode ca init|issue` and `agentnode id`: create the cluster CA, issue node certificates, show a node's id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from cryptography import x509

from agentnode.cli.output import DataDirOption, JsonOption, data_dir_or_default, fail, print_json, print_table
from agentnode.transport.identity import (
    CA_VALIDITY_DAYS_DEFAULT,
    NODE_VALIDITY_DAYS_DEFAULT,
    IdentityError,
    NodeIdentity,
    create_ca,
    issue_node_certificate,
)

ca_app = typer.Typer(
    name="ca",
    help="Cluster certificate authority: `ca init` once per cluster, `ca issue` once per node.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add `ca init`, `ca issue` and `id` to the root app."""
    app.add_typer(ca_app, name="ca")
    app.command("id", help="Print this node's id (derived from its key) and certificate details.")(show_id)


@ca_app.command("init", help="Create a cluster CA (Ed25519) in DIR: ca.key (keep it secret) and ca.crt.")
def init(
    directory: Path = typer.Option(..., "--dir", help="Directory for the new CA; must not hold one already."),
    name: str = typer.Option("agentnode cluster CA", "--name", help="CA subject common name."),
    days: int = typer.Option(CA_VALIDITY_DAYS_DEFAULT, "--days", help="Validity in days."),
    json: bool = JsonOption,
) -> None:
    try:
        cert_path = create_ca(directory, name=name, validity_days=days)
    except (IdentityError, OSError) as exc:
        fail(str(exc))
    result = {"ca_dir": str(directory), "ca_cert": str(cert_path), "ca_key": str(directory / "ca.key")}
    if json:
        print_json(result)
    else:
        typer.echo(f"created cluster CA in {directory} (keep {directory / 'ca.key'} secret)")
        typer.echo(f"next: agentnode ca issue --ca-dir {directory} --data-dir NODE_DIR")


@ca_app.command("issue", help="Issue a node certificate into NODE_DIR (creates the node key once; re-issuing keeps the id).")
def issue(
    ca_dir: Path = typer.Option(..., "--ca-dir", help="The cluster CA directory (from `ca init`)."),
    data_dir: Path = typer.Option(..., "--data-dir", "-d", help="The node's data directory."),
    hosts: list[str] = typer.Option([], "--host", help="Extra DNS name or IP for the certificate (repeatable)."),
    days: int = typer.Option(NODE_VALIDITY_DAYS_DEFAULT, "--days", help="Validity in days."),
    json: bool = JsonOption,
) -> None:
    try:
        node_id = issue_node_certificate(ca_dir, data_dir, validity_days=days, hosts=hosts)
        info = _describe(NodeIdentity.load(data_dir))
    except (IdentityError, OSError) as exc:
        fail(str(exc))
    if json:
        print_json(info)
    else:
        typer.echo(f"issued certificate for node {node_id} in {data_dir} (valid until {info['not_after']})")


def show_id(data_dir: Path | None = DataDirOption, json: bool = JsonOption) -> None:
    try:
        info = _describe(NodeIdentity.load(data_dir_or_default(data_dir)))
    except (IdentityError, OSError) as exc:
        fail(str(exc))
    if json:
        print_json(info)
    else:
        print_table(None, ["field", "value"], [(k, ", ".join(v) if isinstance(v, list) else v) for k, v in info.items()])


def _describe(identity: NodeIdentity) -> dict[str, Any]:
    cert = identity.certificate()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        "node_id": identity.node_id,
        "data_dir": str(identity.data_dir),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "issuer": cert.issuer.rfc4514_string(),
        "names": [str(n.value) for n in sans],
    }
