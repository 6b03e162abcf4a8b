"""Hostile uploads, each built small and on the fly: links and special files, paths that escape, zip and tar
bombs, pixel bombs and images that are not what their names say."""

import io
import struct
import tarfile
import zipfile
import zlib

from PIL import Image

MiB = 1024 * 1024


def png(size: tuple[int, int] = (8, 8)) -> bytes:
    return image_bytes("PNG", size)


def image_bytes(fmt: str, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def two_classes() -> dict[str, bytes]:
    """The smallest valid dataset: two classes of two images."""
    image = png()
    return {"cat/1.png": image, "cat/2.png": image, "dog/1.png": image, "dog/2.png": image}


def zip_of(members: dict[str, bytes], *extra: tuple[zipfile.ZipInfo, bytes],
           compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return buf.getvalue()


def zip_entry(name: str, mode: int) -> zipfile.ZipInfo:
    """A zip member carrying Unix mode bits, as Info-ZIP stores them for links and special files."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = mode << 16
    return info


def zip_plus(name: str, data: bytes) -> bytes:
    """A valid dataset plus one member."""
    return zip_of({**two_classes(), name: data})


def zip_special(name: str, mode: int, data: bytes = b"") -> bytes:
    """A valid dataset plus one member with Unix `mode` bits (a link's data is its target)."""
    return zip_of(two_classes(), (zip_entry(name, mode), data))


def encrypted_zip() -> bytes:
    """A valid dataset whose last member is flagged encrypted (zipfile can only write the flag by patching)."""
    data = bytearray(zip_of(two_classes(), (zipfile.ZipInfo("cat/3.png"), png())))
    local, central = data.rfind(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    return bytes(data)


def zip_understating_its_count(members: dict[str, bytes], declared: int) -> bytes:
    """A zip whose end-of-central-directory record declares `declared` members, whatever it holds."""
    data = bytearray(zip_of(members))
    end = data.rfind(b"PK\x05\x06")
    data[end + 8:end + 12] = struct.pack("<2H", declared, declared)
    return bytes(data)


class Zeros(io.RawIOBase):
    """`size` zero bytes, streamed."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def zip_bomb(name: str = "cat/bomb.png", size: int = 50 * MiB) -> bytes:
    """A valid dataset plus `size` zero bytes deflated to about size/1000 (a 50 MiB member is ~50 KB)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, data in two_classes().items():
            zf.writestr(member, data)
        with zf.open(name, "w", force_zip64=True) as out:
            source = Zeros(size)
            while chunk := source.read(MiB):
                out.write(chunk)
    return buf.getvalue()


def tar_entry(name: str, type_: bytes = tarfile.REGTYPE, size: int = 0, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = type_, size
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def tar_of(members: dict[str, bytes], *extra: tuple[tarfile.TarInfo, io.RawIOBase | None],
           mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            tf.addfile(tar_entry(name, size=len(data)), io.BytesIO(data))
        for info, source in extra:
            tf.addfile(info, source)
    return buf.getvalue()


def tar_plus(name: str, data: bytes) -> bytes:
    """A valid dataset plus one member, as a .tar.gz."""
    return tar_of({**two_classes(), name: data})


def tar_special(name: str, type_: bytes, **attrs) -> bytes:
    """A valid dataset plus one link or special-file member of tar type `type_`, as a .tar.gz."""
    return tar_of(two_classes(), (tar_entry(name, type_, **attrs), None))


def tar_bomb(name: str = "cat/bomb.png", size: int = 50 * MiB, mode: str = "w:gz") -> bytes:
    """A valid dataset plus a member of `size` zero bytes, compressed with the tar as a whole."""
    return tar_of(two_classes(), (tar_entry(name, size=size), Zeros(size)), mode=mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of `width` x `height` black pixels: 20000x20000 is ~50 KB on disk."""
    rows_per_batch = 1000
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * min(rows_per_batch, height - i)) for i in range(0, height, rows_per_batch))
    idat += z.flush()
    header = struct.pack(">2I5B", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    """A JPEG cut off halfway through its scan data: the header parses, the pixels do not."""
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]

