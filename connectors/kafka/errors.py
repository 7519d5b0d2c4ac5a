"""Translate kafka-python exceptions into tiersync's error classes at the connector boundary."""

from __future__ import annotations

from engine.errors import TerminalError, TiersyncError, TransientError


def translate(exc: Exception, what: str) -> TiersyncError:
    """The tiersync error for a kafka-python exception raised while doing ``what``."""
    from kafka import errors

    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, (errors.BrokerNotAvailableError, errors.KafkaConnectionError, errors.KafkaTimeoutError,
                        errors.RequestTimedOutError, errors.NotLeaderForPartitionError,
                        errors.LeaderNotAvailableError, errors.NodeNotReadyError)):
        return TransientError(f"{what}: {message} — is the Kafka broker reachable?")
    if getattr(exc, "retriable", False):
        return TransientError(f"{what}: {message}")
    if isinstance(exc, (errors.TopicAuthorizationFailedError, errors.ClusterAuthorizationFailedError)):
        return TerminalError(f"{what}: {message} — grant the tiersync user access to the topics")
    return TerminalError(f"{what}: {type(exc).__name__}: {message}")
