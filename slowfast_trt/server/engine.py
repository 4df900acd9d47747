"""The model side of a chat request: find or encode the video, find or open the session,
generate. Runs on the scheduler's model thread only, so the runtime, the caches and the
sessions are never touched by two threads at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .cache import SessionCache, VideoCache, VideoKey
from .config import ServerConfig
from .conversation import ChatPlan
from .errors import APIError
from .media import ResolvedMedia
from .metrics import Metrics
from .scheduler import Job, stopped_error

__all__ = ["ChatEngine", "ChatOutcome", "ChatWork", "seed_history"]

# Timings of the video's own work; a request whose video came from the cache did none of it.
VIDEO_STAGES = ("video_decode_ms", "preprocess_ms", "vision_ms", "pooler_ms", "slow_kv_ms")


@dataclass(frozen=True)
class ChatWork:
    """A checked request, ready for the model thread."""

    plan: ChatPlan
    media: ResolvedMedia | None
    sampling: dict[str, Any]
    stream: bool


@dataclass
class ChatOutcome:
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    timings_ms: dict[str, float]
    video_cache_hit: bool | None
    session_cache_hit: bool
    extra: dict[str, Any] = field(default_factory=dict)


def seed_history(session, turns) -> None:
    """Start a new session from a conversation's earlier (question, answer) turns.

    The runtime has no public call for this yet (see the server README section): use one if
    it appears, else build the history with the session's own ``Conversation`` class (the
    copy its ``conversation`` property returns) and put it in place.
    """
    if not turns:
        return
    setter = getattr(session, "set_history", None)
    if callable(setter):
        setter(list(turns))
        return
    conversation = session.conversation
    try:
        for question, answer in turns:
            conversation.add_question(question)
            conversation.set_answer(answer)
    except ValueError as exc:
        raise APIError(400, f"messages: {exc}", param="messages") from None
    session._conversation = conversation


class ChatEngine:
    """Videos, sessions and generation for chat requests."""

    def __init__(self, runtime, config: ServerConfig, metrics: Metrics, live=None):
        self.rt = runtime
        self.config = config
        self.metrics = metrics
        self.live = live
        self.sessions = SessionCache(config.max_sessions)
        self.videos = VideoCache(config.cache_bytes, on_evict=self.sessions.drop_video)

    def run(self, job: Job, work: ChatWork) -> ChatOutcome:
        if work.media is not None and work.media.kind == "live":
            if self.live is None:
                raise APIError(501, "live streams are not available in this build")
            return self.live.answer(job, work, self)
        key, state, hit = self._video(work)
        if key is not None:
            self.videos.pin(key)
        try:
            return self._answer(job, work, key, state, hit)
        finally:
            if key is not None:
                self.videos.unpin(key)
            if state is not None and key not in self.videos:
                self.sessions.drop_video(key)  # too large to cache: nothing else will read it
                state.release()

    def close(self) -> None:
        self.sessions.clear()
        self.videos.clear()

    # -- video ----------------------------------------------------------------------------

    def _video(self, work: ChatWork):
        media = work.media
        if media is None:
            return None, None, None
        key = self._key(media, work.plan.media)
        state = self.videos.get(key)
        if state is not None:
            self.metrics.inc("slowfast_video_cache_hits_total")
            return key, state, True
        self.metrics.inc("slowfast_video_cache_misses_total")
        start = time.perf_counter()
        options = {} if key.kind == "image" else {"sampling": key.sampling, "fps": key.fps, "start_s": key.start,
                                                  "end_s": key.end}
        try:
            state = self.rt.encode_video(str(media.path), frames=None if key.kind == "image" else key.frames,
                                         **options)
        except ValueError as exc:  # unreadable video, wrong frame count, bad range: the request's fault
            raise APIError(400, f"video: {exc}", code="invalid_media") from None
        self.metrics.inc("slowfast_video_encodes_total")
        self.metrics.inc("slowfast_vision_seconds_total", time.perf_counter() - start)
        self.videos.put(key, state)
        return key, state, False

    def _key(self, media: ResolvedMedia, part) -> VideoKey:
        if media.kind == "image":
            return VideoKey(media.sha256, "image", 1)
        # The runtime's own default when the request names no count: min(default, most served).
        most = getattr(self.rt, "max_frames", None) or self.rt.frames or self.rt.default_frames
        # A family without a frame count (LongVU samples one frame per second) has no default.
        frames = part.nframes or (min(self.rt.default_frames, most) if self.rt.default_frames else None)
        sampling = "fps" if part.fps is not None else "uniform"
        return VideoKey(media.sha256, "video", frames, sampling, part.fps, part.start, part.end)

    # -- conversation ---------------------------------------------------------------------

    def _session(self, key: VideoKey | None, state, plan: ChatPlan):
        skey = (key, plan.system, plan.history)
        session = self.sessions.take(skey)
        if session is not None:
            self.metrics.inc("slowfast_session_cache_hits_total")
            return skey, session, True
        self.metrics.inc("slowfast_session_cache_misses_total")
        options = {} if plan.system is None else {"system": plan.system}
        try:
            session = self.rt.open_video(state, **options)
        except ValueError as exc:
            raise APIError(400, f"messages: {exc}", param="messages") from None
        try:
            seed_history(session, plan.history)
        except BaseException:
            session.close()
            raise
        return skey, session, False

    def _answer(self, job: Job, work: ChatWork, key, state, video_hit) -> ChatOutcome:
        plan = work.plan
        skey, session, session_hit = self._session(key, state, plan)
        try:
            pieces = session.stream(plan.question, **work.sampling)
        except ValueError as exc:  # prompt too long, bad question: the session is unchanged
            self.sessions.put(skey, key, session)
            raise APIError(400, str(exc), param="messages") from None
        stopped = None
        try:
            for piece in pieces:
                if work.stream:
                    job.emit("piece", piece)
                stopped = job.stop_reason()
                if stopped:
                    break
        except BaseException:
            pieces.close()
            session.close()  # failed mid-generation: do not reuse its cache
            raise
        if stopped:
            pieces.close()  # stops generation; the session's history stays as it was
            self.sessions.put(skey, key, session)
            self.metrics.inc("slowfast_cancelled_total", reason=stopped)
            raise stopped_error(stopped)
        result = pieces.result
        turns = tuple((t.question, t.answer) for t in session.conversation.turns)
        self.sessions.put((key, plan.system, turns), key, session)
        return self._outcome(job, result, video_hit, session_hit)

    def _outcome(self, job: Job, result, video_hit, session_hit) -> ChatOutcome:
        timings = dict(result.timings_ms)
        if video_hit:
            for stage in VIDEO_STAGES:
                timings.pop(stage, None)
        n = len(result.token_ids)
        per_token = timings.get("decode_ms_per_token")
        if per_token and n > 1:
            timings["decode_tokens_per_s"] = 1e3 / per_token
        timings["queue_ms"] = job.queue_s * 1e3
        timings["total_ms"] = (time.monotonic() - job.submitted) * 1e3
        m = self.metrics
        m.inc("slowfast_generations_total", finish_reason=result.finish_reason)
        m.inc("slowfast_prompt_tokens_total", result.prompt_tokens)
        m.inc("slowfast_cached_prompt_tokens_total", result.reused_rows)
        m.inc("slowfast_completion_tokens_total", n)
        if n:
            m.observe("slowfast_time_to_first_token_seconds", job.queue_s + timings.get("ttft_ms", 0.0) / 1e3)
        m.observe("slowfast_request_seconds", timings["total_ms"] / 1e3)
        if "decode_tokens_per_s" in timings:
            m.observe("slowfast_decode_tokens_per_second", timings["decode_tokens_per_s"])
        return ChatOutcome(result.text, list(result.token_ids), result.finish_reason, result.prompt_tokens,
                           result.reused_rows, {k: round(v, 3) for k, v in timings.items()}, video_hit, session_hit,
                           extra={"history_note": result.history_note} if result.history_note else {})

