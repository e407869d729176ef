"""The asyncio side: listeners, connections, the shard's broker."""
