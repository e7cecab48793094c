#!/usr/bin/python3
"""A live RTSP camera for tests: GStreamer's RTSP server, run with Debian's /usr/bin/python3 (python3-gi).

Every frame carries two 32-bit barcodes in its luma (read by ``stamps.read_stamp``): row 0 the frame
index, row 1 the server's wall clock in ms. The index is ``floor((now - epoch) * fps)`` with ``--epoch``
given by the test, so a server killed and started again continues the numbering, and the barcode gap
across a cut is exactly the number of frames the client missed. The pump never drops a frame (no leaky
queue), so within one connection a client that loses none sees consecutive indices.

``config-interval=1``: with -1 and sliced x264 output, SPS/PPS land between the slices of an IDR and
every GOP decodes as garbage without any error. Prints ``READY port=N`` once listening (``--port 0``
picks one). SIGTERM stops it; tests SIGKILL it to cut the stream.

Needs: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-{base,good,ugly,bad}
(the Makefile's ``sysdeps``).
"""

import argparse
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

BITS = 32
STRIP_H = 24  # rows per barcode: at least one macroblock high, so H.264 keeps it sharp
BLACK, WHITE, GREY = b"\x10", b"\xff", 96


def stamp_frame(w: int, h: int, index: int, wall_ms: int) -> bytes:
    """An I420 frame with the index and clock barcodes on top and a moving square below."""
    cell = w // BITS

    def strip(value: int) -> bytes:
        row = b"".join((WHITE if (value >> (BITS - 1 - b)) & 1 else BLACK) * cell for b in range(BITS))
        return (row + BLACK * (w - len(row))) * STRIP_H

    bg = bytes([GREY]) * w
    side = h // 6
    x = (index * 7) % (w - side)
    square = bg[:x] + b"\xeb" * side + bg[x + side :]
    body = h - 2 * STRIP_H
    y0 = (index * 3) % (body - side)
    luma = strip(index) + strip(wall_ms & 0xFFFFFFFF) + bg * y0 + square * side + bg * (body - y0 - side)
    return luma + b"\x80" * ((w // 2) * (h // 2) * 2)


class StampFactory(GstRtspServer.RTSPMediaFactory):
    def __init__(self, w: int, h: int, fps: int, epoch: float) -> None:
        super().__init__()
        self.w, self.h, self.fps, self.epoch = w, h, fps, epoch
        self.launch = (
            f"( appsrc name=src is-live=true do-timestamp=true format=time block=false "
            f"caps=video/x-raw,format=I420,width={w},height={h},framerate={fps}/1 "
            f"! queue max-size-buffers=0 max-size-bytes=0 max-size-time=2000000000 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate=2000 key-int-max={fps} "
            f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
        self.set_shared(True)

    def do_create_element(self, url: object) -> Gst.Element:
        return Gst.parse_launch(self.launch)

    def do_configure(self, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        stop = threading.Event()
        media.connect("unprepared", lambda *_: stop.set())
        threading.Thread(target=self._pump, args=(appsrc, stop), daemon=True).start()

    def _pump(self, appsrc: Gst.Element, stop: threading.Event) -> None:
        period = 1.0 / self.fps
        index = int((time.time() - self.epoch) * self.fps)
        while not stop.is_set():
            delay = self.epoch + index * period - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # fell far behind (stopped): skip ahead, as a camera would
                index = int((time.time() - self.epoch) * self.fps)
                continue
            buf = Gst.Buffer.new_wrapped(stamp_frame(self.w, self.h, index, int(time.time() * 1000)))
            buf.duration = int(Gst.SECOND / self.fps)
            ret = appsrc.emit("push-buffer", buf)
            if ret == Gst.FlowReturn.FLUSHING:
                time.sleep(0.01)
                continue
            if ret != Gst.FlowReturn.OK:
                break
            index += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--mount", default="/cam")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--epoch", type=float, default=None, help="wall-clock time of frame 0 (default: now)")
    a = ap.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    epoch = a.epoch if a.epoch is not None else time.time()
    server.get_mount_points().add_factory(a.mount, StampFactory(a.width, a.height, a.fps, epoch))
    if server.attach(None) == 0:
        print("ERROR attach failed", flush=True)
        sys.exit(2)
    print(f"READY port={server.get_bound_port()}", flush=True)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()


if __name__ == "__main__":
    main()
