"""Settings: explicit arguments over the environment over defaults, and every configuration error."""

from __future__ import annotations

import pytest

import lakebase
from lakebase import ConfigurationError, LakebaseError, Settings

EP = "projects/my-app/branches/production/endpoints/primary"

# What a Databricks App with a Lakebase resource gets (plus ENDPOINT_NAME from app.yaml).
APP_ENV = {
    "PGHOST": "ep-cool-name-123.database.us-west-2.cloud.databricks.com",
    "PGPORT": "5432",
    "PGDATABASE": "databricks_postgres",
    "PGUSER": "6b215d2b-f099-4bdb-900a-60837201ecec",
    "PGSSLMODE": "require",
    "PGAPPNAME": "notes-app",
    "DATABRICKS_HOST": "https://example.cloud.databricks.com",
    "DATABRICKS_CLIENT_ID": "6b215d2b-f099-4bdb-900a-60837201ecec",
    "DATABRICKS_CLIENT_SECRET": "dose0123456789abcdef",
    "ENDPOINT_NAME": EP,
}


def error(**kwargs: object) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as info:
        Settings(**kwargs)  # type: ignore[arg-type]
    return info.value


def test_a_databricks_app_environment_needs_no_arguments() -> None:
    s = Settings(env=APP_ENV)
    assert s.endpoint == EP and s.product == "autoscaling" and s.target_name == EP
    assert s.host == APP_ENV["PGHOST"]
    assert (s.port, s.database, s.sslmode) == (5432, "databricks_postgres", "require")
    assert s.user == APP_ENV["PGUSER"]
    assert s.application_name == "notes-app"
    assert (s.read_only, s.token_refresh, s.connect_deadline, s.connect_timeout, s.api_timeout) == (
        False, "ahead", 30.0, 10.0, 10.0)
    assert s.source("port") == "environment variable PGPORT"
    assert s.source("database") == "environment variable PGDATABASE"


def test_defaults_with_only_an_endpoint() -> None:
    s = Settings(env={"ENDPOINT_NAME": EP})
    assert (s.host, s.port, s.database, s.user) == (None, 5432, "databricks_postgres", None)
    assert s.sslmode == "require"
    assert s.application_name == "lakebase-python"
    assert s.source("port") == "default"


def test_the_os_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGENDPOINT", EP)
    monkeypatch.setenv("PGPORT", "6543")
    for name in ("ENDPOINT_NAME", "LAKEBASE_ENDPOINT", "LAKEBASE_INSTANCE_NAME"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.endpoint == EP and s.port == 6543


def test_explicit_arguments_win_over_the_environment() -> None:
    other = "projects/other/branches/dev/endpoints/replica-1"
    s = Settings(endpoint=other, host="h.example.com", port=6543, database="db", user="me@example.com",
                 sslmode="verify-full", application_name="x", read_only=True, token_refresh="lazy",
                 connect_deadline=5, connect_timeout="3", api_timeout=2.5, env=APP_ENV)
    assert (s.endpoint, s.host, s.port) == (other, "h.example.com", 6543)
    assert (s.database, s.user) == ("db", "me@example.com")
    assert (s.sslmode, s.application_name, s.read_only, s.token_refresh) == ("verify-full", "x", True, "lazy")
    assert (s.connect_deadline, s.connect_timeout, s.api_timeout) == (5.0, 3.0, 2.5)
    assert s.source("endpoint") == "argument endpoint"


@pytest.mark.parametrize("variable", ["ENDPOINT_NAME", "PGENDPOINT", "LAKEBASE_ENDPOINT"])
def test_the_endpoint_comes_from_any_of_its_variables(variable: str) -> None:
    s = Settings(env={variable: EP})
    assert s.endpoint == EP and s.source("endpoint") == f"environment variable {variable}"


def test_endpoint_variables_that_agree_are_fine_and_that_disagree_are_an_error() -> None:
    assert Settings(env={"ENDPOINT_NAME": EP, "PGENDPOINT": EP}).endpoint == EP
    err = error(env={"ENDPOINT_NAME": EP, "LAKEBASE_ENDPOINT": "projects/a/branches/b/endpoints/c"})
    assert "ENDPOINT_NAME=" in str(err) and "LAKEBASE_ENDPOINT=" in str(err) and "Fix:" in str(err)


def test_the_user_falls_back_to_the_service_principal_client_id() -> None:
    s = Settings(env={"ENDPOINT_NAME": EP, "DATABRICKS_CLIENT_ID": "abc-123"})
    assert s.user == "abc-123" and s.source("user") == "environment variable DATABRICKS_CLIENT_ID"
    s = Settings(env={"ENDPOINT_NAME": EP, "DATABRICKS_CLIENT_ID": "abc-123", "PGUSER": "me@example.com"})
    assert s.user == "me@example.com"


def test_a_provisioned_instance() -> None:
    s = Settings(env={"LAKEBASE_INSTANCE_NAME": "my-instance"})
    assert s.product == "provisioned" and s.instance_name == "my-instance" and s.endpoint is None
    assert s.target_name == "my-instance"
    assert Settings(instance_name="x", env={}).product == "provisioned"


def test_settings_are_immutable_hashable_and_replace_validates() -> None:
    s = Settings(env={"ENDPOINT_NAME": EP})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert hash(s) == hash(Settings(env={"ENDPOINT_NAME": EP})) and s == Settings(env={"ENDPOINT_NAME": EP})
    r = s.replace(read_only=True, port="6000")
    assert (r.read_only, r.port, r.endpoint) == (True, 6000, EP)
    assert r.source("endpoint") == "environment variable ENDPOINT_NAME"
    assert r.source("port") == "argument port"
    with pytest.raises(ConfigurationError, match="port='abc'"):
        s.replace(port="abc")


def test_configuration_errors_are_lakebase_errors_and_value_errors() -> None:
    err = error(env={})
    assert isinstance(err, LakebaseError) and isinstance(err, ValueError)
    assert lakebase.ConfigurationError is ConfigurationError


# ---- every configuration error names the variable, what was found and the fix --------------------
def test_no_endpoint_no_instance_and_no_host() -> None:
    err = error(env={"PGPORT": "5432"})
    text = str(err)
    assert "No Lakebase endpoint or instance is configured" in text
    for name in ("ENDPOINT_NAME", "PGENDPOINT", "LAKEBASE_ENDPOINT", "LAKEBASE_INSTANCE_NAME", "PGHOST"):
        assert name in text
    assert "Fix: set ENDPOINT_NAME=projects/<project>/branches/<branch>/endpoints/<endpoint>" in text
    assert err.setting == "endpoint" and err.fix


def test_a_host_alone_is_enough_its_endpoint_is_found_later() -> None:
    """A host copied from the UI: the endpoint that has it is looked up (tests/test_endpoints.py)."""
    s = Settings(env={"PGHOST": "ep-cool-name-123.database.us-west-2.cloud.databricks.com"})
    assert s.find_endpoint and s.endpoint is None and s.instance_name is None
    assert s.product == "autoscaling" and s.target_name == s.host
    assert not Settings(env=APP_ENV).find_endpoint


@pytest.mark.parametrize("value", ["ep-cool-name-123", "projects/p", "projects/p/branches/b/endpoints/",
                                   "projects/P/branches/b/endpoints/e", "https://x/projects/p/branches/b/endpoints/e",
                                   "projects/p/branches/b/endpoints/e/extra"])
def test_a_malformed_endpoint_name(value: str) -> None:
    err = error(env={"ENDPOINT_NAME": value})
    text = str(err)
    assert f"ENDPOINT_NAME={value!r} is not a Lakebase endpoint name" in text
    assert "projects/<project>/branches/<branch>/endpoints/<endpoint>" in text
    assert "Fix: copy the endpoint's `name` from `databricks postgres list-endpoints" in text
    assert err.setting == "ENDPOINT_NAME" and err.value == value


def test_a_malformed_endpoint_argument_names_the_argument() -> None:
    err = error(endpoint="ep-123", env={})
    assert "endpoint='ep-123' is not a Lakebase endpoint name (it looks like an endpoint id" in str(err)


def test_both_an_endpoint_and_an_instance() -> None:
    err = error(env={"ENDPOINT_NAME": EP, "LAKEBASE_INSTANCE_NAME": "inst"})
    assert "environment variable ENDPOINT_NAME" in str(err) and "LAKEBASE_INSTANCE_NAME='inst'" in str(err)
    assert "Fix: keep only one of them." in str(err)


def test_a_bad_instance_name() -> None:
    err = error(env={"LAKEBASE_INSTANCE_NAME": "a/b"})
    assert "LAKEBASE_INSTANCE_NAME='a/b' is not a Lakebase Provisioned instance name" in str(err)
    assert "databricks database list-database-instances" in str(err)


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "54.32"])
def test_a_bad_port(value: str) -> None:
    err = error(env={"ENDPOINT_NAME": EP, "PGPORT": value})
    assert str(err) == (f"PGPORT={value!r} is not a port number (expected an integer between 1 and 65535). "
                        "Fix: set PGPORT=5432 (the Lakebase port) or unset it.")
    assert (err.setting, err.value) == ("PGPORT", value)


@pytest.mark.parametrize("mode", ["disable", "allow", "prefer"])
def test_sslmode_without_tls_is_refused(mode: str) -> None:
    err = error(env={"ENDPOINT_NAME": EP, "PGSSLMODE": mode})
    text = str(err)
    assert text.startswith(f"PGSSLMODE={mode!r}: Lakebase requires TLS")
    assert "Fix: set PGSSLMODE=require" in text


def test_an_unknown_sslmode() -> None:
    err = error(sslmode="sometimes", env={"ENDPOINT_NAME": EP})
    assert "sslmode='sometimes' is not an sslmode Lakebase accepts" in str(err)
    assert "require, verify-ca, verify-full" in str(err)


def test_verify_modes_are_accepted() -> None:
    assert Settings(env={"ENDPOINT_NAME": EP, "PGSSLMODE": "VERIFY-FULL"}).sslmode == "verify-full"


def test_a_host_with_a_scheme() -> None:
    err = error(env={"ENDPOINT_NAME": EP, "PGHOST": "https://ep-x.database.cloud.databricks.com"})
    assert "PGHOST='https://ep-x.database.cloud.databricks.com' is not a hostname" in str(err)
    assert "Fix: use the bare endpoint hostname" in str(err)


@pytest.mark.parametrize(("variable", "value"), [
    ("LAKEBASE_CONNECT_DEADLINE", "soon"), ("LAKEBASE_CONNECT_DEADLINE", "-1"),
    ("PGCONNECT_TIMEOUT", "0"), ("LAKEBASE_API_TIMEOUT", "ten"),
])
def test_bad_durations(variable: str, value: str) -> None:
    err = error(env={"ENDPOINT_NAME": EP, variable: value})
    assert f"{variable}={value!r} is not a positive number of seconds" in str(err) and "Fix:" in str(err)


def test_a_bad_refresh_strategy() -> None:
    err = error(env={"ENDPOINT_NAME": EP, "LAKEBASE_TOKEN_REFRESH": "eager"})
    assert "LAKEBASE_TOKEN_REFRESH='eager' is not a token refresh strategy" in str(err)
    assert "'lazy' (no background thread" in str(err)


def test_a_bad_boolean() -> None:
    err = error(env={"ENDPOINT_NAME": EP, "LAKEBASE_READ_ONLY": "maybe"})
    assert "LAKEBASE_READ_ONLY='maybe' is not a boolean" in str(err)
    assert Settings(env={"ENDPOINT_NAME": EP, "LAKEBASE_READ_ONLY": "yes"}).read_only is True


def test_an_empty_explicit_database() -> None:
    err = error(database=" ", env={"ENDPOINT_NAME": EP})
    assert "database is empty" in str(err) and "databricks_postgres" in str(err)


def test_empty_environment_variables_count_as_unset() -> None:
    s = Settings(env={"ENDPOINT_NAME": EP, "PGPORT": "", "PGDATABASE": " ", "PGHOST": ""})
    assert (s.port, s.database, s.host) == (5432, "databricks_postgres", None)


def test_the_shared_connector_registry_is_bounded() -> None:
    """An app that builds a WorkspaceClient per request must not grow the registry without end."""
    from lakebase import connector

    connector.reset()
    settings = Settings(env={}, endpoint="projects/p/branches/production/endpoints/primary", host="localhost",
                        user="someone@example.com")
    clients = [object() for _ in range(connector.MAX_SHARED_CONNECTORS + 10)]
    try:
        first = connector.get_connector(settings, clients[0])
        assert connector.get_connector(settings, clients[0]) is first  # shared while registered
        for client in clients[1:]:
            connector.get_connector(settings, client)
        assert len(connector._connectors) == connector.MAX_SHARED_CONNECTORS
        assert connector.get_connector(settings, clients[0]) is not first  # the oldest was evicted
        assert connector.get_connector(settings, clients[-1]) is connector.get_connector(settings, clients[-1])
    finally:
        connector.reset()
