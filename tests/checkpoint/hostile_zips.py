#!/usr/bin/env python3
"""Writes zip files that look like torch.save checkpoints but are built to be read differently, or to cost memory,
for test_checkpoint's HostileZip tests (standard library only):
  version_bomb.pt    archive/version deflated: "3" and 256 MiB of newlines in about 260 KB
  other_folder.pt    a valid checkpoint plus zzz/data.pkl (Python's torch.load refuses it; a reader keyed by the name
                     within the folder would take the later record)
  duplicate.pt       archive/data.pkl listed twice
  compressed.pt      archive/data.pkl deflated
  no_version.pt      no version record
  future_version.pt  format version 99
  no_folder.pt       records at the top level
  overlapping.pt     archive/data/0's directory entry points at archive/data.pkl's local header (its bytes cover
                     data.pkl's and more): a million such entries would make a checker read the file a million times
Usage: hostile_zips.py DIR"""
import itertools
import sys
import warnings
import zipfile

# A pickle of {"x": 1} (protocol 2), which is all these files need.
PICKLE = b"\x80\x02}q\x00X\x01\x00\x00\x00xq\x01K\x01s."


def write(path, entries):
    """entries: (name, bytes or a generator of chunks, compress)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, data, compress in entries:
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                if isinstance(data, bytes):
                    z.writestr(info, data)
                else:
                    with z.open(info, "w", force_zip64=True) as f:
                        for chunk in data:
                            f.write(chunk)


def main(folder):
    plain = [("archive/data.pkl", PICKLE, False), ("archive/version", b"3\n", False)]
    block = b"\n" * (16 << 20)
    bomb = itertools.chain([b"3"], (block for _ in range(16)))
    write(f"{folder}/version_bomb.pt", [("archive/data.pkl", PICKLE, False), ("archive/version", bomb, True)])
    write(f"{folder}/other_folder.pt", plain + [("zzz/data.pkl", b"\x80\x02K\x07.", False)])
    write(f"{folder}/duplicate.pt", plain + [("archive/data.pkl", b"\x80\x02K\x07.", False)])
    write(f"{folder}/compressed.pt", [("archive/data.pkl", PICKLE, True), ("archive/version", b"3\n", False)])
    write(f"{folder}/no_version.pt", plain[:1])
    write(f"{folder}/future_version.pt", [plain[0], ("archive/version", b"99\n", False)])
    write(f"{folder}/no_folder.pt", [("data.pkl", PICKLE, False), ("version", b"3\n", False)])
    write(f"{folder}/overlapping.pt", plain + [("archive/data/0", b"\0" * 24, False)])
    with open(f"{folder}/overlapping.pt", "r+b") as f:
        data = bytearray(f.read())
        entry = data.rindex(b"archive/data/0") - 46  # its central directory entry (after every local header)
        assert data[entry:entry + 4] == b"PK\x01\x02"
        data[entry + 42:entry + 46] = (0).to_bytes(4, "little")  # data.pkl's local header
        f.seek(0)
        f.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
