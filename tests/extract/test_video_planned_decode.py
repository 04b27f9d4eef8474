"""Video frames chosen from the packets' timestamps and decoded with the other non-reference
frames skipped are, bit for bit, the frames of decoding every frame; where the plan cannot
be made or a planned frame does not come out, every frame is decoded instead."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from mmx.extract import decode

# (fps, max_frames) the extraction uses (1 fps) and others: dense, sparse, capped
SAMPLINGS = [(1.0, None), (1.0, 600), (4.0, None), (2.0, 3), (0.3, None), (30.0, None), (60.0, 20)]


def write_b_frame_clip(path, frames: int = 90, fps: int = 30, fmt: str | None = None, codec: str = "libx264",
                       options: dict | None = None):
    """A moving-texture clip, by default H.264 with B-frames (x264's default pyramid: some
    B-frames are references, the others are not), as cameras and encoders write them."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (120, 480, 3), np.uint8)
    options = {"preset": "fast", "x264-params": "bframes=3:b-adapt=0"} if options is None else options
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=Fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for i in range(frames):
            x = (3 * i) % 320
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[:, x:x + 160]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


@pytest.fixture
def decoded_frames(monkeypatch):
    """Counts the frames that come out of the decoder, however the packets reach it."""
    import av

    count = []
    real = av.packet.Packet.decode

    def counting(self):
        frames = real(self)
        count.extend(frames)
        return frames

    monkeypatch.setattr(av.packet.Packet, "decode", counting)
    return count


@pytest.mark.parametrize("fmt, suffix", [(None, "mp4"), ("matroska", "mkv")])
def test_planned_frames_are_the_frames_of_decoding_everything(tmp_path, fmt, suffix):
    clip = write_b_frame_clip(tmp_path / f"b.{suffix}", fmt=fmt)
    for fps, max_frames in SAMPLINGS:
        for size in (None, 32):
            planned = decode.sample_video_frames(clip, fps, max_frames, size=size)
            every = decode._sample_every_frame(clip, fps, max_frames, size=size)
            assert _same(planned, every), (fps, max_frames, size)


# other codecs PyAV's wheels encode: B-frames (MPEG-4 part 2, MPEG-2, HEVC), hidden alt-ref frames (VP8), VP9
OTHER_CODECS = [("mpeg4", "mp4", {"bf": "2"}), ("mpeg2video", "mpg", {"bf": "2"}),
                ("libx265", "mp4", {"x265-params": "bframes=4:log-level=error"}),
                ("libvpx", "webm", {"auto-alt-ref": "1", "lag-in-frames": "16"}), ("libvpx-vp9", "webm", {})]


@pytest.mark.parametrize("codec, suffix, options", OTHER_CODECS, ids=[c[0] for c in OTHER_CODECS])
def test_planned_frames_equal_every_frame_in_other_codecs(tmp_path, codec, suffix, options):
    import av

    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"this PyAV has no {codec} encoder")
    clip = write_b_frame_clip(tmp_path / f"c.{suffix}", codec=codec, options=options)
    assert decode._frame_plan(clip, 1.0, None, decode.DEFAULT_MAX_PIXELS)  # planned, not the fallback
    for fps, max_frames in [(1.0, None), (4.0, None), (2.0, 3), (30.0, None), (60.0, 20)]:
        assert _same(decode.sample_video_frames(clip, fps, max_frames), decode._sample_every_frame(clip, fps, max_frames)), (fps, max_frames)


def test_the_plan_skips_non_reference_frames(tmp_path, monkeypatch, decoded_frames):
    """At 1 fps from a 30 fps clip with B-frames, the decoder outputs the kept frames and the
    reference frames only; decoding everything is not called."""
    import av

    clip = write_b_frame_clip(tmp_path / "b.mp4")
    with av.open(str(clip)) as c:
        kinds = [int(f.pict_type) for f in c.decode(c.streams.video[0])]
    b_frames = kinds.count(3)  # AV_PICTURE_TYPE_B; x264's pyramid keeps about one in three as a reference
    assert len(kinds) == 90 and b_frames > 30
    decoded_frames.clear()
    monkeypatch.setattr(decode, "_sample_every_frame", lambda *a, **k: pytest.fail("fell back to decoding everything"))
    frames = decode.sample_video_frames(clip, 1.0)
    assert len(frames) == 3  # 3 s at 1 fps
    assert 0 < len(decoded_frames) < 90 - b_frames / 2, (len(decoded_frames), b_frames)


def test_no_timestamps_decodes_everything(tmp_path, decoded_frames):
    """A raw H.264 stream has no packet timestamps: no plan, every frame decoded, same frames
    as before this change (the nominal rate's times)."""
    clip = write_b_frame_clip(tmp_path / "b.h264", fmt="h264")
    assert decode._frame_plan(clip, 1.0, None, decode.DEFAULT_MAX_PIXELS) is None
    frames = decode.sample_video_frames(clip, 1.0)
    assert _same(frames, decode._sample_every_frame(clip, 1.0)) and len(frames) >= 1


def test_a_planned_frame_that_does_not_come_out_falls_back(tmp_path, monkeypatch):
    """A frame the packets promise but the decoder never gives (a damaged or open-GOP start):
    every frame is decoded instead, so the result is still the reference's."""
    clip = write_b_frame_clip(tmp_path / "b.mp4")
    real_plan = decode._frame_plan

    def promising_more(*args):
        plan = real_plan(*args)
        return {**plan, max(plan) + 10**9: 1}

    monkeypatch.setattr(decode, "_frame_plan", promising_more)
    assert decode._sample_planned(clip, promising_more(clip, 1.0, None, decode.DEFAULT_MAX_PIXELS),
                                  decode.DEFAULT_MAX_PIXELS, None, None) is None
    monkeypatch.undo()
    frames = decode.sample_video_frames(clip, 1.0)
    monkeypatch.setattr(decode, "_frame_plan", promising_more)
    assert _same(decode.sample_video_frames(clip, 1.0), frames)


def test_a_truncated_clip_gives_what_decoding_everything_gives(tmp_path):
    """The first 60% of a clip whose index comes first: the frames that survive, or the same error."""
    import av

    whole = write_b_frame_clip(tmp_path / "whole.mp4")
    fast = tmp_path / "fast.mp4"
    with av.open(str(whole)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: int(fast.stat().st_size * 0.6)])
    outcomes = []
    for sample in (decode.sample_video_frames, decode._sample_every_frame):
        try:
            outcomes.append(sample(cut, 4.0))
        except decode.DecodeError as exc:
            outcomes.append(exc.kind)
    if isinstance(outcomes[0], str):
        assert outcomes[0] == outcomes[1]
    else:
        assert _same(*outcomes) and 1 <= len(outcomes[0]) < 12


@pytest.mark.shared_files
def test_real_clips_planned_equal_every_frame(real_media):
    """The real H.264 clips of ../shared/media (B-frames, 30 fps, 406x720)."""
    for clip in sorted((real_media / "languagebind/video").glob("*.mp4")):
        for fps, max_frames in SAMPLINGS:
            assert _same(decode.sample_video_frames(clip, fps, max_frames, size=224),
                         decode._sample_every_frame(clip, fps, max_frames, size=224)), (clip.name, fps, max_frames)


def _demuxed_packets(monkeypatch) -> list:
    import av

    count = []
    real = av.container.InputContainer.demux

    def counting(self, *args, **kwargs):
        for packet in real(self, *args, **kwargs):
            count.append(packet)
            yield packet

    monkeypatch.setattr(av.container.InputContainer, "demux", counting)
    return count


def test_the_plan_reads_only_the_packets_it_needs(tmp_path, monkeypatch):
    """Two frames at 4 fps from a 3 s clip: the plan stops demuxing a few packets past 0.25 s
    (B-frames reorder at most a few), and the frames are still the reference's."""
    clip = write_b_frame_clip(tmp_path / "b.mp4")
    packets = _demuxed_packets(monkeypatch)
    plan = decode._frame_plan(clip, 4.0, 2, decode.DEFAULT_MAX_PIXELS)
    assert sum(plan.values()) == 2 and len(packets) < 20, len(packets)
    monkeypatch.undo()
    assert _same(decode.sample_video_frames(clip, 4.0, 2), decode._sample_every_frame(clip, 4.0, 2))


def test_a_plan_past_its_packet_cap_decodes_everything(tmp_path, monkeypatch):
    """The plan's timestamps are bounded (MAX_PLAN_PACKETS): past it, the old way, same frames."""
    clip = write_b_frame_clip(tmp_path / "b.mp4")
    monkeypatch.setattr(decode, "MAX_PLAN_PACKETS", 10)
    assert decode._frame_plan(clip, 1.0, None, decode.DEFAULT_MAX_PIXELS) is None
    assert _same(decode.sample_video_frames(clip, 1.0), decode._sample_every_frame(clip, 1.0))


class _Packet:
    def __init__(self, pts, dts, size=1):
        self.pts, self.dts, self.size = pts, dts, size


def _plan_from(monkeypatch, tmp_path, packets, fps, max_frames):
    """_frame_plan over made-up packets (time base 1/1000: pts in milliseconds)."""
    import av

    clip = write_b_frame_clip(tmp_path / "b.mp4", frames=2)
    read = []

    def demux(self, *args, **kwargs):
        for p in packets:
            read.append(p)
            yield p

    monkeypatch.setattr(av.container.InputContainer, "demux", demux)
    monkeypatch.setattr(av.video.stream.VideoStream, "time_base", Fraction(1, 1000), raising=False)
    return decode._frame_plan(clip, fps, max_frames, decode.DEFAULT_MAX_PIXELS), len(read)


def _rule(pts: list[int], fps: float, max_frames: int | None) -> dict[int, int]:
    """The sampling rule written out over every timestamp (milliseconds)."""
    plan, k, t0 = {}, 0, min(pts) / 1000
    for q in sorted(set(pts)):
        n = 0
        while q / 1000 - t0 + 1e-6 >= k / fps and (max_frames is None or k < max_frames):
            n, k = n + 1, k + 1
        if n:
            plan[q] = n
    return plan


def test_the_early_stop_never_changes_the_plan(tmp_path, monkeypatch):
    """Random valid streams (dts growing, each frame shown at or after it is decoded, frames
    reordered within a few packets, gaps): the plan read with the early stop is the rule
    applied to every packet."""
    rng = np.random.default_rng(0)
    stopped = 0
    for trial in range(40):
        n = int(rng.integers(5, 120))
        shown = np.cumsum(rng.integers(1, 400, n)) + int(rng.integers(-50, 50))  # presentation times, ms
        order = np.argsort(np.arange(n) + rng.uniform(0, 4, n))  # decode order: shuffled a few places at most
        pts = shown[order]
        dts = np.minimum.accumulate(pts[::-1])[::-1]  # the latest valid dts: grows, at or below each pts
        packets = [_Packet(int(q), int(d)) for q, d in zip(pts, dts)]
        assert all(p.pts >= p.dts for p in packets)
        fps, max_frames = float(rng.choice([0.5, 1.0, 4.0, 30.0])), int(rng.integers(1, 12))
        plan, read = _plan_from(monkeypatch, tmp_path, packets, fps, max_frames)
        monkeypatch.undo()
        assert plan == _rule([p.pts for p in packets], fps, max_frames), trial
        stopped += read < n
    assert stopped >= 20  # the early stop was exercised


class _Counted(int):
    """A timestamp that counts how often it is converted to seconds (``pts * time_base``)."""

    calls = 0

    def __mul__(self, other):
        _Counted.calls += 1
        return int(self) * other


def test_timestamps_built_to_be_slow_are_read_whole(tmp_path, monkeypatch):
    """A first timestamp lowered at every packet costs a pass over what was read each time;
    after 64 the early stop is off, so the work stays linear (quadratic: 2 million passes'
    steps here), the stream is read to its end, and the plan is still the rule's."""
    packets = [_Packet(_Counted(10_000_000 - 1000 * i), i) for i in range(2000)]
    _Counted.calls = 0
    plan, read = _plan_from(monkeypatch, tmp_path, packets, 1.0, 3)
    assert read == 2000 and plan == _rule([int(p.pts) for p in packets], 1.0, 3)
    assert _Counted.calls < 65 * 2000, _Counted.calls


@pytest.mark.parametrize("sample", ["planned", "every frame"])
def test_decoded_frames_can_be_freed_in_a_forked_child(tmp_path, decoded_frames, sample):
    """A frame converted to RGB keeps its swscale context; with slice threads, freeing it in a
    forked child (a DataLoader worker, after the parent decoded video itself) waited forever
    for threads the child does not have. Frames are converted on one thread."""
    import gc
    import os
    import signal
    import time

    clip = write_b_frame_clip(tmp_path / "b.mp4")
    (decode.sample_video_frames if sample == "planned" else decode._sample_every_frame)(clip, 1.0)
    assert decoded_frames  # every decoded frame, kept alive by the fixture
    pid = os.fork()
    if pid == 0:  # the child frees them and leaves
        decoded_frames.clear()
        gc.collect()
        os._exit(0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung freeing decoded video frames")


def test_frames_converted_on_one_thread_have_the_same_pixels(tmp_path):
    """The one-thread conversion changes no pixel (so no cached feature changes)."""
    import av

    clip = write_b_frame_clip(tmp_path / "b.mp4", frames=20)
    with av.open(str(clip)) as c:
        for frame in c.decode(c.streams.video[0]):
            one = np.asarray(decode._rgb(frame))
            assert np.array_equal(one, np.asarray(av.video.reformatter.VideoReformatter().reformat(frame, format="rgb24").to_image()))


def _tasks() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
@pytest.mark.parametrize("sample", ["planned", "every frame"])
def test_video_decodes_on_one_thread(tmp_path, monkeypatch, sample):
    """Each decoder runs on its worker's own thread: FFmpeg's frame threads would take CPU from
    the model on the other cores (threads counted while a frame is in hand, codec open)."""
    clip = write_b_frame_clip(tmp_path / "b.mp4")
    during, real = [], decode._rgb

    def spy(frame):
        during.append(_tasks())
        return real(frame)

    monkeypatch.setattr(decode, "_rgb", spy)
    before = _tasks()
    frames = (decode.sample_video_frames if sample == "planned" else decode._sample_every_frame)(clip, 1.0)
    assert len(frames) == 3 and during and max(during) <= before, (before, during)


def test_decoding_on_one_thread_changes_no_pixel(tmp_path):
    """Every frame as FFmpeg's frame threads decode it is the frame decoded on one thread (so no
    cached feature changes)."""
    import av

    clip = write_b_frame_clip(tmp_path / "b.mp4", frames=40)
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "AUTO", 4
        threaded = [decode._rgb(f) for f in c.decode(stream)]
    assert len(threaded) == 40 and _same(threaded, decode.sample_video_frames(clip, 30.0))
