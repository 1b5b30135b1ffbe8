"""A thread pool whose tasks have a time limit, for reading files that may never answer.

A read can block for good (a stalled network mount, a device) and a Python thread cannot be killed. So each task gets
``timeout`` seconds from the moment a thread starts it; a task that overruns is abandoned: its caller gets
:class:`TaskTimeout`, its thread is left to finish (or hang) on its own, and a fresh thread takes its place, so the
pool keeps its width. Threads are daemons and nothing ever joins them: a stuck one delays neither the other tasks nor
the end of the process, and a Ctrl-C in the thread waiting for a result ends the wait at once.

Torch-free; the engine reads headers and decodes images through it.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable, List, Optional

# How often a waiting caller looks at whether its task has started (the limit counts from the start, not from the
# submission: a task waiting in the queue behind slow ones has not used any of its time).
_POLL_SECONDS = 0.1
_CLOSE_SECONDS = 1.0
_names = itertools.count(1)
_current = threading.local()


class TaskTimeout(Exception):
    """A task ran longer than the pool's time limit and was abandoned."""


def current_label() -> Optional[str]:
    """The label of the task the calling thread is running (see :meth:`DeadlinePool.submit`), else ``None``.

    Lets a warning raised deep inside a third-party library be attributed to the input being read.
    """
    return getattr(_current, "label", None)


class _Task:
    def __init__(self, fn: Callable[..., Any], args: tuple, label: Optional[str]):
        self.fn, self.args, self.label = fn, args, label
        self.future: Future = Future()
        self.started: Optional[float] = None
        self.thread: Optional[threading.Thread] = None
        self.abandoned = False


class DeadlinePool:
    """Runs callables in ``workers`` daemon threads; each gets at most ``timeout`` seconds once started.

    Example::

        pool = DeadlinePool(4, timeout=30)
        task = pool.submit(read_header, path, label=path)
        try:
            size = pool.result(task)
        except TaskTimeout:
            ...  # the read is still blocked in its thread; the pool has a new one
        pool.close()

    Args:
        workers: Threads running tasks at once (stuck ones not counted).
        timeout: Seconds a task may run; ``None`` for no limit.
        name: Prefix of the threads' names.
    """

    def __init__(self, workers: int, timeout: Optional[float], name: str = "deadline-pool"):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self._timeout = timeout
        self._name = name
        self._queue: "queue.SimpleQueue[Optional[_Task]]" = queue.SimpleQueue()
        self._closed = False
        self._width = workers
        self._threads: List[threading.Thread] = []
        for _ in range(workers):
            self._spawn()

    def submit(self, fn: Callable[..., Any], *args: Any, label: Optional[str] = None) -> _Task:
        """Queues ``fn(*args)``; ``label`` is what :func:`current_label` returns inside it."""
        task = _Task(fn, args, label)
        self._queue.put(task)
        return task

    def result(self, task: _Task) -> Any:
        """Waits for a task and returns its value (or raises its exception).

        Raises:
            TaskTimeout: It ran longer than the time limit; it is abandoned and a new thread replaces its own.
        """
        while True:
            wait = _POLL_SECONDS
            if task.started is not None and self._timeout is not None:
                wait = min(wait, task.started + self._timeout - time.monotonic())
            try:
                return task.future.result(timeout=max(wait, 0))
            except FutureTimeout:
                if (task.started is not None and self._timeout is not None
                        and time.monotonic() - task.started >= self._timeout and not task.future.done()):
                    task.abandoned = True
                    if task.thread in self._threads:
                        self._threads.remove(task.thread)
                    self._spawn()
                    raise TaskTimeout(f"took longer than {self._timeout:g} s") from None

    def close(self) -> None:
        """Drops the queued tasks and ends the threads, waiting up to a second for those not abandoned.

        Waiting for the idle threads matters: a daemon thread still winding down when the interpreter exits is
        stopped by unwinding its stack, which aborts the process if that stack holds C++ frames (torch's).
        """
        self._closed = True
        for _ in range(self._width):
            self._queue.put(None)
        deadline = time.monotonic() + _CLOSE_SECONDS
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "DeadlinePool":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._name}-{next(_names)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            if self._closed:
                task.future.cancel()
                continue
            if not task.future.set_running_or_notify_cancel():
                continue
            _current.label = task.label
            task.thread = threading.current_thread()
            task.started = time.monotonic()
            try:
                task.future.set_result(task.fn(*task.args))
            except BaseException as error:  # the caller gets whatever the task raised
                task.future.set_exception(error)
            finally:
                _current.label = None
            if task.abandoned:
                return  # a replacement took this thread's place

