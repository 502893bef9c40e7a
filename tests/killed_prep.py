"""``tier-openclip prep`` that SIGKILLs itself at a chosen point of the shard writer, for the
killed-run tests in test_data_prep.py (a script of its own: the kill must hit a real process,
and production code carries no test hook).

    python tests/killed_prep.py SHARD:N    ARGV...   killed once N samples of SHARD are written and flushed
    python tests/killed_prep.py SHARD:renamed ARGV... killed right after SHARD is finished (renamed)
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(shard: str, when: str) -> None:
    """Patch data_prep's ShardFile so that this process dies at ``shard``'s ``when``."""
    from tier_openclip.data_prep import shards

    write, fail, finish = shards.ShardFile.write, shards.ShardFile.fail, shards.ShardFile.finish
    done: dict[str, int] = {}

    def after_sample(self: shards.ShardFile) -> None:  # a failed sample counts, as a written one
        done[self.plan.name] = done.get(self.plan.name, 0) + 1
        if self.plan.name == shard and when == str(done[self.plan.name]):
            self.flush()  # the partial on disk ends mid-tar, as after a crash
            _die()

    def killing_write(self, key, files):
        write(self, key, files)
        after_sample(self)

    def killing_fail(self, key, reason, detail):
        fail(self, key, reason, detail)
        after_sample(self)

    def killing_finish(self):
        record = finish(self)
        if self.plan.name == shard and when == "renamed":
            _die()
        return record

    shards.ShardFile.write, shards.ShardFile.fail, shards.ShardFile.finish = killing_write, killing_fail, killing_finish


if __name__ == "__main__":  # spawned workers import this file as __mp_main__: they must not run it
    from tier_openclip.data_prep.cli import main

    name, _, moment = sys.argv[1].rpartition(":")
    install(name, moment)
    sys.exit(main(sys.argv[2:]))
