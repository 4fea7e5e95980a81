"""Import Hugging Face `transformers`, the independent reference, next to this project.

transformers 5.25 depends on Hugging Face's `kernels` package and imports it whenever it is
installed; this project's own top-level `kernels` package shadows it, so transformers
fails with "cannot import name 'CUDAProperties' from 'kernels'". We never use hub kernels,
so transformers is told they are unavailable before it looks, and `from_pretrained` (which
turns them on by default) is told they are off (`USE_HUB_KERNELS=NO`).
"""
from __future__ import annotations

import os
from types import ModuleType


def import_transformers() -> ModuleType:
    os.environ["USE_HUB_KERNELS"] = "NO"
    import transformers.utils
    from transformers.utils import import_utils

    def unavailable(*args, **kwargs) -> bool:
        return False

    import_utils.is_kernels_available = unavailable
    transformers.utils.is_kernels_available = unavailable
    import transformers

    return transformers
