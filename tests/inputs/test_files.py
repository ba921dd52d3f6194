"""Local files (SECURITY row 24): containment, regular files only, fstat size cap, one message whether the
file exists or not, mime by magic bytes."""

from __future__ import annotations

import io
import os
import sys
import threading

import pytest
from PIL import Image

from pixdesk.errors import InvalidImage, UnsupportedImageFormat
from pixdesk.inputs import FileTooLarge, NotARegularFile, PathNotAllowed, read_image_file

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux paths (/proc, /dev)")
PATH_NOT_ALLOWED = "path_not_allowed"
NOT_REGULAR = "not_a_regular_file"


def _png(path, size=(8, 4), colour=(10, 20, 30)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture
def root(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return allowed


def _error(path, **kw):
    with pytest.raises(Exception) as info:
        read_image_file(path, **kw)
    return info.value


def _same_text(a: Exception, b: Exception, pa, pb) -> None:
    assert a.message.replace(str(pa), "PATH") == b.message.replace(str(pb), "PATH")


def test_regular_file_mime_from_magic_not_name(root):
    data = _png(root / "sub" / "photo.jpg")  # a PNG named .jpg
    got = read_image_file(root / "sub" / "photo.jpg", allowed_roots=[root])
    assert got.mime == "image/png" and got.data == data
    gif = root / "anim.png"
    Image.new("P", (4, 4)).save(gif, format="GIF")
    assert read_image_file(gif).mime == "image/gif"


def test_dotdot_escape_is_refused_the_same_whether_the_target_exists(root):
    _png(root.parent / "outside" / "secret.png")
    there = _error(root / ".." / "outside" / "secret.png", allowed_roots=[root])
    missing = _error(root / ".." / "outside" / "nothing.png", allowed_roots=[root])
    for e in (there, missing):
        assert isinstance(e, PathNotAllowed) and e.code == PATH_NOT_ALLOWED
    _same_text(
        there, missing, root / ".." / "outside" / "secret.png", root / ".." / "outside" / "nothing.png"
    )


def test_symlink_out_of_the_root_is_refused(root):
    _png(root.parent / "outside" / "secret.png")
    (root / "link.png").symlink_to(root.parent / "outside" / "secret.png")
    (root / "dangling.png").symlink_to(root.parent / "outside" / "nothing.png")
    (root / "dirlink").symlink_to(root.parent / "outside", target_is_directory=True)
    errors = [_error(root / name, allowed_roots=[root]) for name in ("link.png", "dangling.png")]
    errors.append(_error(root / "dirlink" / "secret.png", allowed_roots=[root]))
    assert all(isinstance(e, PathNotAllowed) and e.code == PATH_NOT_ALLOWED for e in errors)
    _same_text(errors[0], errors[1], root / "link.png", root / "dangling.png")
    _png(root / "sub" / "ok.png")
    (root / "inner.png").symlink_to(root / "sub" / "ok.png")  # a symlink that stays inside is fine
    assert read_image_file(root / "inner.png", allowed_roots=[root]).mime == "image/png"


def test_missing_file_reads_like_any_non_regular_file(root):
    os.mkfifo(root / "fifo")
    missing, fifo, directory = (
        _error(root / n, allowed_roots=[root]) for n in ("nothing.png", "fifo", "sub")
    )
    for e in (missing, fifo, directory):
        assert isinstance(e, NotARegularFile) and e.code == NOT_REGULAR
    _same_text(missing, fifo, root / "nothing.png", root / "fifo")
    _same_text(missing, directory, root / "nothing.png", root / "sub")


def test_fifo_does_not_block(root):
    """Opening a FIFO for reading blocks until a writer comes - unless O_NONBLOCK; and it is refused."""
    os.mkfifo(root / "fifo")
    result: list = []
    t = threading.Thread(target=lambda: result.append(_error(root / "fifo")), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], NotARegularFile)


@linux_only
def test_proc_environ_and_dev_zero_are_refused(root):
    environ = _error("/proc/self/environ")  # stats as a regular file of size 0
    zero = _error("/dev/zero")
    for e in (environ, zero):
        assert isinstance(e, NotARegularFile) and e.code == NOT_REGULAR
        assert "PATH=" not in e.message
    _same_text(environ, zero, "/proc/self/environ", "/dev/zero")
    (root / "env").symlink_to("/proc/self/environ")
    assert isinstance(_error(root / "env"), NotARegularFile)  # through a symlink too
    assert isinstance(_error("/proc/self/environ", allowed_roots=[root]), PathNotAllowed)


def test_sparse_file_over_the_cap_is_413_from_fstat(root):
    big = root / "big.png"
    with open(big, "wb") as f:
        f.truncate(10 * 1024**3)  # 10 GiB, sparse: nothing is read
    e = _error(big, allowed_roots=[root])
    assert isinstance(e, FileTooLarge) and e.code == "image_too_large" and e.http_status == 413
    assert "10737418240 bytes" in e.message and str(32 * 1024 * 1024) in e.message
    small = root / "small.png"
    _png(small, size=(64, 64))
    assert isinstance(_error(small, max_bytes=50), FileTooLarge)


def test_not_images_by_magic(root):
    (root / "text.png").write_text("just text")
    (root / "empty.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(root / "pic.bmp", format="BMP")
    assert isinstance(_error(root / "text.png"), InvalidImage)
    assert isinstance(_error(root / "empty.png"), InvalidImage)
    e = _error(root / "pic.bmp")
    assert isinstance(e, UnsupportedImageFormat) and e.http_status == 415


def test_relative_paths_resolve_from_the_working_directory(root, monkeypatch):
    _png(root / "sub" / "a.png")
    monkeypatch.chdir(root / "sub")
    assert read_image_file("a.png", allowed_roots=[root]).mime == "image/png"
    assert isinstance(_error("../../outside/x.png", allowed_roots=[root]), PathNotAllowed)


def test_no_roots_means_nothing_is_allowed(root):
    _png(root / "a.png")
    e = _error(root / "a.png", allowed_roots=[])
    assert isinstance(e, PathNotAllowed) and "none is allowed" in e.message


@linux_only
def test_pseudo_files_are_caught_by_size_even_off_the_deny_list(monkeypatch):
    """/proc files claim size 0 and then yield bytes: the fstat-vs-read check refuses them on its own."""
    monkeypatch.setattr("pixdesk.inputs.files.PSEUDO_ROOTS", ())
    e = _error("/proc/self/environ")
    assert isinstance(e, NotARegularFile)
