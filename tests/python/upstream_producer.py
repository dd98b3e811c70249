#!/usr/bin/env python3
"""Produces messages the way an upstream (non-Rust) service would.

Usage: upstream_producer.py BROKERS TOPIC PARTITIONER MESSAGES.json

MESSAGES.json is a list of {"key": str, "value": str}. Each is produced with
confluent-kafka (its own bundled librdkafka) using PARTITIONER
(`consistent_random` is librdkafka's default, CRC32; `murmur2_random` is the
Java/Go default), idempotently, in order. Prints one JSON list of
{"key", "partition", "offset"} in the order given; exits non-zero if any
message was not acknowledged.
"""
import json
import sys

from confluent_kafka import Producer


def main() -> int:
    brokers, topic, partitioner, path = sys.argv[1:5]
    with open(path, encoding="utf-8") as f:
        messages = json.load(f)
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "partitioner": partitioner,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    placed = [None] * len(messages)
    failed = []

    def delivered(i):
        def report(err, msg):
            if err is not None:
                failed.append(f"message {i}: {err}")
            else:
                placed[i] = {
                    "key": messages[i]["key"],
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                }

        return report

    for i, m in enumerate(messages):
        producer.produce(
            topic,
            key=m["key"].encode(),
            value=m["value"].encode(),
            on_delivery=delivered(i),
        )
        producer.poll(0)
    left = producer.flush(60)
    if left or failed or any(p is None for p in placed):
        print(f"not acknowledged: {left} in queue, {failed}", file=sys.stderr)
        return 1
    print(json.dumps(placed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
