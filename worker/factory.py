"""Builds the worker's Celery app from settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from subswitch.broker import celery_config, is_amqp
from subswitch.embedded import ensure_embedded_redis
from subswitch.settings import Settings
from worker import tasks

#: Slots of the threads pool: the work is I/O-bound (an HTTP call and a few Redis
#: round trips), so many threads per process beat processes.
DEFAULT_CONCURRENCY = 64


def resolve_urls(settings: Settings) -> tuple[str, str]:
    """``(broker_url, store_url)``: the configured ones or the embedded Redis."""
    if settings.broker_url and settings.store_url:
        return settings.broker_url, settings.store_url
    embedded = ensure_embedded_redis(settings.data_dir)
    return settings.broker_url or embedded.broker_url, settings.store_url or embedded.store_url


def request_budget_s(settings: Settings) -> float:
    """Longest one upstream attempt can take: two tries (a 401 refresh) of every timeout."""
    one_try = (
        settings.connect_timeout
        + settings.write_timeout
        + settings.read_timeout
        + settings.pool_timeout
    )
    return 2 * one_try


def worker_config(settings: Settings, broker_url: str) -> dict[str, Any]:
    """Celery settings of the worker side, on top of :func:`subswitch.broker.celery_config`."""
    budget = request_budget_s(settings)
    config = celery_config(
        broker_url=broker_url,
        visibility_timeout=settings.visibility_timeout,
        queue_type=settings.rabbitmq_queue_type,
        delivery_limit=settings.delivery_limit,
    )
    config.update(
        # Ack after the task ran, not on receipt: a worker killed mid-command leaves
        # the message to be redelivered. The store makes the second run harmless.
        task_acks_late=True,
        # ...and that includes the OS killing the worker process (SIGKILL, OOM).
        task_reject_on_worker_lost=True,
        # One message at a time per slot: fair across slots, and a killed worker
        # holds back as few messages as possible.
        worker_prefetch_multiplier=1,
        # On a broker connection loss the unacked messages are redelivered; stop
        # running their copies here so two workers rarely race (the store still wins).
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Hard limit (prefork only; threads ignore it): one attempt plus store work,
        # far inside the redelivery window so a stuck task never gets a twin.
        task_time_limit=int(budget + 30),
        task_soft_time_limit=int(budget + 20),
        worker_consumer="worker.consumer:DeadLetteringConsumer",
        worker_pool="threads",
        worker_concurrency=DEFAULT_CONCURRENCY,
        # Enough broker connections for every slot to publish its event at once.
        broker_pool_limit=DEFAULT_CONCURRENCY + 8,
        worker_hijack_root_logger=False,
    )
    if is_amqp(broker_url):
        config.update(task_default_queue_type=settings.rabbitmq_queue_type)
    return config


def create_app(settings: Settings) -> Celery:
    """The worker's Celery app, with the ``subswitch.apply`` task registered."""
    broker_url, store_url = resolve_urls(settings)
    app = Celery("subswitch", set_as_current=False)
    app.conf.update(worker_config(settings, broker_url))
    app.conf.subswitch_settings = settings
    app.conf.subswitch_store_url = store_url
    tasks.register(app)
    return app
