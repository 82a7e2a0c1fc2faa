"""Where the ExplainWorkers run: in this process, in ``--workers N`` local processes, or on a Ray cluster.

Each runner takes the batches still to do and yields the workers' results in
the batches' order, so the records file and the class means come out the same
whichever runs them.
"""
from __future__ import annotations

import multiprocessing
import os
import signal

from ..errors import InputError
from .worker import ExplainWorker


def run_here(settings, batches):
    worker = ExplainWorker(settings)
    for batch in batches:
        yield worker(batch)


# -- local processes -----------------------------------------------------------------------------------------------

_WORKER = []


def _start_process(settings, slots, gpus):
    """Pool initializer: with CUDA, worker k sees only GPU k mod the GPUs listed (one worker per GPU).
    Ctrl-C reaches the whole process group: the workers leave it to the parent, which stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
    _WORKER.append(ExplainWorker(settings))


def _explain_in_process(batch):
    return _WORKER[0](batch)


def visible_gpus():
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES, else the devices CuPy sees, else none."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip()]
    try:
        import cupy

        return [str(i) for i in range(cupy.cuda.runtime.getDeviceCount())]
    except Exception:
        return []


def run_processes(settings, batches, workers):
    """``workers`` spawned processes (spawn, not fork: ONNX Runtime's threads do not survive a fork).

    Each gets its share of the cores for its BLAS/OpenMP threads (``OMP_NUM_THREADS``, where not set
    already), as Ray does for its actors: N processes each spinning threads on every core slow one another
    down many times over.
    """
    context = multiprocessing.get_context("spawn")
    gpus = visible_gpus() if settings.device in ("cuda", "auto") else []
    share = str(max(1, (os.cpu_count() or 1) // workers))
    unset = "OMP_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OMP_NUM_THREADS"] = share  # read by the children as they start
    try:
        pool = context.Pool(workers, initializer=_start_process, initargs=(settings, context.Value("i", 0), gpus))
    finally:
        if unset:
            del os.environ["OMP_NUM_THREADS"]
    try:
        yield from pool.imap(_explain_in_process, batches)
        pool.close()
    finally:
        pool.terminate()
        pool.join()


# -- Ray -----------------------------------------------------------------------------------------------------------

def run_ray(settings, items, address, batch_size, workers=None, quiet=False):
    """The same pipeline on Ray Data: the inputs as a dataset, ``map_batches`` with one ExplainWorker actor per
    CPU (or GPU with ``--device cuda``), the results streamed back in order to be stored here.

    ``address``: ``local`` starts a Ray instance on this machine (``workers`` CPUs, default all); anything else
    is passed to ``ray.init`` (``auto``, ``ray://head:10001``, ...).
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("--ray needs Ray Data: pip install 'onnxrap[ray]'") from None
    import logging

    level = logging.ERROR if quiet else logging.WARNING
    logging.getLogger("ray.data").setLevel(level)  # the audit's own bar shows the progress
    started = not ray.is_initialized()
    if started:
        kwargs = dict(include_dashboard=False, logging_level=level, log_to_driver=not quiet)
        if address == "local":
            ray.init(num_cpus=workers or os.cpu_count(), **kwargs)
        else:
            try:
                ray.init(address=address, **kwargs)
            except Exception as exc:
                raise InputError(f"--ray {address}: cannot connect ({str(exc).splitlines()[0]})") from None
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # records in input order, as in a plain run
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        gpu = settings.device == "cuda"
        slots = int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1))
        actors = max(1, min(workers or slots, slots))
        dataset = ray.data.from_items(items)
        explained = dataset.map_batches(ExplainWorker, fn_constructor_kwargs={"settings": settings},
                                        batch_size=batch_size, batch_format="numpy",
                                        compute=ray.data.ActorPoolStrategy(size=actors),
                                        **({"num_gpus": 1} if gpu else {"num_cpus": 1}))
        yield from explained.iter_batches(batch_size=None, batch_format="numpy")
    finally:
        if started:
            ray.shutdown()
