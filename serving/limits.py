"""Bounds on what one caller can make the server hold or do, checked before the work starts.

Every resource a request can ask for has a limit here or in the transport (message size,
streams per connection: `cnnzoo.serving.grpc_api.transport`). Over a limit the request is
answered RESOURCE_EXHAUSTED naming the limit and the `cnnzoo serve` option that raises it;
nothing of it is decoded, queued or run. The defaults fit a workstation: at most 256
inference, Classify and Explain calls in progress at once (up to 2048 more wait their turn, see
`cnnzoo.serving.call_queue`); a Classify call decodes at most 256
images and 100 megapixels (a few seconds of Pillow on one core); a model's queue holds at most
1024 requests; Explain (seconds of PyTorch per call on a large model) keeps at most 8 calls.
Work that takes long (decoding, explaining) checks the caller's deadline before each step
(`check_deadline`), so a caller who has given up stops costing the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

from cnnzoo.errors import DeadlineExceeded, InvalidInput, ResourceExhausted

__all__ = ["InFlight", "RequestLimits", "check_deadline", "over_limit"]


@dataclass(frozen=True)
class RequestLimits:
    """Per-request and per-model bounds.

    Args:
        max_classify_images: images in one Classify request.
        max_request_pixels: decoded pixels (width x height, summed over the images) in one
            Classify or Explain request, read from the image headers before decoding.
        max_queue_size: requests waiting in one model version's batcher when its config.pbtxt
            sets no `dynamic_batching.default_queue_policy.max_queue_size` (Triton's setting,
            which wins when present).
        max_pending_explanations: Explain calls in progress (decoding, queued or running on
            their explanation graph's batcher).
        max_concurrent_requests: inference, Classify and Explain calls in progress on the
            server, whatever the transport (with the message size, this bounds the memory that
            requests hold once they are decoded).
        max_waiting_requests: calls waiting for one of those places (beyond it a call is
            refused RESOURCE_EXHAUSTED).
    """

    max_classify_images: int = 256
    max_request_pixels: int = 100_000_000
    max_queue_size: int = 1024
    max_pending_explanations: int = 64
    max_concurrent_requests: int = 256
    max_waiting_requests: int = 2048

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, int) or value < 1:
                flag = "--" + item.name.replace("_", "-")
                raise InvalidInput(f"{flag} must be a positive whole number, got {value!r}")


class InFlight:
    """Calls in progress, at most `limit`: `enter` refuses one more with `ResourceExhausted`.

    Only the event loop calls it (no lock); `enter` and `leave` cost a compare and an add.
    """

    __slots__ = ("count", "started", "limit", "what", "flag")

    def __init__(self, limit: int, what: str, flag: str) -> None:
        self.count = 0
        self.started = 0  # calls admitted so far (the server's drain watches it)
        self.limit = limit
        self.what = what
        self.flag = flag

    def enter(self) -> None:
        if self.count >= self.limit:
            raise over_limit(self.what, self.count + 1, self.limit, self.flag)
        self.count += 1
        self.started += 1

    def leave(self) -> None:
        self.count -= 1


def over_limit(what: str, amount: int, limit: int, flag: str) -> ResourceExhausted:
    """The error for `amount` of `what` over `limit` (which `flag` of `cnnzoo serve` sets)."""
    return ResourceExhausted(
        f"{what} ({amount}) exceed this server's limit of {limit}; cnnzoo serve {flag} sets it"
    )


def check_deadline(deadline: float | None, when: str) -> None:
    """Raise `DeadlineExceeded` if `deadline` (`time.monotonic()` seconds) has passed; `when`
    says how far the request got ("after decoding 3 of 8 images")."""
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(f"the deadline passed {when}; the request was not run")
