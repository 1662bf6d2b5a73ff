"""The link's knobs (:class:`LinkConfig`) and counters (:class:`LinkStats`), shared by the transport's parts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgecxr import __version__
from edgecxr.device.link.framing import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION


@dataclass
class LinkConfig:
    """Knobs of the link.  Dead-peer detection takes about ``(max_retries + 1) * ack_timeout`` seconds."""

    ack_timeout: float = 1.0  # seconds to wait for an ACK once a frame has left the wire
    max_retries: int = 8  # retransmissions of one frame (or HELLO attempts - 1) before LinkError
    window: int = 8  # data frames in flight
    max_payload: int = DEFAULT_MAX_PAYLOAD  # largest frame payload accepted by our decoder
    chunk_size: int = 4096  # file chunk size; long messages are split into frames of about this size
    baud: int | None = None  # line rate for the wire model; None = port.baudrate of a real serial port
    poll_interval: float = 0.05  # reader wake-up period (sets port.timeout if it is unset or longer)
    max_message: int = 64 * 1024 * 1024  # largest reassembled message
    protocol_version: int = PROTOCOL_VERSION
    tool_version: str = f"edgecxr {__version__}"

    def __post_init__(self) -> None:
        if self.ack_timeout <= 0:
            raise ValueError("ack_timeout must be > 0")
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if not 1 <= self.window <= 256:
            raise ValueError("window must be in 1..256")
        if self.max_payload < 256:
            raise ValueError("max_payload must be >= 256")
        if not 64 <= self.chunk_size <= self.max_payload - 64:
            raise ValueError(f"chunk_size must be in 64..{self.max_payload - 64} (max_payload - 64)")
        if self.baud is not None and self.baud <= 0:
            raise ValueError("baud must be > 0")

    @property
    def fragment_size(self) -> int:
        """Payload bytes per data frame: one file chunk plus its 12-byte chunk header fits."""
        return min(self.max_payload, self.chunk_size + 64)


@dataclass
class LinkStats:
    frames_sent: int = 0
    frames_received: int = 0
    data_frames_sent: int = 0  # first transmissions
    retransmits: int = 0
    timeouts: int = 0  # retransmissions caused by the timer (the rest were NAK'd)
    naks_sent: int = 0
    naks_received: int = 0
    acks_sent: int = 0
    probes_sent: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    foreign: int = 0  # frames of another protocol version or session, ignored
    bytes_written: int = 0
    bytes_read: int = 0
    messages_sent: int = 0
    messages_received: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
