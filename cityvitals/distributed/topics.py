"""Create the Kafka topics cityvitals needs, or check the ones that exist.

Readings and presence are keyed by node and must have the same number of
partitions: the stream worker relies on a node's readings, presence and
state sharing one partition number. A topic that exists with another
partition count is an error naming it, not something to work around.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import suppress

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from cityvitals.errors import CityvitalsError

log = logging.getLogger(__name__)


class TopicLayoutError(CityvitalsError):
    """A topic exists with a partition count the pipeline cannot work with."""


async def ensure_topics(
    bootstrap: str,
    names: Sequence[str],
    *,
    partitions: int,
    replication: int,
    copartitioned: Sequence[str] = (),
    compacted: Sequence[str] = (),
) -> None:
    """Create missing `names` (`compacted` ones with log compaction); check that
    every `copartitioned` topic has `partitions`."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="cityvitals-admin")
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with suppress(TopicAlreadyExistsError):  # another role created it meanwhile
                await admin.create_topics(
                    [
                        NewTopic(
                            n,
                            partitions,
                            replication,
                            topic_configs={"cleanup.policy": "compact"} if n in compacted else {},
                        )
                        for n in missing
                    ]
                )
            log.info(
                "created Kafka topics %s (%d partitions, replication %d)",
                missing,
                partitions,
                replication,
            )
        # Only topics that existed before: a topic just created may not be
        # described yet, and it has the right count by construction.
        check = [t for t in copartitioned if t in existing]
        if check:
            described = await admin.describe_topics(check)
            counts = {t["topic"]: len(t["partitions"]) for t in described}
            wrong = {t: n for t, n in counts.items() if n != partitions}
            if wrong:
                raise TopicLayoutError(
                    f"Kafka topics {wrong} have other partition counts than kafka.partitions "
                    f"= {partitions}; they must all match (a node's readings, presence and "
                    "state share one partition number). Set kafka.partitions to match, or "
                    "recreate the topics."
                )
    except KafkaError as exc:
        raise CityvitalsError(f"cannot set up Kafka topics at {bootstrap}: {exc}") from exc
    finally:
        await admin.close()


async def seed_offsets(bootstrap: str, group: str, topics: Sequence[str], partitions: int) -> int:
    """Commit offset 0 for every partition of `topics` the consumer group has no offset for.

    A partition without a committed offset has no baseline: faust then judges
    the first offsets it acknowledges against nothing, and a worker that keeps
    such a partition through a rebalance was seen to skip its first records
    (they were in Kafka, never processed). Starting every partition with a
    committed 0 gives faust one. Only while the group has no members (a
    group with members refuses commits from outside it), so in effect on the
    first start; returns how many partitions were seeded.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        await consumer.start()
        parts = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        consumer.assign(parts)
        missing = {tp: 0 for tp in parts if await consumer.committed(tp) is None}
        if missing:
            await consumer.commit(missing)
            log.info("seeded offsets of %d partitions for consumer group %s", len(missing), group)
        return len(missing)
    except KafkaError as exc:
        log.debug("not seeding offsets for %s: %s", group, exc)
        return 0
    finally:
        await consumer.stop()
