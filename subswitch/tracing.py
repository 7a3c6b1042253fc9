"""OpenTelemetry traces, optional: ``pip install 'subswitch[otel]'``.

Off unless OpenTelemetry's own variables turn it on: ``OTEL_TRACES_EXPORTER``
(``otlp``, ``console``, comma-separated; ``none`` is off) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``), and never
with ``OTEL_SDK_DISABLED=true``. The SDK reads every other ``OTEL_*`` variable itself
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, the OTLP headers, the sampler).

When on, Celery's and httpx's instrumentations make one trace per command: the
producer's send (``apply_async/subswitch.apply``, the context travels in the message
headers), the worker's run of it (``run/subswitch.apply``) and, inside it, each call
to the upstream (an HTTP client span). OTLP goes over HTTP/protobuf (the exporter the
extra installs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from subswitch.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from subswitch.settings import ProcessSettings

logger = logging.getLogger(__name__)

EXPORTERS: Final = ("otlp", "console")
#: The service name unless ``OTEL_SERVICE_NAME`` (or the resource attributes) says another.
SERVICE_NAME: Final = "subswitch"
_EXTRA_HINT: Final = "pip install 'subswitch[otel]'"


def exporter_names(settings: ProcessSettings) -> list[str]:
    """The exporters the ``OTEL_*`` variables ask for; empty means tracing is off.

    Raises:
        ConfigurationError: an exporter subswitch does not ship.
    """
    if settings.otel_sdk_disabled:
        return []
    raw = settings.otel_traces_exporter
    names = [name.strip().lower() for name in (raw or "").split(",") if name.strip()]
    if not names:
        return ["otlp"] if settings.otel_exporter_otlp_endpoint else []
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in EXPORTERS]
    if unknown:
        raise ConfigurationError(
            f"OTEL_TRACES_EXPORTER: unknown exporter(s) {', '.join(unknown)}; "
            f"use {', '.join(EXPORTERS)} or none"
        )
    return names


@dataclass
class Tracing:
    """Tracing as set up in this process; :meth:`shutdown` flushes and takes it out."""

    provider: Any
    instrumentors: list[Any] = field(default_factory=list)

    def shutdown(self) -> None:
        """Remove the instrumentations and flush the spans still buffered."""
        for instrumentor in self.instrumentors:
            instrumentor.uninstrument()
        self.provider.shutdown()


def configure_tracing(
    settings: ProcessSettings,
    *,
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> Tracing | None:
    """Trace Celery sends and runs and httpx calls, when the settings ask for it.

    ``exporter`` (tests: an in-memory one) turns tracing on whatever the variables
    say, with spans exported as they end. Without the ``otel`` extra installed, a
    request for traces logs one warning and tracing stays off.

    Raises:
        ConfigurationError: an unknown ``OTEL_TRACES_EXPORTER``.
    """
    names = [] if exporter is not None else exporter_names(settings)
    if exporter is None and not names:
        return None
    try:
        return _install(names, exporter=exporter, set_global=set_global)
    except ImportError as exc:
        logger.warning(
            "OTEL_* variables ask for traces, but OpenTelemetry is not installed (%s: %s); "
            "tracing is off",
            _EXTRA_HINT,
            exc.name,
        )
        return None


def _install(names: list[str], *, exporter: SpanExporter | None, set_global: bool) -> Tracing:
    # Imported here: the extra is optional, and a CLI that does not trace should not
    # pay for importing the SDK.
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SimpleSpanProcessor,
    )

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    if set_global:
        trace.set_tracer_provider(provider)
    instrumentors: list[Any] = [CeleryInstrumentor(), HTTPXClientInstrumentor()]  # type: ignore[no-untyped-call]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    logger.info("tracing on: %s", ", ".join(names) or "in-process exporter")
    return Tracing(provider=provider, instrumentors=instrumentors)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()
