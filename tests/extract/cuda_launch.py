"""A helper of the CUDA extraction tests (not a test module)."""

import torch


def launch_behind_another(encoder, batch, batch_size: int):
    """Launch ``batch`` while a launch of it is in flight, the second under CUDA's sync debug mode
    "error" (any wait for the device inside it raises); the two launches' results."""
    in_flight = encoder.launch(batch, batch_size)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = encoder.launch(batch, batch_size)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return in_flight.result(), pending.result()
