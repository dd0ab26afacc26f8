"""`ssl-bf export`: a run's query backbone in the layout the next tool loads (torchvision, timm,
detectron2), plus OUT.json with its config. A core command: it imports only the core."""
from __future__ import annotations

import os

from ..cli_args import ArgumentError, Parser, fail, refuse

PROG = "ssl-bf export"


def export_parser() -> Parser:
    from .export_formats import EXPORT_FORMATS  # (imports torch)

    p = Parser(prog=PROG, description="Write the query backbone (no BatchFormer, no heads) in the layout the "
               "next tool loads, plus OUT.json with its config.",
               epilog="formats: torchvision (default): ssl-bf's state dict, which every ssl-bf command reads "
               "back; timm: ViT tensors under timm's names (vit_small_patch16_224 ...), OUT.json gives timm's "
               "arguments and the head count; detectron2 (ResNets with the ImageNet stem): MoCo's detectron2 "
               "renaming, pickled numpy arrays with matching_heuristics, OUT.json gives PIXEL_MEAN/PIXEL_STD "
               "and the RGB format.")
    p.add_argument("checkpoint", help="RUN/checkpoints/last.pt")
    p.add_argument("out", help="output file (.pt; .pkl for detectron2); OUT.json is written beside it")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="torchvision",
                   help="layout of OUT (default torchvision)")
    return p


def export_main(argv: list[str]) -> int:
    """`ssl-bf export CHECKPOINT OUT`; a bad argument or checkpoint is one line on stderr and exit 2."""
    from ..io import UnreadableFileError
    from ..outputs import OutputError
    from .checkpoint import ExportError, export_backbone

    try:
        args = export_parser().parse_args(argv)
    except ArgumentError as err:
        return fail(PROG, err)
    try:
        meta = export_backbone(args.checkpoint, args.out, args.format)
    except (ExportError, OutputError, UnreadableFileError, FileNotFoundError) as e:
        return refuse(PROG, str(e))
    print(f"wrote {args.out} ({args.format} layout; backbone {meta['config']['backbone']['name']}, epoch "
          f"{meta['epoch']}) and {os.path.splitext(args.out)[0]}.json")
    return 0
