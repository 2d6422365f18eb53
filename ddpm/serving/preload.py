"""What the forkserver imports once before it forks the server's children (``processes.context``): torch and the
code a sampling worker or a training process runs. ``gc.freeze()`` then moves every object made so far out of
the collector's reach: a collection writes into each object it visits, which would copy, page by page, what the
children share with the forkserver. Importing this module starts no thread (a fork keeps only the forking one)."""
import gc

import safetensors.torch  # noqa: F401
import torch  # noqa: F401

from .. import checkpoints, data, editing, pipeline, unet  # noqa: F401  (a sampling worker's imports)
from . import sampling_worker, train_process  # noqa: F401

gc.freeze()
