"""``run --live``: questions about a live source while it plays.

    python -m slowfast_trt.run --engines DIR --video SOURCE --live [--window N] [--policy recent|uniform]
        [--sample-fps F] [--question Q --ask-every S] [--max-new-tokens K]

``SOURCE`` is a file (played at the speed of its timestamps), an RTSP/RTMP/HTTP/UDP URL or a
V4L2 device (``/dev/video0``). Frames are encoded as they arrive into a window of ``--window``
frames (default: the export's default frame count); see ``SlowFastRuntime.open_stream``.

* ``--question Q --ask-every S``: every S seconds, Q about the window as it is then (each
  answer on its own, no history), printed as one JSON line: the answer, the stream time it
  refers to (``stream_time_s``: the newest frame seen; ``window``: first and last frame held)
  and timings. Ends when the source ends.
* otherwise: one question per stdin line, asked the moment it is typed, as follow-ups in one
  conversation (``/reset`` starts a new one); ends with stdin (Ctrl-D).

A source that cannot be opened is one ``error: ...`` line (exit 2); when the source ends or
disconnects, a ``note:`` line says so and the frames held stay answerable.
"""

from __future__ import annotations

import json
import sys
import time


def add_arguments(parser) -> None:
    live = parser.add_argument_group("live source (--live)")
    live.add_argument("--live", action="store_true",
                      help="read --video as a live source (file, rtsp/rtmp/http/udp URL, /dev/video0) while it plays")
    live.add_argument("--window", type=int, default=None, help="frames held (default: the export's default frames)")
    live.add_argument("--policy", choices=("recent", "uniform"), default="recent",
                      help="recent: the last N frames; uniform: N frames spread over everything seen")
    live.add_argument("--sample-fps", type=float, default=None, help="frames per second kept (default: every frame)")
    live.add_argument("--ask-every", type=float, default=None, help="with --question: ask it every S seconds")


def check_arguments(args) -> None:
    if args.question is not None and args.ask_every is None:
        raise ValueError("--live with --question needs --ask-every S (or type questions on stdin without --question)")
    if args.ask_every is not None and (args.question is None or not args.ask_every > 0):
        raise ValueError(f"--ask-every needs --question and a number of seconds > 0, got {args.ask_every}")
    if args.interactive or args.stream or args.json_out:
        raise ValueError("--live prints its own output: drop --interactive, --stream and --json")


def _line(result, question: str) -> dict:
    window = result.stream or {}
    return {"question": question, "stream_time_s": window.get("stream_time_s"),
            "window": {k: window.get(k) for k in ("frames_held", "first", "last", "policy")},
            "text": result.text, "token_ids": result.token_ids, "ended": window.get("ended"),
            "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()}}


def _note_end(stream, noted: list) -> None:
    if stream.ended is not None and not noted:
        noted.append(True)
        print(f"note: the stream ended ({stream.ended}); {len(stream.frames_held())} frames held stay answerable",
              file=sys.stderr, flush=True)


def ask_every(stream, question: str, every_s: float, sampling: dict, out=None) -> int:
    """Ask ``question`` every ``every_s`` seconds until the source ends; one JSON line each."""
    out = out or sys.stdout
    start, count, noted = time.monotonic(), 0, []
    while stream.ended is None:
        count += 1
        while time.monotonic() < start + count * every_s and stream.ended is None:
            time.sleep(0.02)
        if not stream.frames_held():
            continue  # nothing to ask about yet
        stream.reset()  # each periodic answer stands alone
        result = stream.ask(question, **sampling)
        print(json.dumps(_line(result, question), ensure_ascii=False), file=out, flush=True)
    _note_end(stream, noted)
    return 0


def typed(stream, sampling: dict, stdin=None) -> int:
    """One question per stdin line, asked at once; the exit status."""
    stdin, status, noted = stdin or sys.stdin, 0, []
    for line in stdin:
        question = line.strip()
        if not question:
            continue
        if question == "/reset":
            stream.reset()
            continue
        _note_end(stream, noted)
        try:
            result = stream.ask(question, **sampling)
        except ValueError as exc:  # this question only (no frame yet, a bad question): the stream goes on
            print(f"error: {exc}", file=sys.stderr, flush=True)
            status = 2
            continue
        window = result.stream
        print(result.text, flush=True)
        print(f"[stream time {window['stream_time_s']:.2f} s, frames {window['first']['index']}..{window['last']['index']} "
              f"({window['frames_held']} held), ttft {result.timings_ms.get('ask_ttft_ms', 0):.1f} ms]",
              file=sys.stderr, flush=True)
    return status


def run_live(args, runtime, sampling: dict, stdin=None) -> int:
    """``--live``: open the source as a stream and ask as ``args`` say."""
    check_arguments(args)
    with runtime.open_stream(window=args.window, policy=args.policy, sample_fps=args.sample_fps,
                             source=args.video) as stream:
        size = stream.stats()["window"]
        print(f"[{runtime.backend} on {runtime.device}; live from {args.video}, a window of {size} frames "
              f"({args.policy})]", file=sys.stderr, flush=True)
        if args.ask_every is not None:
            return ask_every(stream, args.question, args.ask_every, sampling)
        return typed(stream, sampling, stdin)
