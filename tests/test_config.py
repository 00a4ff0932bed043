"""Executors from configuration: to_dict/from_dict for every executor, TOML profiles,
errors naming the file, the table and the key, and which source wins.

Nothing here opens an executor: making one checks its arguments and reaches
nothing (the CLI runs them on every backend in test_cli_backends.py).
"""

from __future__ import annotations

import base64
import json
import os
import stat
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import asyncexec
from asyncexec import (
    BaseExecutor,
    ConfigError,
    DockerExecutor,
    LocalShell,
    ProcessExecutor,
    Resources,
    SlurmConfig,
    SlurmExecutor,
    SSHExecutor,
    SSHShell,
    TaskOptions,
    ThreadExecutor,
)
from asyncexec.config import (
    EXECUTOR_FILE,
    executor_of,
    from_dict,
    load_config,
    load_profile,
    parse_host,
    resolve,
    save_config,
    to_dict,
)
from asyncexec.launchers.azure import (
    AzureCliCredential,
    AzureConfig,
    AzureExecutor,
    AzureLauncher,
    ClientSecretCredential,
    ManagedIdentityCredential,
)
from asyncexec.launchers.docker import DockerLauncher
from asyncexec.launchers.ssh import SSHLauncher

#: A storage key as Azure gives them (any base64 will do: nothing is signed here).
STORAGE_KEY = base64.b64encode(b"k" * 64).decode()


def setup_worker() -> None:
    """An initializer with an importable name (tests.test_config:setup_worker)."""


def _local_exception() -> type[Exception]:
    class Local(Exception):
        pass

    return Local


_Local = _local_exception()


class _Subclass(ProcessExecutor):
    pass


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables the Azure configurations name (never their values)."""
    monkeypatch.setenv("AE_TEST_CLIENT_SECRET", "a-client-secret-never-written")
    monkeypatch.setenv("AE_TEST_STORAGE_KEY", STORAGE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_KEY", STORAGE_KEY)
    for variable in ("ASYNCEXEC_PROFILE", "ASYNCEXEC_CONFIG", *asyncexec.config.ENVIRONMENT):
        monkeypatch.delenv(variable, raising=False)


def host(name: str = "login.example.org", **changes: Any) -> SSHShell:
    options = {"client_keys": ["/keys/id_ed25519"], "known_hosts": "/keys/known_hosts"}
    return SSHShell(name, **{"port": 2222, "username": "me", "connect_options": options, **changes})


def azure_config(**changes: Any) -> AzureConfig:
    settings: dict[str, Any] = {
        "subscription_id": "sub",
        "resource_group": "rg",
        "location": "westeurope",
        "storage_account": "account",
        **changes,
    }
    return AzureConfig(**settings)


AZURE_SECRET_TABLE = {
    "backend": "azure",
    "subscription_id": "sub",
    "resource_group": "rg",
    "location": "westeurope",
    "storage_account": "account",
    "credential": {
        "type": "client_secret",
        "tenant_id": "tenant",
        "client_id": "client",
        "client_secret": {"env": "AE_TEST_CLIENT_SECRET"},
        "authority": "http://127.0.0.1:1",
    },
    "storage_key": {"env": "AE_TEST_STORAGE_KEY"},
    "chunk_size": 5,
}

#: One executor per backend and form, each with arguments away from their defaults.
EXECUTORS: dict[str, Callable[[], BaseExecutor]] = {
    "thread": lambda: ThreadExecutor(3, max_pending=10),
    "process": lambda: ProcessExecutor(
        2,
        max_tasks_per_worker=5,
        initializer=setup_worker,
        env={"A": "1"},
        eager=False,
        prefetch=0,
        options=TaskOptions(
            time_limit=30,
            retries=2,
            retry_on=(OSError, TimeoutError),
            capture_output=True,
            env={"B": "2"},
            resources=Resources(cpus=1, memory_mb=512),
            tags={"team": "x"},
        ),
    ),
    "docker": lambda: DockerExecutor(
        "python:3.13-slim",
        4,
        mode="warm",
        cpus=1.5,
        memory_mb=2048,
        network="bridge",
        read_only=True,
        env={"C": "3"},
        volumes={"/data": "/mnt/data"},
        labels={"team": "x"},
        startup_timeout=30,
        initializer=setup_worker,
    ),
    "docker, configured launcher": lambda: DockerExecutor(
        launcher=DockerLauncher("python:3.13-slim", 2, volumes=["/data:/mnt/data:ro"]),
        max_pending=5,
    ),
    "ssh": lambda: SSHExecutor(
        [host(), SSHShell("10.0.0.2", verify_host_key=False, env={"D": "4"}, cwd="/scratch")],
        slots=2,
        python="/opt/venv/bin/python",
        prefetch=1,
    ),
    "ssh, configured launcher": lambda: SSHExecutor(
        launcher=SSHLauncher([host(max_connections=2)], slots=3, eager=True)
    ),
    "slurm over ssh": lambda: SlurmExecutor(
        host(),
        SlurmConfig(
            partition="debug",
            time="1:00:00",
            cpus=2,
            memory="4G",
            chunk_size=10,
            modules=["gcc"],
            venv="/shared/venv",
            setup=["export X=1"],
            extra_sbatch=["--exclusive"],
            max_concurrent=50,
            poll_interval=0.5,
        ),
        200,
        staging_dir="/shared/asyncexec",
        keep_staging=True,
    ),
    "slurm on the login node": lambda: SlurmExecutor(LocalShell(cwd="/scratch")),
    "azure, cli": lambda: AzureExecutor(
        AzureLauncher(
            azure_config(chunk_size=20, create_quota=((50, 300.0),), file_shares={"s": "/mnt/s"}),
            AzureCliCredential(),
        ),
        100,
    ),
    "azure, managed identity": lambda: AzureExecutor(
        AzureLauncher(azure_config(), ManagedIdentityCredential(client_id="id"), batch_window=0.5)
    ),
    "azure, client secret": lambda: from_dict(AZURE_SECRET_TABLE),
}


def plain(value: object) -> bool:
    """Whether ``value`` is what JSON and TOML both hold (no None, no tuple)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(item) for item in value)
    return isinstance(value, str | int | float | bool)


@pytest.mark.parametrize("make", EXECUTORS.values(), ids=EXECUTORS.keys())
def test_every_executor_round_trips_exactly(make: Callable[[], BaseExecutor]) -> None:
    executor = make()
    written = executor.to_dict()
    assert written == to_dict(executor)
    assert plain(written), written
    again = from_dict(json.loads(json.dumps(written)))
    assert type(again) is type(executor)
    assert again.to_dict() == written
    assert BaseExecutor.from_dict(written).to_dict() == written
    assert type(executor).from_dict(written).to_dict() == written
    assert again.n_workers == executor.n_workers


def test_what_is_written() -> None:
    """The keys are the constructors' (SlurmConfig's in the same table), at their
    default left out; a callable is a reference; the host keeps its paths."""
    written = EXECUTORS["slurm over ssh"]().to_dict()
    assert written == {
        "backend": "slurm",
        "host": {
            "host": "login.example.org",
            "port": 2222,
            "username": "me",
            "client_keys": ["/keys/id_ed25519"],
            "known_hosts": "/keys/known_hosts",
        },
        "n_workers": 200,
        "staging_dir": "/shared/asyncexec",
        "keep_staging": True,
        "partition": "debug",
        "time": "1:00:00",
        "cpus": 2,
        "memory": "4G",
        "max_concurrent": 50,
        "chunk_size": 10,
        "modules": ["gcc"],
        "venv": "/shared/venv",
        "setup_lines": ["export X=1"],
        "extra_sbatch": ["--exclusive"],
        "poll_interval": 0.5,
    }
    process = EXECUTORS["process"]().to_dict()
    assert process["initializer"] == "tests.test_config:setup_worker"
    assert process["options"]["retry_on"] == ["builtins:OSError", "builtins:TimeoutError"]
    assert process["options"]["resources"] == {"cpus": 1.0, "memory_mb": 512}
    assert ThreadExecutor(2).to_dict() == {"backend": "thread", "n_workers": 2}


def test_the_executor_made_is_configured_as_written() -> None:
    made = from_dict(EXECUTORS["slurm over ssh"]().to_dict())
    assert isinstance(made, SlurmExecutor)
    assert made.slurm.config == EXECUTORS["slurm over ssh"]().slurm.config  # type: ignore[attr-defined]
    shell = made.slurm.shell
    assert isinstance(shell, SSHShell) and shell.place == ("ssh", "login.example.org", 2222, "me")
    ssh = from_dict({"backend": "ssh", "hosts": ["me@a:2200", {"host": "b"}], "slots": 2})
    assert isinstance(ssh, SSHExecutor) and ssh.n_workers == 4
    assert [shell.place for shell in ssh.ssh.shells] == [
        ("ssh", "a", 2200, "me"),
        ("ssh", "b", 22, None),
    ]


def test_secrets_are_written_as_references_only() -> None:
    written = EXECUTORS["azure, client secret"]().to_dict()
    assert written["credential"]["client_secret"] == {"env": "AE_TEST_CLIENT_SECRET"}
    assert written["storage_key"] == {"env": "AE_TEST_STORAGE_KEY"}
    text = json.dumps(written)
    assert "a-client-secret-never-written" not in text and STORAGE_KEY not in text
    assert EXECUTORS["azure, cli"]().to_dict()["credential"] == "cli"
    assert "storage_key" not in EXECUTORS["azure, cli"]().to_dict()  # AZURE_STORAGE_KEY


@pytest.mark.parametrize(
    ("make", "key", "words"),
    [
        (lambda: ProcessExecutor(1, initializer=lambda: None), "initializer", "lambda"),
        (
            lambda: ProcessExecutor(1, options=TaskOptions(retry_on=(KeyError, _Local))),
            "options.retry_on[1]",
            "inside another one",
        ),
        (
            lambda: AzureExecutor(
                AzureLauncher(azure_config(), ClientSecretCredential("t", "c", "s3cret"))
            ),
            "credential.client_secret",
            "secrets are never written",
        ),
        (
            lambda: AzureExecutor(
                AzureLauncher(azure_config(), AzureCliCredential(), storage_key=STORAGE_KEY)
            ),
            "storage_key",
            "secrets are never written",
        ),
        (
            lambda: SSHExecutor([SSHShell("h", connect_options={"password": "x"})]),
            "hosts[0].connect_options",
            "never a password",
        ),
        (lambda: SSHExecutor([LocalShell()]), "hosts[0]", "only SSHShell"),
        (lambda: _Subclass(1), None, "not their subclasses"),
    ],
    ids=["lambda", "nested class", "client secret", "storage key", "password", "shell", "subclass"],
)
def test_what_cannot_be_written_is_refused_clearly(
    make: Callable[[], BaseExecutor], key: str | None, words: str
) -> None:
    executor = make()
    with pytest.raises(ConfigError, match=words) as refused:
        executor.to_dict()
    assert refused.value.key == key
    assert isinstance(refused.value, ValueError)


def test_from_dict_on_a_class_makes_that_class_only() -> None:
    assert isinstance(ThreadExecutor.from_dict({"backend": "thread"}), ThreadExecutor)
    with pytest.raises(TypeError, match="makes a ThreadExecutor"):
        ProcessExecutor.from_dict({"backend": "thread"})


def test_every_constructor_parameter_is_a_key() -> None:
    """A parameter added to an executor (or SlurmConfig, AzureConfig, SSHShell...) is
    a key of its backend's table, or this fails: its annotation needs a kind."""
    from asyncexec.config._backends import BACKENDS, backend_named

    for name in BACKENDS:
        backend = backend_named(name)
        unheld = [key for key, field in backend.fields.items() if field.kind is None]
        assert not unheld, f"backend {name}: {unheld}"


# -- bad configurations ----------------------------------------------------------------


def write(directory: Path, text: str, name: str = "asyncexec.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("profile", "key", "words"),
    [
        ('backend = "slurm"\npartion = "debug"', "partion", "did you mean 'partition'"),
        ('backend = "slurm"\npartition = 3', "partition", "expected a string, got 3"),
        ('backend = "slurm"\npartition = "two words"', "partition", "must be one word"),
        (
            'backend = "slurm"\npoll_interval = 5.0\nmax_poll_interval = 1.0',
            "poll_interval, max_poll_interval",
            "poll_interval <= max_poll_interval",
        ),
        ('backend = "slurm"\nhost = { host = "h", port = "22" }', "host.port", "an integer"),
        ('backend = "slurm"\nhost = "a@b@c:x"', "host", "user@host:port"),
        ('backend = "ssh"\nhosts = []', "hosts", "a list of hosts"),
        ('backend = "ssh"\nhosts = ["h"]\nn_workers = 2', "n_workers", "slots"),
        ('backend = "slurm"\nsetup = ["module load x"]', "setup", "setup_lines"),
        ('backend = "slurm"\nsetup_lines = ["a\\nb"]', "setup_lines", "one line"),
        ('backend = "process"\noptions = { retries = -1 }', "options.retries", "retries"),
        (
            'backend = "process"\noptions = { resources = { gpu = 1 } }',
            "options.resources.gpu",
            "did you mean 'gpus'",
        ),
        ('backend = "process"\ninitializer = "os:no_such"', "initializer", "os has no"),
        ('backend = "process"\ninitializer = "no_such_module:f"', "initializer", "cannot import"),
        ('backend = "docker"\nn_workers = 2', "image", "missing"),
        ('backend = "docker"\nimage = "x"\nmode = "hot"', "mode", "'oneshot' or 'warm'"),
        ('backend = "kubernetes"', "backend", "unknown backend"),
        ('backend = "slurmm"', "backend", "did you mean 'slurm'"),
        ("n_workers = 2", "backend", "missing"),
        (
            'backend = "azure"\nsubscription_id = "s"\nresource_group = "r"\nlocation = "l"\n'
            'storage_account = "a"\ncredential = "cli"\ncpu = 8',
            "cpu",
            "cpu must be in",
        ),
        (
            'backend = "azure"\nsubscription_id = "s"\nresource_group = "r"\nlocation = "l"\n'
            'storage_account = "a"\ncredential = "password"',
            "credential",
            "client_secret",
        ),
        (
            'backend = "azure"\nsubscription_id = "s"\nresource_group = "r"\nlocation = "l"\n'
            'storage_account = "a"\ncredential = "cli"\nstorage_key = "in-the-clear"',
            "storage_key",
            "never written",
        ),
        (
            'backend = "azure"\nsubscription_id = "s"\nresource_group = "r"\nlocation = "l"\n'
            'storage_account = "a"\ncredential = "cli"\nstorage_key = { env = "AE_NOT_SET" }',
            "storage_key",
            "AE_NOT_SET is not set",
        ),
    ],
)
def test_a_bad_profile_is_an_error_naming_file_table_and_key(
    tmp_path: Path, profile: str, key: str, words: str
) -> None:
    path = write(tmp_path, f"[profile.cluster]\n{profile}\n")
    loads: list[Callable[[], object]] = [
        lambda: load_profile("cluster", path=path),
        lambda: resolve(profile="cluster", path=path, environ={}),
    ]
    for load in loads:
        with pytest.raises(ConfigError) as failed:
            load()
        error = failed.value
        assert (error.source, error.table, error.key) == (str(path), "profile.cluster", key)
        assert str(error).startswith(f"{path}, [profile.cluster], key {key!r}: "), error
        assert words in str(error)


def test_errors_in_pyproject_name_its_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [project]
        name = "mine"

        [tool.asyncexec.profile.local]
        backend = "process"
        n_workers = "four"
        """,
        "pyproject.toml",
    )
    with pytest.raises(ConfigError) as failed:
        load_profile("local", path=path)
    assert (failed.value.table, failed.value.key) == ("tool.asyncexec.profile.local", "n_workers")
    assert "expected an integer, got 'four'" in str(failed.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[profile.a\nbackend = 1", "not valid TOML"),
        ('[profiles.a]\nbackend = "process"', "key 'profiles': unknown key"),
        ('[profile.a]\nbackend = "process"', r"no profile 'cluster' \(profiles: a\)"),
        ("profile = 3", "key 'profile': expected tables"),
    ],
)
def test_a_bad_file_is_an_error_naming_it(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=words) as failed:
        load_profile("cluster", path=path)
    assert failed.value.source == str(path)


def test_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError) as failed:
        from_dict({"backend": "thread", "workers": 2}, source="x.json", table="t")
    assert str(failed.value) == (
        "x.json, [t], key 'workers': unknown key for backend thread (did you mean 'n_workers'?)"
    )
    with pytest.raises(ConfigError, match=r"^<dict>: expected a table"):
        from_dict([("backend", "thread")])  # type: ignore[arg-type]


# -- profiles and precedence --------------------------------------------------------------

PROFILES = """
[profile.default]
backend = "thread"
n_workers = 2

[profile.cluster]
backend = "slurm"
partition = "debug"
time = "10"
chunk_size = 4
host = { host = "login.example.org", username = "me", client_keys = ["/k"] }
options = { retries = 1, time_limit = 60 }
"""


def test_profiles_are_found_from_the_working_directory_upwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, PROFILES)
    below = tmp_path / "a" / "b"
    below.mkdir(parents=True)
    monkeypatch.chdir(below)
    assert load_profile("cluster")["partition"] == "debug"
    assert load_profile() == {"backend": "thread", "n_workers": 2}  # the default profile
    assert resolve(environ={}) == {"backend": "thread", "n_workers": 2}
    # asyncexec.toml first; pyproject.toml only with a [tool.asyncexec] table.
    write(below, '[project]\nname = "x"\n', "pyproject.toml")
    assert load_profile("cluster")["partition"] == "debug"
    write(below, '[tool.asyncexec.profile.cluster]\nbackend = "process"\n', "pyproject.toml")
    assert load_profile("cluster") == {"backend": "process"}
    assert load_profile() == {}  # no default profile there


def test_no_file_means_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_profile() == {}
    assert resolve(environ={}) == {"backend": "process", "n_workers": os.cpu_count()}
    with pytest.raises(ConfigError, match=r"no profile 'cluster': no asyncexec\.toml"):
        resolve(profile="cluster", environ={})


def test_flags_over_environment_over_file_over_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, PROFILES)
    file_only = resolve(profile="cluster", environ={})
    assert file_only["partition"] == "debug" and file_only["time"] == "10"
    assert file_only["n_workers"] == 1000  # SlurmExecutor's default
    environ = {"ASYNCEXEC_PARTITION": "short", "ASYNCEXEC_WORKERS": "50", "ASYNCEXEC_TIME": "20"}
    over_file = resolve(profile="cluster", environ=environ)
    assert [over_file[key] for key in ("partition", "n_workers", "time")] == ["short", 50, "20"]
    flags = {"partition": "long", "options": {"time_limit": 5}, "host": {"port": 2200}}
    over_all = resolve(flags, profile="cluster", environ=environ)
    assert [over_all[key] for key in ("partition", "n_workers", "time")] == ["long", 50, "20"]
    # Tables merge key by key.
    assert over_all["options"] == {"time_limit": 5.0, "retries": 1}
    assert over_all["host"] == {
        "host": "login.example.org",
        "port": 2200,
        "username": "me",
        "client_keys": ["/k"],
    }
    # The profile by its variable, the file by its own.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    named = {"ASYNCEXEC_PROFILE": "cluster", "ASYNCEXEC_CONFIG": str(tmp_path / "asyncexec.toml")}
    assert resolve(environ=named) == file_only


def test_a_backend_chosen_above_leaves_out_the_lower_sources_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, PROFILES)
    # The default profile is for threads: asking for processes leaves it out...
    assert resolve({"backend": "process", "n_workers": 3}, environ={}) == {
        "backend": "process",
        "n_workers": 3,
    }
    # ...and a variable of a key the backend lacks is left alone (the environment is ambient).
    assert resolve({"backend": "thread"}, environ={"ASYNCEXEC_IMAGE": "x"})["n_workers"] == 2
    # A profile named on purpose for another backend is a mistake, said as one.
    with pytest.raises(ConfigError, match="profile 'cluster' is for backend slurm") as failed:
        resolve({"backend": "process"}, profile="cluster", environ={})
    assert failed.value.table == "profile.cluster"
    # A flag the backend does not have is a mistake too.
    with pytest.raises(ConfigError, match="key 'image': unknown key for backend thread"):
        resolve({"image": "x"}, environ={})
    with pytest.raises(ConfigError, match="backend thread has no SSH host"):
        resolve({"host": "h"}, environ={})


def test_a_bad_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as failed:
        resolve(environ={"ASYNCEXEC_WORKERS": "many"})
    assert failed.value.source == "environment variable ASYNCEXEC_WORKERS"
    assert "expected an integer, got 'many'" in str(failed.value)
    with pytest.raises(ConfigError, match="environment variable ASYNCEXEC_BACKEND"):
        resolve(environ={"ASYNCEXEC_BACKEND": "kubernetes"})


def test_hosts_from_flags_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    environ = {"ASYNCEXEC_BACKEND": "ssh", "ASYNCEXEC_HOST": "me@a:2200, b"}
    assert resolve(environ=environ)["hosts"] == [
        {"host": "a", "port": 2200, "username": "me"},
        {"host": "b"},
    ]
    flags = {"host": [parse_host("c", source="--host")], "slots": 2}
    assert resolve(flags, environ=environ)["hosts"] == [{"host": "c"}]
    slurm = resolve({"backend": "slurm", "host": ["me@login"]}, environ={})
    assert slurm["host"] == {"host": "login", "username": "me"}
    with pytest.raises(ConfigError, match="one host, got 2"):
        resolve({"backend": "slurm", "host": ["a", "b"]}, environ={})


def test_a_recorded_configuration_is_the_base_of_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run --continue``: what DIR/executor.json recorded, flags over it; the default
    profile is not read (it was when the experiment started), a named one is."""
    monkeypatch.chdir(tmp_path)
    write(tmp_path, PROFILES)
    recorded = resolve(profile="cluster", environ={})
    again = resolve(base=recorded, environ={})
    assert again == recorded
    assert resolve({"n_workers": 7}, base=recorded, environ={})["n_workers"] == 7
    # The recorded slurm table is left out, and the default profile is not read.
    assert resolve({"backend": "thread"}, base=recorded, environ={}) == {
        "backend": "thread",
        "n_workers": ThreadExecutor().n_workers,
    }
    with pytest.raises(ConfigError) as failed:
        resolve({"partition": 3}, base=recorded, base_source="DIR/executor.json", environ={})
    assert failed.value.source == "the command line"
    with pytest.raises(ConfigError) as failed:
        resolve(base={**recorded, "time": "soon"}, base_source="DIR/executor.json", environ={})
    assert (failed.value.source, failed.value.key) == ("DIR/executor.json", "time")


def test_the_experiment_directory_records_its_executor(tmp_path: Path) -> None:
    config = EXECUTORS["ssh"]().to_dict()
    assert load_config(tmp_path) is None
    with pytest.raises(ConfigError, match="not run by `asyncexec run`"):
        executor_of(tmp_path)
    path = save_config(tmp_path, config)
    assert path == str(tmp_path / EXECUTOR_FILE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_config(tmp_path) == config
    made = executor_of(tmp_path)
    assert isinstance(made, SSHExecutor) and made.to_dict() == config
    Path(path).write_text('{"backend": "ssh", "hosts": []}')
    with pytest.raises(ConfigError) as failed:
        executor_of(tmp_path)
    assert (failed.value.source, failed.value.key) == (path, "hosts")
    Path(path).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_config(tmp_path)
