"""Access control building blocks: who may connect, and what they may touch.

- ``passwd``: Mosquitto's password file (``user:$7$...``), read and written.
- ``acl``: Mosquitto's ACL file, compiled per client into cheap checks
  (``ClientAcl``, which the Redis ACLs compile into too).
- ``hashing``: EMQX's password hashing algorithms.
- ``redis``: EMQX's Redis layout for credentials and ACLs (asyncio), cached.
- ``files``: reading the line-based files, and ``AuthFileError``.

All but ``redis`` are pure (no event loop, sockets or clocks) like
``protocol/``. Password checks are CPU-bound: the worker runs
``PasswordFile.verify`` in a thread executor (``RedisAuth`` does so itself for
pbkdf2 and bcrypt). Nothing here is wired into the connection yet.
"""
