"""Process helpers shared by every command that starts worker processes (torch-free)."""
from __future__ import annotations

import os
import time


def exit_with_parent(parent: int) -> None:
    """Pool / worker initializer: the worker ends when ``parent`` dies, even by SIGKILL, instead of working on
    (for up to a whole row or trial) into a folder that a rerun is about to resume."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()
