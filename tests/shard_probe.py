"""`ssl-bf pretrain` with every sample the shard stream decodes recorded, for
tests/test_shards_train.py (run under torchrun): `python shard_probe.py RECORDS pretrain-args...`.
Each process and DataLoader worker appends `epoch rank sample` lines to RECORDS/<pid>.txt."""
import os
import sys

from ssl_bf.data.shards import stream

RECORDS = sys.argv[1]
_decode = stream.RankBatches._two_crops


def _recorded(self, reader, epoch, g):
    with open(os.path.join(RECORDS, f"{os.getpid()}.txt"), "a") as f:
        f.write(f"{epoch} {self.rank} {g}\n")
    return _decode(self, reader, epoch, g)


stream.RankBatches._two_crops = _recorded

if __name__ == "__main__":
    from ssl_bf.cli import main

    sys.exit(main(["pretrain", *sys.argv[2:]]))
