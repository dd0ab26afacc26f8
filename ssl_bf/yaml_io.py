"""Reading YAML files that hold one mapping (run configs, cluster presets, sweep files), and the
"did you mean" hint for a mistyped key. Each caller passes its own exception class, so a bad file
surfaces as that layer's error (ConfigError, LaunchError, ...) with the file's path in the message."""
from __future__ import annotations

import difflib
import os
from typing import Iterable

import yaml


class YamlFileError(ValueError):
    """A YAML file that is missing, malformed or not a mapping (the default error class)."""


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently);
    keys brought in by a `<<: *anchor` merge may still be overridden."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key == "<<":
                continue
            if key in seen:
                raise _DuplicateKey(f"line {key_node.start_mark.line + 1}: the key '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml_mapping(path: str, what: str, *, error: type[Exception] = YamlFileError,
                      unique_keys: bool = False) -> dict:
    """The top-level mapping of the YAML file at `path` ({} for an empty file).

    `what` names the kind of file in messages ("config file", "cluster preset", ...). Raises
    `error` when the file is missing ("WHAT not found: PATH"), is not valid YAML ("PATH: not valid
    YAML (...)"), gives a key twice in one mapping (only with unique_keys: "PATH: line N: the key
    'K' is given twice") or holds something other than a mapping ("PATH: the top level of a WHAT
    must be a mapping, got list").
    """
    if os.path.isdir(path):
        raise error(f"{what} {path} is a folder; give the YAML file")
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader if unique_keys else yaml.SafeLoader)
    except _DuplicateKey as e:
        raise error(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise error(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (not UTF-8); give the YAML {what}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level of a {what} must be a mapping, got {type(data).__name__}")
    return data


def did_you_mean(key: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """"; did you mean 'CLOSEST'?" for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""
