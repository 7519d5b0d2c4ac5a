"""Kafka as a target and as a source: Debezium-compatible change envelopes in JSON or Avro."""

from .connector import KafkaConnector

__all__ = ["KafkaConnector"]
