"""Run a command while the loopback Azure serves: what ``nox -s docs`` runs docs/azure.md's
example against (Azure Resource Manager has no emulator).

    python -m tests.fakeazure IMAGE -- COMMAND...

Serves the fake ARM (groups run from IMAGE, which needs no Python on the PATH:
the example is told this interpreter's path) beside the Azurite that
``scripts/azure-up.sh`` started (on ``ASYNCEXEC_AZURITE_PORT``, 10000), writes
where they are to a JSON file named by ``ASYNCEXEC_AZURE_JSON`` in COMMAND's
environment, runs COMMAND, and exits with its status once every container group
is gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from asyncexec.launchers.azure import _blob

from . import FakeAzure


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m tests.fakeazure IMAGE -- COMMAND...\n")
        return 2
    image, command = argv[0], argv[2:]
    port = os.environ.get("ASYNCEXEC_AZURITE_PORT", "10000")
    storage_endpoint = f"http://127.0.0.1:{port}/{_blob.AZURITE_ACCOUNT}"
    with tempfile.TemporaryDirectory(prefix="asyncexec-azure-") as directory:
        described = os.path.join(directory, "azure.json")
        with FakeAzure() as fake:
            endpoints = {
                "subscription_id": fake.subscription_id,
                "resource_group": fake.resource_group,
                "location": fake.location,
                "arm_endpoint": fake.url,
                "authority": fake.authority,
                "tenant_id": fake.tenant_id,
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "storage_account": _blob.AZURITE_ACCOUNT,
                "storage_key": _blob.AZURITE_KEY,
                "storage_endpoint": storage_endpoint,
                "image": image,
                "python": os.path.realpath(sys.executable),
            }
            with open(described, "w") as file:
                json.dump(endpoints, file)
            os.chmod(described, 0o600)
            env = {**os.environ, "ASYNCEXEC_AZURE_JSON": described}
            status = subprocess.run(command, env=env).returncode
            if fake.groups or fake.invalid:
                sys.stderr.write(f"left: {sorted(fake.groups)}; invalid: {fake.invalid}\n")
                status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
