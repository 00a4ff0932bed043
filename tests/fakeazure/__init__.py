"""A loopback Azure for the tests: ARM (container groups as real Docker containers),
the identity platform's token endpoint and IMDS. Part of the test suite, not of asyncexec.

    with FakeAzure(time_scale=0.01) as fake:
        token = fake.issue_token()   # or POST {fake.authority}/{fake.tenant_id}/oauth2/v2.0/token
        httpx.put(f"{fake.url}{fake.group_path}/g1?api-version=2025-09-01", json=body,
                  headers={"Authorization": f"Bearer {token}"})
        ...
        assert not fake.invalid
    assert not fake.docker_leftovers()
"""

from __future__ import annotations

from ._server import (
    LABEL as LABEL,
)
from ._server import (
    SCOPE as SCOPE,
)
from ._server import (
    FakeAzure as FakeAzure,
)
from ._server import (
    FakeContainer as FakeContainer,
)
from ._server import (
    FakeGroup as FakeGroup,
)
from ._server import (
    Faults as Faults,
)
from ._server import (
    Request as Request,
)
from ._spec import API_VERSION as API_VERSION
from ._spec import Spec as Spec
from ._spec import SpecMissing as SpecMissing
from ._spec import load_spec as load_spec

__all__ = [
    "API_VERSION",
    "LABEL",
    "SCOPE",
    "FakeAzure",
    "FakeContainer",
    "FakeGroup",
    "Faults",
    "Request",
    "Spec",
    "SpecMissing",
    "load_spec",
]
