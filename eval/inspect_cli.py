"""`ssl-bf inspect FILE`: what a checkpoint is, what network it holds, and what ssl-bf loads from it.

Prints the detected format, the architecture (read from the weights), the parameter count of the
rebuilt backbone, the input it expects, and every tensor of the file as loaded, dropped (with the
reason: head, momentum encoder, queue, predictor, BatchFormer layer...) or missing. `--json OUT`
writes the same as JSON (`-`: to stdout). A file of no known format exits 2 with a message that
lists the formats and the top-level keys found.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

from ssl_bf.cli_args import Parser
from ssl_bf.file_kinds import FileKind

from .cli_common import run_command, sidecar, write_json
from .foreign_formats import FORMATS, drop_reason
from .import_choices import ImportChoices, add_import_options
from .options import Output, check_outputs

PROG = "ssl-bf inspect"


def inspect_parser() -> Parser:
    p = Parser(prog=PROG, description="Detect a checkpoint's format, read its architecture from the weights, "
               "and list the tensors loaded, dropped and missing.",
               epilog="formats:\n" + "\n".join(f"  {k}: {v}" for k, v in FORMATS.items())
               + "\n\nexample: ssl-bf inspect moco_v2_800ep_pretrain.pth.tar --json moco.json",
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="FILE", help="a checkpoint of ssl-bf or of another project")
    add_import_options(p)
    p.add_argument("--keys", action="store_true", help="print every key, not the first few of each group")
    p.add_argument("--json", metavar="OUT", help="also write the report as JSON ('-': to stdout only)")
    return p


def inspect_main(argv: Optional[list[str]] = None) -> int:
    return run_command(PROG, inspect_parser, _inspect_command, argv)


def _inspect_command(args: argparse.Namespace) -> int:
    inputs = [args.checkpoint, sidecar(args.checkpoint)]
    if args.json and args.json != "-":
        check_outputs([Output("--json", args.json, FileKind.JSON)], inputs=inputs)
    report = describe(args.checkpoint, ImportChoices.from_args(args))
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(render(report, all_keys=args.keys))
    write_json(report, args.json, inputs=inputs)
    return 0


def describe(path: str, choices: Optional[ImportChoices] = None) -> dict:
    """The inspect report of a checkpoint file (CheckpointError if it cannot be read)."""
    from .checkpoints import open_checkpoint

    choices = choices or ImportChoices()
    opened = open_checkpoint(path, "FILE", choices)
    if opened.kind == "foreign":
        return _describe_foreign(path, opened.imported)
    return _describe_sslbf(path, opened.kind, opened.contents, choices)


def _describe_foreign(path: str, imported) -> dict:
    from .checkpoints import CheckpointError
    from .foreign_encoder import RebuildError, build

    found = imported.found
    try:
        model, missing = build(imported)
    except RebuildError as err:
        raise CheckpointError(f"FILE {path} ({found.format}): {err}") from None
    spec = imported.input
    report = {"file": os.path.abspath(path), "format": found.format, "description": FORMATS[found.format],
              "architecture": imported.architecture(), "parameters": _count(model),
              "input": {"channels": spec.channels, "image_size": spec.image_size,
                        "mean": list(spec.mean) if spec.mean else None, "std": list(spec.std) if spec.std else None},
              "loaded": sorted(found.source.values()), "dropped": found.dropped, "missing": missing,
              "notes": found.notes, "metadata": found.metadata,
              "other_entries": [k for k in found.container if k not in ("state_dict", "teacher", "student")]}
    if imported.heads is not None:
        report["vit_heads"] = {"value": imported.heads, "reason": imported.heads_reason}
    return report


def _describe_sslbf(path: str, kind: str, contents: dict, choices: ImportChoices) -> dict:
    from ssl_bf.checkpoints.checkpoint import load_encoder

    from .checkpoints import CheckpointError, refuse_import_choices

    refuse_import_choices(choices, "FILE", path)
    try:
        model, cfg = load_encoder(path)
    except RuntimeError as err:
        raise CheckpointError(f"FILE {path} does not fit the model its config describes: {err}") from None
    b = cfg.backbone
    arch = {"family": "vit" if b.name.startswith("vit") else "resnet", "name": b.name, "width": b.width,
            "stem": b.stem, "patch_size": b.patch_size, "feature_dim": model.backbone.feature_dim}
    shape = getattr(model.backbone, "shape", None)
    if shape is not None:
        arch.update(depth=shape.layers, heads=shape.heads, width=shape.dim, mlp_dim=shape.mlp_dim,
                    heads_reason="the run's config")
    if kind == "training":
        state = contents["model"]
        loaded = sorted(k for k in state if k.startswith("backbone."))
        dropped: dict[str, list[str]] = {}
        for key in state:
            if not key.startswith("backbone."):
                reason = drop_reason(key)
                dropped.setdefault(reason, []).append(key)
        description, meta = "ssl-bf run checkpoint", {k: contents.get(k) for k in ("epoch", "step")}
    else:
        loaded, dropped = sorted(contents), {}
        description, meta = "ssl-bf export (backbone + its JSON)", {}
    return {"file": os.path.abspath(path), "format": "ssl-bf", "description": description, "architecture": arch,
            "parameters": _count(model.backbone), "input": {"channels": _channels(model), "image_size":
                                                            cfg.augment.image_size or "the dataset's native size"},
            "loaded": loaded, "dropped": dropped, "missing": [], "notes": [], "metadata": meta,
            "other_entries": [k for k in contents if kind == "training" and k != "model"]}


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _channels(model) -> Optional[int]:
    from .embed import _in_channels

    return _in_channels(model)


def _keys(keys: list[str], all_keys: bool, first: int = 3) -> str:
    shown = keys if all_keys else keys[:first]
    more = "" if len(shown) == len(keys) else f", ... (+{len(keys) - len(shown)})"
    return ", ".join(shown) + more


def render(report: dict, all_keys: bool = False) -> str:
    """The report as readable text."""
    arch = report["architecture"]
    if arch["family"] == "resnet" and "block" in arch:
        arch_text = (f"{arch['name']} ({arch['block']} blocks {arch['stages']}, width {arch['width']}, "
                     f"{arch['stem']} stem, {arch['in_channels']} input channels, {arch['feature_dim']}-d features)")
    elif arch["family"] == "vit" and "depth" in arch:
        arch_text = (f"ViT depth {arch['depth']}, width {arch['width']}, MLP {arch['mlp_dim']}, "
                     f"{arch['heads']} heads, patch {arch['patch_size']}"
                     + (f", {arch['image_size']} px, {arch['in_channels']} input channels, "
                        f"{arch['pos_embed']} position embedding, class-token output" if "pos_embed" in arch else ""))
    else:
        arch_text = f"{arch['name']} ({arch['stem']} stem, width {arch['width']})"
    lines = [f"file:         {report['file']}",
             f"format:       {report['format']} ({report['description']})",
             f"architecture: {arch_text}",
             f"parameters:   {report['parameters']:,} (backbone)"]
    if "vit_heads" in report:
        lines.append(f"ViT heads:    {report['vit_heads']['value']} ({report['vit_heads']['reason']}; "
                     f"--vit-heads overrides)")
    elif arch.get("heads_reason"):
        lines.append(f"ViT heads:    {arch['heads']} ({arch['heads_reason']})")
    inp = report["input"]
    if inp.get("mean") is not None:
        lines.append(f"input:        {inp['channels']} channels, {inp['image_size']} px, mean {inp['mean']}, "
                     f"std {inp['std']}")
    else:
        lines.append(f"input:        {inp['channels']} channels, {inp['image_size']} px, the dataset's mean/std")
    lines.append(f"loaded:       {len(report['loaded'])} tensors ({_keys(report['loaded'], all_keys)})")
    if report["dropped"]:
        lines.append("dropped:")
        for reason, keys in report["dropped"].items():
            lines.append(f"  {reason}: {len(keys)} tensors ({_keys(keys, all_keys)})")
    else:
        lines.append("dropped:      none")
    lines.append(f"missing:      {len(report['missing'])} tensors ({_keys(report['missing'], all_keys)}); embed "
                 f"refuses this file" if report["missing"] else "missing:      none")
    for note in report["notes"]:
        lines.append(f"note:         {note}")
    meta = {k: v for k, v in report["metadata"].items() if v is not None}
    if meta or report["other_entries"]:
        lines.append("other:        " + ", ".join([f"{k}={v}" for k, v in meta.items()]
                                                  + [k for k in report["other_entries"] if k not in meta]))
    return "\n".join(lines)
