"""The one exception type of the kernels package.

`KernelError` subclasses ValueError: every error a launcher raises is a bad argument
(wrong shape, dtype, device, layout or option), found from tensor metadata before any
kernel runs, and callers that catch ValueError keep working.
"""


class KernelError(ValueError):
    """A kernel launcher or test helper was given arguments it cannot run on."""
