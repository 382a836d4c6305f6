"""`cjm-ctl estimate-size`: what a Python entry's environment would download and take on disk.

argv[1]: a JSON request {"specs": [...], "ignore_requires_python": bool}. pip resolves the
specs for this interpreter without installing anything (`--dry-run --report`); each
distribution's download size comes from its file (a local path, or an HTTP HEAD), and a
wheel's installed size is the sum of its members' sizes (and their bytecode), read from its
zip directory (HTTP range requests: the wheel is not downloaded). An sdist's installed size is unknown until it
is built. stdout: one JSON object; pip's own output goes to stderr.
"""
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile


class RangeFile:
    """A read-only, seekable view of a remote file through HTTP range requests."""

    def __init__(self, url, size):
        self.url, self.size, self.pos = url, size, 0

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=0):
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.pos
        if n <= 0 or self.pos >= self.size:
            return b""
        end = min(self.size, self.pos + n) - 1
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            data = r.read()
        self.pos += len(data)
        return data


def remote_size(url):
    req = urllib.request.Request(url, method="HEAD")
    with urllib.request.urlopen(req, timeout=60) as r:
        return int(r.headers.get("Content-Length") or 0), r.headers.get("Accept-Ranges") == "bytes"


def unpacked(opener):
    """The members' sizes, plus as much again for the `.py` ones: pip compiles them to
    bytecode at install (`__pycache__`, about the source's size)."""
    try:
        with zipfile.ZipFile(opener()) as z:
            infos = z.infolist()
            return (sum(i.file_size for i in infos)
                    + sum(i.file_size for i in infos if i.filename.endswith(".py")))
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def measure(item):
    info = item.get("download_info") or {}
    url = info.get("url", "")
    meta = item.get("metadata") or {}
    out = {"name": meta.get("name", "?"), "version": meta.get("version", "?"), "url": url}
    parsed = urllib.parse.urlparse(url)
    wheel = parsed.path.endswith(".whl")
    out["kind"] = "wheel" if wheel else ("dir" if "dir_info" in info else "sdist")
    try:
        if parsed.scheme == "file":
            path = urllib.parse.unquote(parsed.path)
            if os.path.isdir(path):
                size = sum(os.path.getsize(os.path.join(d, f))
                           for d, _, fs in os.walk(path) for f in fs)
                out.update(download=0, installed=size)
                return out
            size = os.path.getsize(path)
            out["download"] = size
            out["installed"] = unpacked(lambda: open(path, "rb")) if wheel else None
        else:
            size, ranges = remote_size(url)
            out["download"] = size
            out["installed"] = (unpacked(lambda: RangeFile(url, size))
                                if wheel and ranges and size else None)
    except Exception as e:  # one unreachable file does not stop the estimate
        out["error"] = str(e)
        out.setdefault("download", None)
        out.setdefault("installed", None)
    return out


def main():
    req = json.loads(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
               "--disable-pip-version-check", "--quiet", "--report", report]
        if req.get("ignore_requires_python"):
            cmd.append("--ignore-requires-python")
        done = subprocess.run(cmd + req["specs"], stdout=sys.stderr, stderr=sys.stderr)
        if done.returncode != 0:
            sys.exit(done.returncode)
        with open(report) as f:
            items = json.load(f).get("install", [])
    packages = [measure(i) for i in items]
    print(json.dumps({
        "python": "%d.%d" % sys.version_info[:2],
        "packages": packages,
    }))


if __name__ == "__main__":
    main()
