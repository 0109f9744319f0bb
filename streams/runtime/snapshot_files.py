"""Where the model process leaves ranking snapshots for the ranking child.

A snapshot of a shop's catalogue is a few hundred megabytes of arrays: handed
over through the event loop it was unpickled there and pickled again for the
ranking child. It goes through a file instead, in a folder of this worker
process under the data dir (``snapshots/pid-<pid>``): the loop passes the path.
The last file the ranking child loaded is kept (a ranking child that replaces a
dead one loads it again); the folders of worker processes that are gone (a
SIGKILL leaves one behind) are removed when the next worker starts.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
from pathlib import Path

#: Folders made by this process so far (several workers may share a process: tests).
_folders = itertools.count(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class SnapshotFiles:
    """The snapshot files of one worker process.

    >>> import tempfile
    >>> files = SnapshotFiles(Path(tempfile.mkdtemp()))
    >>> first, second = files.next_path(7), files.next_path(7)
    >>> first.name, second.name
    ('snapshot-7-1.pickle', 'snapshot-7-2.pickle')
    >>> _ = first.write_bytes(b"1"); _ = second.write_bytes(b"2")
    >>> files.loaded(second); sorted(p.name for p in files.folder.iterdir())
    ['snapshot-7-2.pickle']
    >>> files.close(); files.folder.exists()
    False
    """

    def __init__(self, data_dir: Path) -> None:
        root = data_dir / "snapshots"
        self.folder = root / f"pid-{os.getpid()}-{next(_folders)}"
        self._numbers = itertools.count(1)
        if root.is_dir():
            for folder in root.iterdir():
                pid = folder.name.removeprefix("pid-").partition("-")[0]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    shutil.rmtree(folder, ignore_errors=True)
        atexit.register(self.close)

    def next_path(self, version: int) -> Path:
        """A path for the next snapshot (of ``version``), its folder made."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return self.folder / f"snapshot-{version}-{next(self._numbers)}.pickle"

    def loaded(self, path: Path) -> None:
        """The ranking child holds the snapshot of ``path``: every other file goes."""
        if self.folder.is_dir():
            for other in self.folder.iterdir():
                if other != path:
                    with contextlib.suppress(FileNotFoundError):
                        other.unlink()

    def close(self) -> None:
        """Remove the folder (the worker stops)."""
        shutil.rmtree(self.folder, ignore_errors=True)
