"""Wiring one service process: settings, telemetry, the Kafka broker with its
middlewares, the service's own database, the outbox relay and the HTTP API,
started and stopped together by the API's lifespan and served by uvicorn.

A service module builds a `Service`, registers its subscribers on
`service.consumer`, its routes on `service.api` and its start-up steps, then
calls `service.run()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, Query, Request
from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.kafka.prometheus import KafkaPrometheusMiddleware
from faststream.specification import AsyncAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import REGISTRY, Counter
from pymongo.asynchronous.collection import AsyncCollection

from shared.audit import STATE_KEY, AuditOutcome, AuditTrail
from shared.auth import Credentials, Principal, require
from shared.clock import SYSTEM_CLOCK, Clock
from shared.consumer import EventConsumer
from shared.envelope import OutboxEntry
from shared.errors import is_retryable
from shared.events import ALL_TOPICS
from shared.http import RequestGate, create_api, describe_api
from shared.progress import ConsumerProgress, sample_subscribers
from shared.settings import ServiceSettings
from shared.store import Doc, OutboxRelay, connect
from shared.telemetry import setup_telemetry

log = logging.getLogger(__name__)
Hook = Callable[[], Coroutine[Any, Any, Any]]
AUDIT_REFUSALS = Counter(
    "router_audit_refusals_total", "API calls refused because their audit record was not written"
)


async def ensure_topics(
    bootstrap: str, topics: list[str], partitions: int, **client_options: Any
) -> None:
    """Create the router's topics if missing (production clusters pre-create them
    from deploy/; this keeps a fresh local broker usable)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            new = [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
            with suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
    finally:
        await admin.close()


async def start_broker(broker: KafkaBroker) -> None:
    """`broker.start()`, but with the subscribers joining their groups at once.

    faststream 0.7 starts subscribers one after another, and each group join
    waits about half the session timeout (longer on Tansu after a restart), so
    a service with six subscribers took ~19 s to start; joined concurrently, ~4 s.
    Mirrors BrokerUsecase.start of the pinned faststream version."""
    await broker.connect()
    await asyncio.gather(*(sub.start() for sub in broker.subscribers))
    for pub in broker.publishers:
        await pub.start()
    broker.running = True


class Service:
    """One running service: broker, database, outbox relay and HTTP API."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        title: str,
        description: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        settings.check_production()
        self.settings = settings
        self.clock = clock
        self.tracer_provider = setup_telemetry(settings.service_name, settings.trace_dir)
        self.broker = KafkaBroker(
            settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=settings.kafka_idempotent_producer,
            security=settings.kafka_security(),
            middlewares=[
                KafkaTelemetryMiddleware(tracer_provider=self.tracer_provider),
                KafkaPrometheusMiddleware(registry=REGISTRY, app_name=settings.service_name),
            ],
            description=description,
        )
        self.asyncapi = FastStream(
            self.broker, specification=AsyncAPI(title=title, description=description)
        )
        self.consumer = EventConsumer(self.broker, settings)
        self.client, self.db = connect(settings.mongo_uri, settings.mongo_database)
        self.credentials = Credentials.load(settings.credentials_path())
        self.api = create_api(title, description, self.ready)
        self.audit = AuditTrail(
            self.db["audit_events"], settings.service_name, clock, settings.audit_retention_days
        )
        # Paths anyone may call (no key): health, the API description, and what a
        # service declares with `public(...)`. In production /metrics needs a key.
        self._public: list[str] = ["/healthz", "/readyz", "/docs", "/openapi.json", "/redoc"]
        if settings.dev_mode or settings.metrics_public:
            self._public.append("/metrics")
        self.api.add_middleware(AuditOutcome, trail=self.audit)
        self.api.add_middleware(
            RequestGate,
            authenticate=self.credentials.authenticate,
            public=self.is_public,
            max_body_bytes=settings.max_body_bytes,
            public_max_body_bytes=settings.public_max_body_bytes,
        )
        self.progress = ConsumerProgress(clock, settings.consumer_stall_seconds)
        describe_api(self.api, self.is_public)
        self._audit_route()
        self._progress_route()
        self.api.router.lifespan_context = self._lifespan
        FastAPIInstrumentor.instrument_app(self.api, tracer_provider=self.tracer_provider)
        self._outbox_collections: list[AsyncCollection[Doc]] = []
        self._startup: list[Hook] = []
        self._background: list[Hook] = []
        # Topics this service creates on a fresh broker besides the router's own
        # (reporting: each tenant's partner channel).
        self.extra_topics: list[str] = []
        self.relay = OutboxRelay(
            self.broker,
            f"/router/{settings.service_name}",
            self._outbox_collections,
            settings.outbox_sweep_seconds,
            dead_letters=self.db["outbox_dead_letters"],
            clock=clock,
        )

    def collection(self, name: str, *, outbox: bool = False) -> AsyncCollection[Doc]:
        """One of this service's own collections; `outbox=True` lets it emit events."""
        coll = self.db[name]
        if outbox:
            self._outbox_collections.append(coll)
        return coll

    def require(self, *roles: str) -> Callable[..., Any]:
        """The FastAPI dependency for a route: authenticates the caller, checks the
        role and records the access in the service's audit trail before the route
        runs (shared.audit: a call whose record cannot be written is refused)."""
        authorized = require(self.credentials, *roles)

        # `Depends` as the default, not in an annotation: with postponed annotations
        # FastAPI could not resolve a closure's local `authorized` by name.
        async def audited(
            request: Request, principal: Principal = Depends(authorized)
        ) -> Principal:
            route = getattr(request.scope.get("route"), "path", request.url.path)
            client = request.client.host if request.client else ""
            event = self.audit.event(
                principal, request.method, route, dict(request.path_params), client
            )
            try:
                recorded = await self.audit.record(event)
            except Exception:
                AUDIT_REFUSALS.inc()
                raise  # a transient database error: 503, "send it again"
            request.scope.setdefault("state", {})[STATE_KEY] = recorded
            return principal

        return audited

    def public(self, *prefixes: str) -> None:
        """Declare paths (prefixes) anyone may call without a key."""
        self._public.extend(prefixes)

    def is_public(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self._public)

    def _audit_route(self) -> None:
        operations = self.require("operations")

        @self.api.get("/v1/audit", tags=["ops"], summary="The audit trail (FHIR AuditEvent)")
        async def audit_events(
            _: Principal = Depends(operations),
            case_id: Annotated[str, Query(max_length=64)] = "",
            key_id: Annotated[str, Query(max_length=64)] = "",
            limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        ) -> dict[str, Any]:
            """Who read or changed what on this service, newest first, as a FHIR
            searchset Bundle of AuditEvent resources (IHE BALP)."""
            events = await self.audit.search(case_id=case_id, key_id=key_id, limit=limit)
            return {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(events),
                "entry": [{"resource": e} for e in events],
            }

    def _progress_route(self) -> None:
        operations = self.require("operations")

        @self.api.get("/v1/ops/consumers", tags=["ops"], summary="How far each consumer has read")
        async def consumers(_: Principal = Depends(operations)) -> dict[str, Any]:
            """Per consumer group and partition this process reads: the next offset it
            will process, the partition's end as its fetches saw it, how far behind it
            is and whether it is stalled (shared/progress.py; the same as the
            router_consumer_* metrics)."""
            return {
                "service": self.settings.service_name,
                "stall_seconds": self.settings.consumer_stall_seconds,
                "partitions": self.progress.snapshot(),
            }

    async def sample_progress(self) -> None:
        """One observation of every assigned partition (shared/progress.py)."""
        await sample_subscribers(self.broker.subscribers, self.consumer.processed, self.progress)

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.consumer_progress_seconds)
            try:
                await self.sample_progress()
            except Exception:  # never let reporting take the service down
                log.warning("consumer progress sample failed", exc_info=True)

    def on_startup(self, hook: Hook) -> Hook:
        self._startup.append(hook)
        return hook

    def background(self, hook: Hook) -> Hook:
        self._background.append(hook)
        return hook

    def emitted(self, entries: list[OutboxEntry]) -> None:
        """Tell the relay that entries were just written, so it publishes now."""
        if entries:
            self.relay.wake()

    async def ready(self) -> bool:
        try:
            await self.client.admin.command("ping")
        except Exception:
            return False
        return bool(self.broker._connection)  # started and connected

    async def _prepare(self) -> None:
        await self.audit.create_indexes()
        for coll in self._outbox_collections:
            await coll.create_index("has_outbox")
        for hook in self._startup:
            await hook()
        await ensure_topics(
            self.settings.kafka_bootstrap,
            [*ALL_TOPICS, *self.extra_topics],
            self.settings.topic_partitions,
            **self.settings.kafka_client_options(),
        )
        await start_broker(self.broker)

    async def _prepare_until_reachable(self) -> None:
        """Start even if the database or the broker is briefly away (a restart of
        either, a pod scheduled before them): wait for them instead of exiting,
        which would leave the service dead where nothing restarts it."""
        delay = 0.5
        while True:
            try:
                await self._prepare()
                return
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                log.warning("start-up waits: %s; retrying in %.1fs", type(exc).__name__, delay)
                with suppress(Exception):
                    await self.broker.stop()  # subscribers started so far start again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    @asynccontextmanager
    async def _lifespan(self, _: Any) -> AsyncIterator[None]:
        await self._prepare_until_reachable()
        tasks = [asyncio.create_task(self.relay.run(), name="outbox-relay")]
        tasks.append(asyncio.create_task(self._progress_loop(), name="consumer-progress"))
        tasks += [asyncio.create_task(h(), name=h.__name__) for h in self._background]
        log.info("%s started", self.settings.service_name)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.consumer.committer.flush()
            await self.broker.stop()
            await self.client.close()
            self.tracer_provider.shutdown()

    def run(self) -> None:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
        # httpx logs every request URL at INFO; a provider query (QIDO ?PatientID=,
        # FHIR ?subject=) carries the patient's identifier, which is PHI.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        uvicorn.run(
            self.api,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_level="info",
            access_log=False,
        )


class ProcessService:
    """The process's one service, built from the environment on first use.

    A service module keeps nothing built at import: it declares
    ``default_service = ProcessService(create_service)`` and
    ``__getattr__ = default_service.module_attribute``, so ``module.service``,
    ``module.api`` (for uvicorn) and ``module.app`` (for faststream's AsyncAPI)
    build it only when asked for; tests call ``create_service(settings, clock)``.
    """

    def __init__(self, create: Callable[[], Service]) -> None:
        self._create = create
        self._service: Service | None = None

    @property
    def built(self) -> bool:
        return self._service is not None

    def __call__(self) -> Service:
        if self._service is None:
            self._service = self._create()
        return self._service

    def module_attribute(self, name: str) -> Any:
        if name == "service":
            return self()
        if name == "api":
            return self().api
        if name == "app":
            return self().asyncapi
        raise AttributeError(name)
