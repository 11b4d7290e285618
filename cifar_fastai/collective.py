"What the processes of a data-parallel run share, as plain `torch.distributed` calls that do nothing in one process"
import torch
import torch.distributed as dist

__all__ = ['in_process_group', 'is_main', 'unwrap', 'all_reduce_sum', 'broadcast_value', 'broadcast_tensors', 'on_main',
           'gather_values']


def in_process_group() -> bool: return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    "Whether this is the process that writes files: rank 0, or the only one"
    return not in_process_group() or dist.get_rank() == 0


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    "The model inside a `DistributedDataParallel` wrapper, or `model` itself"
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    "The sum of `t` over every process (a copy; `t` itself outside a process group)"
    if not in_process_group(): return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def broadcast_value(value, src: int = 0):
    "`value` of process `src` on every process (any picklable object); `value` itself outside a process group"
    if not in_process_group(): return value
    box = [value]
    dist.broadcast_object_list(box, src=src)  # on the current CUDA device with nccl, on the CPU with gloo
    return box[0]


def gather_values(value) -> list:
    "Every process's `value` (any picklable object), in rank order, on every process; `[value]` outside a group"
    if not in_process_group(): return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_tensors(tensors: list, src: int = 0):
    "Overwrite each of `tensors` with process `src`'s, in place; nothing outside a process group"
    if not in_process_group(): return
    for t in tensors: dist.broadcast(t, src=src)


def on_main(fn):
    "`fn()` run by the main process alone, its result on every process; an exception it raises, raised on every process"
    # so that a check made on rank 0 (a folder that holds a run, a failed range test) stops every process alike,
    # rather than leaving the others waiting for rank 0 in a collective
    if not in_process_group(): return fn()
    result = error = None
    if is_main():
        try: result = fn()
        except Exception as e: error = e
    result, error = broadcast_value((result, error))
    if error is not None: raise error
    return result
