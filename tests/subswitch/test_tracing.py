"""When tracing is on: only when OpenTelemetry's own variables say so."""

from __future__ import annotations

import pytest

from subswitch.errors import ConfigurationError
from subswitch.settings import ProcessSettings, Settings
from subswitch.tracing import configure_tracing, exporter_names

OTEL = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED")


@pytest.fixture(autouse=True)
def no_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*OTEL, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_tracing_is_off_without_otel_variables() -> None:
    # Given no OTEL_* variables / Then no exporter, and configure_tracing does nothing
    assert exporter_names(ProcessSettings()) == []
    assert configure_tracing(ProcessSettings()) is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, OTLP"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_otel_variables_choose_the_exporters(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: list[str]
) -> None:
    # Given OpenTelemetry's variables / When read / Then the exporters they ask for
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert exporter_names(ProcessSettings()) == expected


def test_an_unknown_exporter_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an exporter subswitch does not ship / Then one error naming it and the choices
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigurationError, match="zipkin; use otlp, console or none"):
        exporter_names(ProcessSettings())


def test_an_endpoint_password_is_masked_in_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an OTLP endpoint with credentials / When the settings are shown / Then masked
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://svc:s3cret@collector:4318")
    shown = repr(Settings())
    assert "s3cret" not in shown
    assert "https://svc:***@collector:4318" in shown
