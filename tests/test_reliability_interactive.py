"""Issue 11, ``run --interactive``: each line is answered as soon as it is read, through a pipe
and through a pseudo-terminal, by a running process (the old loop read all of stdin first)."""

from __future__ import annotations

import os
import pty
import queue
import subprocess
import sys
import threading

import pytest

WAIT_S = 300  # model load and the first answer on a busy CPU


def _lines(stream, into: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        into.put(line)
    into.put(None)


def _next_stats(lines: queue.Queue) -> str:
    """The next per-answer stats line on stderr ("[2 frames, ...]")."""
    while True:
        line = lines.get(timeout=WAIT_S)
        assert line is not None, "the command ended before answering"
        assert "Traceback" not in line
        if line.startswith("[2 frames"):
            return line


@pytest.fixture
def command(tiny_ckpt, sample_video):
    return [sys.executable, "-m", "slowfast_trt.run", "--ckpt", str(tiny_ckpt), "--video", str(sample_video),
            "--frames", "2", "--max-new-tokens", "2", "--interactive"]


def _start(command, stdin):
    proc = subprocess.Popen(command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stderr, errors), daemon=True).start()
    return proc, errors


def test_each_piped_line_is_answered_before_the_next_is_written(command):
    proc, errors = _start(command, subprocess.PIPE)
    try:
        proc.stdin.write("what is <image> here?\n")  # a bad question: one line, the session goes on
        proc.stdin.flush()
        line = errors.get(timeout=WAIT_S)
        while line is not None and not line.startswith("error: "):
            assert "Traceback" not in line
            line = errors.get(timeout=WAIT_S)
        assert line is not None and "<image>" in line
        for question in ("What happens?", "/reset", "And then?"):
            proc.stdin.write(question + "\n")
            proc.stdin.flush()
            if question != "/reset":
                _next_stats(errors)  # answered while stdin is still open
        proc.stdin.close()
        assert proc.wait(timeout=WAIT_S) == 2  # one question failed
    finally:
        proc.kill()


def test_a_terminal_gets_each_answer_at_once(command):
    master, slave = pty.openpty()
    proc, errors = _start(command, slave)
    os.close(slave)
    try:
        os.write(master, b"What happens?\n")
        _next_stats(errors)
        os.write(master, b"And then?\n")
        _next_stats(errors)
        os.write(master, b"\x04")  # Ctrl-D at the start of a line: end of input
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        proc.kill()
        os.close(master)
