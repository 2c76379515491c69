"""Redis Streams between the stages, and the embedded Redis server of the default setup."""

from pipeline.queue.redis_streams import Message, RedisError, RedisQueue, connect, retrying

__all__ = ["Message", "RedisError", "RedisQueue", "connect", "retrying"]
