"""Prometheus metrics, one registry per app (so tests can build many apps). Create `Metrics()` in the app
factory, reach it as `app.state.metrics`, and serve `render()` at `GET /metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DOWNTIME_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    """Every server metric. Names follow the seed guide where it gives them."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.connections_total = Counter(
            "websocket_connections_total", "WebSocket handshakes by outcome", ["status"], registry=r
        )
        self.reconnections_total = Counter(
            "websocket_reconnections_total", "Reconnections reported by clients (hello)", registry=r
        )
        self.reconnect_downtime = Histogram(
            "websocket_reconnect_downtime_seconds", "Downtime clients report after reconnecting",
            buckets=DOWNTIME_BUCKETS, registry=r,
        )
        self.message_duration = Histogram(
            "websocket_message_duration_seconds", "Time to handle one client message",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.broadcast_duration = Histogram(
            "websocket_event_broadcast_duration_seconds", "Time to enqueue one event for every subscriber",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.heartbeat_failures = Counter(
            "websocket_heartbeat_failures_total", "Connections terminated after missed heartbeats", registry=r
        )
        self.auth_failures = Counter(
            "websocket_auth_failures_total", "Handshakes refused for credentials or origin", ["reason"], registry=r
        )
        self.active_connections = Gauge("websocket_active_connections", "Open authenticated connections", registry=r)
        self.active_subscriptions = Gauge("websocket_active_subscriptions", "Project subscriptions held", registry=r)
        self.disconnects = Counter(
            "websocket_disconnects_total", "Closed connections by close code", ["code"], registry=r
        )
        self.events_published = Counter(
            "websocket_events_published_total", "Events published on the bus", ["event_type"], registry=r
        )
        self.events_delivered = Counter(
            "websocket_events_delivered_total", "Event frames queued to clients (live and replayed)", registry=r
        )
        self.queue_overflows = Counter(
            "websocket_send_queue_overflows_total", "Slow clients closed because their queue was full", registry=r
        )
        self.subscriptions_revoked = Counter(
            "websocket_subscriptions_revoked_total",
            "Subscriptions dropped because the membership was revoked while connected",
            registry=r,
        )
        self.messages_received = Counter(
            "websocket_messages_received_total", "Client messages by action", ["action"], registry=r
        )
        self.rate_limited = Counter(
            "websocket_rate_limited_total", "Connections closed for exceeding the message rate", registry=r
        )
        self.recoveries = Counter(
            "websocket_recoveries_total", "Subscribe-with-since outcomes", ["result"], registry=r
        )
        self.events_replayed = Counter(
            "websocket_events_replayed_total", "Events replayed from history on re-subscribe", registry=r
        )
        self.outbox_backlog = Gauge(
            "dashboard_outbox_backlog", "Committed events not yet published (seen by the last sweep)", registry=r
        )
        self.outbox_lag = Histogram(
            "dashboard_outbox_publish_lag_seconds", "Time from commit to publish of an outbox event",
            buckets=LATENCY_BUCKETS + (5.0, 10.0, 30.0, 60.0), registry=r,
        )
        self.relay_errors = Counter(
            "dashboard_relay_errors_total", "Relay passes that failed (bus or database unreachable)", registry=r
        )
        self.epoch_resets = Counter(
            "dashboard_epoch_resets_total", "Projects given a new epoch so clients refetch", ["reason"], registry=r
        )
        self.auth_refresh = Counter(
            "dashboard_auth_refresh_total", "Token refreshes by result", ["result"], registry=r
        )
        self.http_requests = Counter(
            "http_requests_total", "REST requests by route and status", ["route", "status"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
