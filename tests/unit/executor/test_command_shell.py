"""How a command shell's output is cut into commands: the per-command marker ends a
command's stdout (with its exit status) and stderr, wherever the reads split it. The
shells themselves run against real sshd in tests/integration/test_executor_ssh.py; these
cases (a marker split across reads, a malformed status) cannot be forced from there."""

from __future__ import annotations

import pytest

from services.executor.command_shell import ShellGone, _until

MARK = b"\n" + b"f" * 32


class Chunks:
    """A byte stream handing out the given chunks, then end of file."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = list(chunks)

    async def read(self, n: int) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def split(data: bytes, every: int) -> list[bytes]:
    return [data[i:i + every] for i in range(0, len(data), every)]


@pytest.mark.parametrize("every", [1, 3, 7, 33, 1000])
async def test_stdout_ends_at_the_marker_with_its_status_however_the_reads_split_it(
        every: int) -> None:
    stream = b"line one\nno newline at the end" + MARK + b" 17\n"
    out, status, more = await _until(Chunks(*split(stream, every)), MARK + b" ")  # type: ignore[arg-type]
    assert (out, status, more) == (b"line one\nno newline at the end", 17, False)


async def test_stderr_ends_at_its_marker_and_later_data_is_noticed() -> None:
    out, _, more = await _until(Chunks(b"warn\n" + MARK + b"\nlate"), MARK + b"\n")  # type: ignore[arg-type]
    assert (out, more) == (b"warn\n", True)


async def test_output_that_only_resembles_the_marker_is_kept() -> None:
    other = b"\n" + b"e" * 32 + b" 0\n"
    out, status, _ = await _until(Chunks(other + b"tail" + MARK + b" 0\n"), MARK + b" ")  # type: ignore[arg-type]
    assert (out, status) == (other + b"tail", 0)


@pytest.mark.parametrize("stream", [b"cut off", b"x" + MARK + b" 1", b"x" + MARK + b" no\n"])
async def test_a_stream_that_ends_early_or_breaks_the_protocol_is_a_gone_shell(
        stream: bytes) -> None:
    with pytest.raises(ShellGone):
        await _until(Chunks(stream), MARK + b" ")  # type: ignore[arg-type]
