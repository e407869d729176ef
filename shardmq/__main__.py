"""``python -m shardmq``: the same as the ``shardmq`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="shardmq")
