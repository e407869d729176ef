"""Access control building blocks: who may connect, and what they may touch.

- ``passwd``: Mosquitto's password file (``user:$7$...``), read and written.
- ``acl``: Mosquitto's ACL file, compiled per client into cheap checks.
- ``redis``: EMQX's Redis layout for credentials and ACLs (asyncio).

``passwd`` and ``acl`` are pure (no event loop, sockets or clocks) like
``protocol/``; the worker calls them, and runs the CPU-bound password check
in a thread executor. Nothing here is wired into the connection yet.
"""
