"""Device prefetch: the next global batches are on the devices while the current step runs.

  with prefetch.DevicePrefetch(host_batches, mesh) as batches:
    for batch in batches:
      state, metrics = step(state, batch)

A background thread takes each host batch (this process's rows, numpy), places
it on the mesh as a global array split along the data axis
(`jax.make_array_from_process_local_data`, as `sharding.global_batch_from_host`)
and waits for the copy, up to `size` batches ahead. The training loop then only
picks finished device arrays: it never waits for a host-to-device copy, and the
copy overlaps the step (as `flax.jax_utils.prefetch_to_device` and big_vision's
prefetch iterator do). Placing a batch involves no communication between
processes, so every process runs its own thread on its own rows.

Leaving the loop early (a `break`, an exception, preemption) must close the
prefetcher, which the `with` statement does: the thread stops, and the host
iterator is closed in that thread (a generator's `finally` runs there, e.g.
`input_pipeline`'s report of undecodable images).
"""

import queue
import threading
from typing import Any, Iterable, Iterator

import jax
from jax.sharding import Mesh

from coke_jax import sharding

_END = object()
_POLL_S = 0.05  # how often a waiting thread checks whether it was asked to stop


class _Failure:
  """An exception raised by the host iterator, to re-raise in the consumer."""

  def __init__(self, error: BaseException):
    self.error = error


class DevicePrefetch(Iterator[dict[str, jax.Array]]):
  """Iterates over `host_batches` placed on `mesh`, at most `size` batches ahead of the consumer.

  Each host batch is a flat dict of numpy arrays whose first axis is this
  process's rows of the global batch (the rows of `input_pipeline`'s
  batches); each item is the same dict of global `jax.Array`s sharded along
  `sharding.DATA_AXIS`.
  """

  def __init__(self, host_batches: Iterable[dict[str, Any]], mesh: Mesh, size: int = 2):
    if size < 1:
      raise ValueError(f"size is {size}; prefetch at least 1 batch ahead (2 is usual).")
    self._host = iter(host_batches)
    self._sharding = sharding.batch_sharded(mesh)
    self._ready = queue.Queue()
    self._slots = threading.Semaphore(size)  # batches placed and not yet taken
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._run, name="device_prefetch", daemon=True)
    self._thread.start()

  def _place(self, host_batch: dict[str, Any]) -> dict[str, jax.Array]:
    batch = {k: jax.make_array_from_process_local_data(self._sharding, v)
             for k, v in host_batch.items()}
    # Wait here, in the thread, so the consumer gets arrays whose copy is complete.
    return jax.block_until_ready(batch)

  def _run(self):
    try:
      while not self._stop.is_set():
        if not self._slots.acquire(timeout=_POLL_S):
          continue
        try:
          host_batch = next(self._host)
        except StopIteration:
          break
        self._ready.put(self._place(host_batch))
    except BaseException as e:  # pylint: disable=broad-except
      self._ready.put(_Failure(e))
    finally:
      try:
        if hasattr(self._host, "close"):
          self._host.close()
      except BaseException as e:  # pylint: disable=broad-except
        self._ready.put(_Failure(e))
      self._ready.put(_END)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._done:
      raise StopIteration
    item = self._ready.get()
    if item is _END or isinstance(item, _Failure):
      self._done = True
      self._thread.join()
      if item is _END:
        raise StopIteration
      raise item.error
    self._slots.release()
    return item

  def close(self):
    """Stops the thread and closes the host iterator; idempotent. Unused batches are dropped."""
    self._stop.set()
    self._thread.join()
    self._done = True

  def __enter__(self) -> "DevicePrefetch":
    return self

  def __exit__(self, *exc_info):
    self.close()
