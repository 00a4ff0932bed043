"""``asyncexec azure prune``: list, then delete, the container groups a driver left."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(azure: argparse.ArgumentParser) -> None:
    """The ``azure`` command's arguments (their defaults from the usual AZURE_* variables)."""
    azure_commands = azure.add_subparsers(dest="azure_command", required=True)
    prune = azure_commands.add_parser(
        "prune",
        help="list the container groups asyncexec left whose TTL passed; --yes deletes them",
    )
    env = os.environ.get
    prune.add_argument("--subscription", default=env("AZURE_SUBSCRIPTION_ID"))
    prune.add_argument("--resource-group", default=env("AZURE_RESOURCE_GROUP"))
    prune.add_argument("--location", default=env("AZURE_LOCATION", ""))
    prune.add_argument("--all", dest="every", action="store_true", help="TTL or not")
    prune.add_argument("--yes", action="store_true", help="delete them (default: list only)")
    prune.add_argument(
        "--arm-endpoint", default=env("AZURE_ARM_ENDPOINT", "https://management.azure.com")
    )
    auth = prune.add_argument_group(
        "authentication",
        "a client secret (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET), "
        "else a managed identity (--managed-identity), else the Azure CLI",
    )
    auth.add_argument("--tenant", default=env("AZURE_TENANT_ID"))
    auth.add_argument("--client-id", default=env("AZURE_CLIENT_ID"))
    auth.add_argument(
        "--authority", default=env("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com")
    )
    auth.add_argument("--managed-identity", action="store_true")
    auth.add_argument("--imds-endpoint", default=None)


def azure(options: argparse.Namespace) -> int:
    """``asyncexec azure prune``."""
    import anyio

    from .. import LaunchError
    from ..launchers.azure import (
        ArmClient,
        AzureCliCredential,
        ClientSecretCredential,
        Credential,
        ManagedIdentityCredential,
        prune_groups,
    )

    if not options.subscription or not options.resource_group:
        print(
            "asyncexec: azure prune needs --subscription and --resource-group "
            "(or AZURE_SUBSCRIPTION_ID and AZURE_RESOURCE_GROUP)",
            file=sys.stderr,
        )
        return 2
    secret = os.environ.get("AZURE_CLIENT_SECRET")
    credential: Credential
    if options.managed_identity:
        kwargs = {"endpoint": options.imds_endpoint} if options.imds_endpoint else {}
        credential = ManagedIdentityCredential(client_id=options.client_id, **kwargs)
    elif options.tenant and options.client_id and secret:
        credential = ClientSecretCredential(
            options.tenant, options.client_id, secret, authority=options.authority
        )
    else:
        credential = AzureCliCredential()

    async def prune() -> list[str]:
        arm = ArmClient(
            credential,
            options.subscription,
            options.resource_group,
            options.location,
            endpoint=options.arm_endpoint,
        )
        try:
            found = await prune_groups(arm, every=options.every, delete=options.yes)
        finally:
            await arm.aclose()
        return [
            f"{g.name}  launcher {g.launcher or '?'}  created {g.created}  "
            f"expires {g.expires}  {g.state}"
            for g in found
        ]

    try:
        lines = anyio.run(prune)
    except (LaunchError, TimeoutError) as exc:
        print(f"asyncexec: {exc}", file=sys.stderr)
        return 1
    verb = "deleted" if options.yes else "would delete (run again with --yes)"
    print(f"{verb} {len(lines)} container group(s)" + "".join(f"\n  {line}" for line in lines))
    return 0
