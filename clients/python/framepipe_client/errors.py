"""Exceptions: RPC-level failures end a stream; frame-level problems do not."""
from __future__ import annotations

from typing import List, Optional

import grpc


class FramePipeError(Exception):
    """The call failed as a whole: server unreachable, stream refused (RESOURCE_EXHAUSTED at
    --max-streams, UNAVAILABLE while draining), bad credentials, deadline, protocol violation.

    ``code`` is the gRPC status code (None for a violation found by this client), ``details``
    the server's message, ``lost_seqs`` the frames sent on this call whose results never came
    back (they were admitted or in transit when the call failed; nothing is silently skipped).
    """

    def __init__(self, message: str, *, code: Optional[grpc.StatusCode] = None,
                 details: str = "", lost_seqs: Optional[List[int]] = None):
        super().__init__(message)
        self.code = code
        self.details = details
        self.lost_seqs: List[int] = list(lost_seqs or [])

    @staticmethod
    def from_rpc(err: grpc.RpcError, lost_seqs: List[int]) -> "FramePipeError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = (err.details() if hasattr(err, "details") else str(err)) or ""
        msg = f"framepipe call failed: {code.name if code else 'UNKNOWN'}: {details}"
        if lost_seqs:
            msg += f" ({len(lost_seqs)} frame(s) sent without a result: seq {_ranges(lost_seqs)})"
        return FramePipeError(msg, code=code, details=details, lost_seqs=lost_seqs)


class FrameError(Exception):
    """One frame was not processed (``FrameResult.raise_for_status``); the stream went on."""

    def __init__(self, seq: int, status: "object", error: str):
        super().__init__(f"frame seq={seq}: {getattr(status, 'name', status)}: {error}")
        self.seq = seq
        self.status = status
        self.error = error


def _ranges(seqs: List[int]) -> str:
    out = []
    i = 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else f"{seqs[i]}-{seqs[j]}")
        i = j + 1
    return ",".join(out)
